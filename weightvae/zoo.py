"""The default model zoo: many small networks trained offline, vectorised across runs.

Each run has its own seed (init, label noise, data order, dropout masks) and its own
hyperparameters drawn from the ranges in `params.yaml` (`zoo:`), so the zoo's networks
differ in *function*, not only in weights. Runs of one architecture are trained
together: parameters are stacked along a model dimension and stepped with one batched
forward/backward and a batched Adam that reproduces `torch.optim.Adam` exactly.

Zoo file schema (one `.pt` per checkpoint, `torch.load(path, weights_only=True)`)::

    {"state_dict": {name: Tensor},
     "model_properties": {"format_version", "run_id", "task", "architecture": {"name", "kwargs"},
                          "seed", "epoch", "hyperparameters", "metrics": {"train_acc", "test_acc", "test_loss"}}}
"""

from __future__ import annotations

import argparse
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from weightvae.archs import ARCHITECTURES, build_model, evaluate_model, get_architecture, hidden_width
from weightvae.io import atomic_path, write_json
from weightvae.params import add_inputs, load_section, require
from weightvae.progress import Progress
from weightvae.records import zoo_record
from weightvae.tasks import TASKS, TaskData, get_task

BETAS = (0.9, 0.999)
EPS = 1e-8


@dataclass(frozen=True)
class ZooParams:
    """`zoo:` section of params.yaml. Ranges are `[low, high]`; `lr` is drawn log-uniformly."""

    seed: int = 0
    task: str = "digits"
    architectures: dict[str, int] = field(default_factory=lambda: {"cnn": 512})  # name -> runs
    arch_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    epochs: int = 16
    save_epochs: tuple[int, ...] = (1, 2, 4, 8, 16)
    batch_size: int = 32
    group_size: int = 128  # runs trained together; bigger is faster until memory bandwidth caps it
    lr: tuple[float, float] = (1e-3, 1e-2)
    weight_decay: tuple[float, float] = (0.0, 1e-3)
    dropout: tuple[float, float] = (0.0, 0.5)
    label_noise: tuple[float, float] = (0.0, 0.4)

    def __post_init__(self) -> None:
        require(self.task in TASKS, "zoo.task", self.task, f"choose one of {sorted(TASKS)}")
        for name, runs in self.architectures.items():
            require(name in ARCHITECTURES, f"zoo.architectures.{name}", name,
                    f"choose from {sorted(ARCHITECTURES)}")
            require(runs >= 1, f"zoo.architectures.{name}", runs, "need at least 1 run")
        require(self.epochs >= 1, "zoo.epochs", self.epochs, "need >= 1")
        require(len(self.save_epochs) > 0 and all(1 <= e <= self.epochs for e in self.save_epochs),
                "zoo.save_epochs", list(self.save_epochs), f"each epoch must be in 1..{self.epochs} (zoo.epochs)")
        require(self.batch_size >= 1, "zoo.batch_size", self.batch_size, "need >= 1")
        require(self.group_size >= 1, "zoo.group_size", self.group_size, "need >= 1")
        require(0 < self.lr[0] <= self.lr[1], "zoo.lr", list(self.lr), "need 0 < low <= high")
        for key in ("weight_decay", "dropout", "label_noise"):
            lo, hi = getattr(self, key)
            top = float("inf") if key == "weight_decay" else 1.0
            require(0 <= lo <= hi < top, f"zoo.{key}", [lo, hi], f"need 0 <= low <= high < {top}")


@dataclass(frozen=True)
class RunSpec:
    """Everything that defines one training run."""

    run_id: str
    task: str
    arch: str
    arch_kwargs: dict[str, Any]
    seed: int
    hyperparameters: dict[str, float]


def plan_runs(p: ZooParams) -> list[RunSpec]:
    """The zoo's runs. Run i's seed and hyperparameters depend only on (zoo seed, task, arch, i),
    so growing the zoo adds runs and never changes existing ones."""
    runs = []
    for arch in sorted(p.architectures):
        for i in range(p.architectures[arch]):
            ss = np.random.SeedSequence(p.seed, spawn_key=(zlib.crc32(p.task.encode()), zlib.crc32(arch.encode()), i))
            rng = np.random.default_rng(ss)
            hp = {
                "lr": float(np.exp(rng.uniform(np.log(p.lr[0]), np.log(p.lr[1])))),
                "weight_decay": float(rng.uniform(*p.weight_decay)),
                "dropout": float(rng.uniform(*p.dropout)),
                "label_noise": float(rng.uniform(*p.label_noise)),
                "batch_size": p.batch_size,
                "epochs": p.epochs,
            }
            seed = int(rng.integers(2**31 - 1))
            runs.append(RunSpec(f"{p.task}-{arch}-{i:04d}", p.task, arch, dict(p.arch_kwargs.get(arch, {})), seed, hp))
    return runs


