"""A user's own networks, data and zoo, as someone bringing their own would write them: registered in params.yaml

    registry:
      architectures: {gelu_cnn: "tests.user_nets:build_gelu_cnn", tab_mlp: "tests.user_nets:build_tab_mlp",
                      bn_mlp: "tests.user_nets:build_bn_mlp", res_ln_mlp: "tests.user_nets:build_res_ln_mlp"}
      tasks: {digits_own: "tests.user_nets:load_digits_own", wine: "tests.user_nets:load_wine",
              breast_cancer: "tests.user_nets:load_breast_cancer"}

(and `tests/user_nets.py` added to the `deps` of the stages that list `registry` in dvc.yaml). No network is
built in: a CNN with GELU and average pooling on its own split of digits (images `[N, 1, 8, 8]`, 10 classes), an
MLP on scikit-learn's wine table (`[N, 13]`, 3 classes), one with BatchNorm there (its running statistics are
part of what is coded), and a residual MLP with LayerNorm, a bias-free layer and a scalar parameter on the binary
breast cancer table (`[N, 30]`, 2 classes). `train_zoo` really trains a zoo of any of them, with varied
hyperparameters, in the zoo file schema ingest reads (used by the tests and by benchmarks/user_zoos.py).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from weightvae.tasks import TaskData


class GeluCNN(nn.Module):
    """conv 3x3 -> GELU -> avg-pool 2 -> conv 2x2 -> GELU -> linear: 590 weights with the defaults."""

    def __init__(self, channels: int = 6, hidden: int = 8, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3)  # [B, C, 6, 6]
        self.conv2 = nn.Conv2d(channels, hidden, 2)  # [B, H, 2, 2] after the 2x2 average pool
        self.fc = nn.Linear(hidden * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.avg_pool2d(F.gelu(self.conv1(x)), 2)
        return self.fc(F.gelu(self.conv2(h)).flatten(1))


class TabMLP(nn.Module):
    """Tabular MLP `[B, F] -> [B, classes]`: 275 weights on wine with the defaults."""

    def __init__(self, in_features: int = 13, hidden: int = 16, num_classes: int = 3):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, hidden), nn.Tanh(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class BatchNormMLP(nn.Module):
    """Tabular MLP with BatchNorm `[B, F] -> [B, classes]`: 339 weights on wine with the defaults, 32 of them the
    running mean and variance (float buffers, coded like the weights)."""

    def __init__(self, in_features: int = 13, hidden: int = 16, num_classes: int = 3):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                  nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ResidualLNMLP(nn.Module):
    """A residual MLP on a binary task `[B, F] -> [B, 2]`: LayerNorm, SiLU, a bias-free layer and a learned scalar
    temperature (a 0-dim parameter): 1,419 weights on breast cancer with the defaults."""

    def __init__(self, in_features: int = 30, width: int = 24, num_classes: int = 2):
        super().__init__()
        self.inp = nn.Linear(in_features, width)
        self.norm = nn.LayerNorm(width)
        self.block = nn.Linear(width, width, bias=False)
        self.head = nn.Linear(width, num_classes)
        self.log_temperature = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm(self.inp(x)))
        h = h + F.silu(self.block(h))
        return self.head(h) * self.log_temperature.exp()


def build_gelu_cnn(**kwargs) -> nn.Module:
    return GeluCNN(**kwargs)


def build_tab_mlp(**kwargs) -> nn.Module:
    return TabMLP(**kwargs)


def build_bn_mlp(**kwargs) -> nn.Module:
    return BatchNormMLP(**kwargs)


def build_res_ln_mlp(**kwargs) -> nn.Module:
    return ResidualLNMLP(**kwargs)


def _split(n: int, seed: int, test: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    idx = np.random.default_rng(seed).permutation(n)
    cut = round(n * test)
    return np.sort(idx[cut:]), np.sort(idx[:cut])


def load_digits_own() -> TaskData:
    """Digits on the user's own split (seed 1, not weightvae's), pixels in [0, 1]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy((d.images / 16.0).astype(np.float32)[:, None])
    y = torch.from_numpy(d.target.astype(np.int64))
    tr, te = _split(len(y), seed=1)
    return TaskData("digits_own", x[tr], y[tr], x[te], y[te], num_classes=10)