class RunStream:
    """The random stream of one run: initial weights, noisy labels, per-epoch order and dropout.

    Both the vectorised trainer and the one-run reference draw from this, so a run gets the
    same randomness however it is trained.
    """

    def __init__(self, run: RunSpec, task: TaskData):
        self.run = run
        self.rng = np.random.default_rng(run.seed)
        n, k = len(task.y_train), task.num_classes
        noisy = self.rng.random(n) < run.hyperparameters["label_noise"]
        labels = task.y_train.numpy().copy()
        labels[noisy] = self.rng.integers(0, k, int(noisy.sum()))
        self.labels = torch.from_numpy(labels)
        self.hidden = hidden_width(run.arch, run.arch_kwargs)

    def init_state(self) -> dict[str, Tensor]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.run.seed)
            return build_model(self.run.arch, self.run.arch_kwargs).state_dict()

    def epoch(self) -> tuple[np.ndarray, np.ndarray]:
        """Order of the training samples and the (scaled) dropout mask for each, `[N]`, `[N, hidden]`."""
        n = len(self.labels)
        perm = self.rng.permutation(n)
        p = self.run.hyperparameters["dropout"]
        mask = (self.rng.random((n, self.hidden), dtype=np.float32) >= p).astype(np.float32) / np.float32(1 - p)
        return perm, mask


def train_group(runs: list[RunSpec], save_epochs: tuple[int, ...], dtype: torch.dtype = torch.float32
                ) -> dict[str, dict[int, dict[str, Tensor]]]:
    """Train runs of one task and architecture together; returns {run_id: {epoch: state_dict}}."""
    arch, task = runs[0].arch, get_task(runs[0].task)
    assert all(r.arch == arch and r.task == runs[0].task and r.arch_kwargs == runs[0].arch_kwargs for r in runs)
    forward = get_architecture(arch).batched_forward
    streams = [RunStream(r, task) for r in runs]
    inits = [s.init_state() for s in streams]
    params = {k: torch.stack([sd[k] for sd in inits]).to(dtype) for k in inits[0]}  # [M, ...]
    names = list(params)
    m = len(runs)
    hp = runs[0].hyperparameters
    epochs, bs = hp["epochs"], hp["batch_size"]
    lr = torch.tensor([r.hyperparameters["lr"] for r in runs], dtype=torch.float64)
    wd = torch.tensor([r.hyperparameters["weight_decay"] for r in runs], dtype=dtype)
    exp_avg = {k: torch.zeros_like(v) for k, v in params.items()}
    exp_avg_sq = {k: torch.zeros_like(v) for k, v in params.items()}
    labels = torch.stack([s.labels for s in streams])  # [M, N]
    x = task.x_train.to(dtype)
    n = len(x)
    out: dict[str, dict[int, dict[str, Tensor]]] = {r.run_id: {} for r in runs}
    step = 0
    for epoch in range(1, epochs + 1):
        drawn = [s.epoch() for s in streams]
        perm = torch.from_numpy(np.stack([d[0] for d in drawn]))  # [M, N]
        mask = torch.from_numpy(np.stack([d[1] for d in drawn])).to(dtype)  # [M, N, hidden]
        for start in range(0, n, bs):
            idx = perm[:, start:start + bs]  # [M, b]
            for v in params.values():
                v.requires_grad_(True)
            logits = forward(params, x[idx], mask[:, start:start + bs])  # [M, b, classes]
            y = labels.gather(1, idx)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(m, -1).mean(1).sum()
            grads = torch.autograd.grad(loss, [params[k] for k in names])
            step += 1
            with torch.no_grad():
                _adam_step(params, grads, names, exp_avg, exp_avg_sq, lr, wd, step)
        if epoch in save_epochs:
            for i, r in enumerate(runs):
                out[r.run_id][epoch] = {k: params[k][i].detach().to(inits[i][k].dtype).clone() for k in names}
    return out


def _adam_step(params, grads, names, exp_avg, exp_avg_sq, lr, wd, step) -> None:
    """`torch.optim.Adam` (single-tensor path, L2 weight decay) with per-model lr and weight decay."""
    b1, b2 = BETAS
    bc1, bc2_sqrt = 1 - b1**step, (1 - b2**step) ** 0.5
    for k, g in zip(names, grads):
        p = params[k].detach()
        shape = (-1,) + (1,) * (p.dim() - 1)
        g = g + wd.view(shape) * p
        exp_avg[k].lerp_(g, 1 - b1)
        exp_avg_sq[k].mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (exp_avg_sq[k].sqrt() / bc2_sqrt).add_(EPS)
        step_size = (lr / bc1).to(p.dtype).view(shape)
        params[k] = p - step_size * (exp_avg[k] / denom)


def train_single(run: RunSpec, save_epochs: tuple[int, ...], dtype: torch.dtype = torch.float32
                 ) -> dict[int, dict[str, Tensor]]:
    """Reference: one run with the plain module and `torch.optim.Adam`, one step at a time."""
    task = get_task(run.task)
    stream = RunStream(run, task)
    model = build_model(run.arch, run.arch_kwargs)
    model.load_state_dict(stream.init_state())
    model.to(dtype).train()
    hp = run.hyperparameters
    opt = torch.optim.Adam(model.parameters(), lr=hp["lr"], betas=BETAS, eps=EPS,
                           weight_decay=hp["weight_decay"], foreach=False)
    x = task.x_train.to(dtype)
    out = {}
    for epoch in range(1, hp["epochs"] + 1):
        perm, mask = stream.epoch()
        perm, mask = torch.from_numpy(perm), torch.from_numpy(mask).to(dtype)
        for start in range(0, len(x), hp["batch_size"]):
            idx = perm[start:start + hp["batch_size"]]
            loss = F.cross_entropy(model(x[idx], mask[start:start + hp["batch_size"]]), stream.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if epoch in save_epochs:
            out[epoch] = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
    return out


def checkpoint_metrics(run: RunSpec, state_dict: dict[str, Tensor]) -> dict[str, float]:
    """Metrics stored in each zoo file, computed with the plain module so evaluate reproduces them exactly."""
    task = get_task(run.task)
    model = build_model(run.arch, run.arch_kwargs)
    model.load_state_dict(state_dict)
    test = evaluate_model(model, task.x_test, task.y_test)
    train = evaluate_model(model, task.x_train, task.y_train)
    return {"train_acc": train["acc"], "test_acc": test["acc"], "test_loss": test["loss"]}


def checkpoint_record(run: RunSpec, epoch: int, state_dict: dict[str, Tensor]) -> dict[str, Any]:
    return zoo_record(state_dict, run.run_id, run.task, run.arch, dict(run.arch_kwargs), seed=run.seed, epoch=epoch,
                      hyperparameters=dict(run.hyperparameters), metrics=checkpoint_metrics(run, state_dict))


def _groups(runs: list[RunSpec], size: int) -> Iterator[list[RunSpec]]:
    by_arch: dict[str, list[RunSpec]] = {}
    for r in runs:
        by_arch.setdefault(r.arch, []).append(r)
    for arch_runs in by_arch.values():
        for i in range(0, len(arch_runs), size):
            yield arch_runs[i:i + size]


def build_zoo(p: ZooParams, out_dir: str | Path, log=print) -> dict[str, Any]:
    """Train the zoo and write one file per checkpoint into `out_dir` (replaced atomically).
    `log` receives the progress line when not on a terminal (`weightvae.progress`).

    Returns the summary written to metrics/zoo.json.
    """
    t0 = time.perf_counter()
    runs = plan_runs(p)
    records = []
    with atomic_path(out_dir, is_dir=True) as tmp, Progress("zoo", len(runs), "runs", log=log) as bar:
        for group in _groups(runs, p.group_size):
            trained = train_group(group, tuple(p.save_epochs))
            for r in group:
                for epoch, sd in trained[r.run_id].items():
                    rec = checkpoint_record(r, epoch, sd)
                    torch.save(rec, tmp / f"{r.run_id}_e{epoch:03d}.pt")
                    records.append(rec["model_properties"])
            bar.update(len(group))
    return summarize(records, time.perf_counter() - t0)


def summarize(records: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """Accuracy distribution per task, overall and per epoch: the zoo's spread, at a glance."""
    def stats(v: list[float]) -> dict[str, float]:
        a = np.asarray(v)
        return {"mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()), "max": float(a.max()),
                "count": int(a.size)}

    tasks: dict[str, Any] = {}
    for task in sorted({r["task"] for r in records}):
        rs = [r for r in records if r["task"] == task]
        tasks[task] = {
            "test_acc": stats([r["metrics"]["test_acc"] for r in rs]),
            "test_acc_by_epoch": {str(e): stats([r["metrics"]["test_acc"] for r in rs if r["epoch"] == e])
                                  for e in sorted({r["epoch"] for r in rs})},
        }
    return {
        "runs": len({r["run_id"] for r in records}),
        "checkpoints": len(records),
        "build_seconds": round(seconds, 1),
        "tasks": tasks,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_inputs(parser, "params")
    parser.add_argument("--out", default="model_data/weights", help="zoo folder to (re)write (default: %(default)s)")
    parser.add_argument("--metrics", default="metrics/zoo.json", help="summary JSON (default: %(default)s)")


def run(args: argparse.Namespace) -> None:
    """Stage entry point: read `zoo:` params, build the zoo, write its summary."""
    p = load_section(args.params, "zoo", ZooParams)
    summary = build_zoo(p, args.out)
    write_json(args.metrics, summary)
    for task, s in summary["tasks"].items():
        a = s["test_acc"]
        print(f"zoo: {summary['runs']} runs, {summary['checkpoints']} checkpoints in {summary['build_seconds']}s; "
              f"{task} test_acc mean {a['mean']:.3f} std {a['std']:.3f} [{a['min']:.3f}, {a['max']:.3f}]")