def load_wine() -> TaskData:
    """Wine, standardised with the training split's mean and std."""
    from sklearn.datasets import load_wine as sk_wine

    d = sk_wine()
    x = torch.from_numpy(d.data.astype(np.float32))
    y = torch.from_numpy(d.target.astype(np.int64))
    tr, te = _split(len(y), seed=0)
    mean, std = x[tr].mean(0), x[tr].std(0)
    x = (x - mean) / std
    return TaskData("wine", x[tr], y[tr], x[te], y[te], num_classes=3)


def load_breast_cancer() -> TaskData:
    """scikit-learn's breast cancer table (`[N, 30]`, 2 classes), standardised with the training split's statistics."""
    from sklearn.datasets import load_breast_cancer as sk_cancer

    d = sk_cancer()
    x = torch.from_numpy(d.data.astype(np.float32))
    y = torch.from_numpy(d.target.astype(np.int64))
    tr, te = _split(len(y), seed=3)
    x = (x - x[tr].mean(0)) / x[tr].std(0)
    return TaskData("breast_cancer", x[tr], y[tr], x[te], y[te], num_classes=2)


ZOOS = {"gelu_cnn": (build_gelu_cnn, load_digits_own, {"channels": 6, "hidden": 8}),
        "tab_mlp": (build_tab_mlp, load_wine, {"hidden": 16}), "bn_mlp": (build_bn_mlp, load_wine, {"hidden": 16}),
        "res_ln_mlp": (build_res_ln_mlp, load_breast_cancer, {"width": 24})}
TASKS = {"gelu_cnn": "digits_own", "tab_mlp": "wine", "bn_mlp": "wine", "res_ln_mlp": "breast_cancer"}  # loaders' names


def train_zoo(arch: str, out: str | Path, runs: int, epochs: int = 3, seed: int = 0) -> list[dict]:
    """`runs` networks of `arch` trained with Adam (log-uniform learning rate in [3e-3, 3e-2], weight decay in
    [0, 1e-3], batch size 32 or 64, each its own seed), a checkpoint after every epoch, written to `out` as
    `<run>_e<epoch>.pt` in weightvae's zoo file schema; returns the checkpoints' properties."""
    build, load, kwargs = ZOOS[arch]
    data = load()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = []
    for r in range(runs):
        hp = {"lr": float(math.exp(rng.uniform(math.log(3e-3), math.log(3e-2)))),
              "weight_decay": float(rng.uniform(0.0, 1e-3)), "batch_size": int(rng.choice([32, 64]))}
        torch.manual_seed(seed * 100_003 + r)
        net = build(**kwargs)
        opt = torch.optim.Adam(net.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
        g = torch.Generator().manual_seed(r)
        for epoch in range(1, epochs + 1):
            net.train()
            for idx in torch.randperm(len(data.y_train), generator=g).split(hp["batch_size"]):
                loss = F.cross_entropy(net(data.x_train[idx]), data.y_train[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            net.eval()
            with torch.no_grad():
                metrics = {name: (net(x).argmax(1) == y).double().mean().item()
                           for name, x, y in (("train_acc", data.x_train, data.y_train),
                                              ("test_acc", data.x_test, data.y_test))}
            props = {"format_version": 1, "run_id": f"{arch}-{r:03d}", "task": data.name, "epoch": epoch,
                     "seed": seed * 100_003 + r, "architecture": {"name": arch, "kwargs": kwargs},
                     "hyperparameters": hp, "metrics": metrics}
            torch.save({"state_dict": {k: v.clone() for k, v in net.state_dict().items()}, "model_properties": props},
                       out / f"{arch}-{r:03d}_e{epoch:03d}.pt")
            records.append(props)
    return records
