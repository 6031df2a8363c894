"""What a linear probe can read off features of the weights, and of the function, on the default zoo.

    python benchmarks/probe_features.py [--shards model_data/shards] [--probes 256]

The probe stage's protocol (`weightvae.probe`: ridge in closed form on standardised features, the penalty
chosen on val from the `probe:` params' grid, R² on test) on feature sets that need no trained VAE, per target
(test accuracy, epoch, learning rate):
- `log_std`: each learned tensor's log-std (one value per tensor: the leading values of that code);
- `sW`: Unterthiner et al.'s statistics (the probe stage's s(W)); `sW+log_std`: both;
- `scale_direction_code`: the `train.tensor_scales` codec's code at the start of training (`LinearVAE` started
  by `init_pca` on the train split), at the default latent's size: each tensor's log-std and mean of the
  per-layer standardised weights, then PCA of the tensors standardised by them for the rest of the 426 values;
- `unit_scale_code`: the same with `train.scale_groups: unit`: each output unit's incoming weights (and each
  bias) get their own log-std and mean (108 values for the default CNN), then PCA of the rest;
- `pca_code`: PCA of the per-layer standardised weights, 426 values (the probe stage's PCA representation,
  the default linear codec at its start);
- `outputs`: the network's log-softmax outputs on `--probes` training inputs of its task (the function itself,
  not a weight feature: how far a linear readout of the network's behaviour gets).
It bounds what a linear probe on a weight code can reach, and shows where the goal of issue 14 (test-accuracy
R² >= 0.95 from a linear probe on the latent) stands. Two bounds beside it (`nonlinear`, `reference`):
- supervised non-linear regressors on the small feature sets (`log_std`, `sW`, `sW+log_std`): the probe stage's
  boosted trees, and kernel ridge with an RBF kernel (penalty and width chosen on val, features standardised
  with the train split's statistics): what a probe could read off these statistics if it were not linear;
  and a seeded two-layer MLP trained on the targets from `sW` and from all the per-layer standardised weights
  (`W`), its checkpoint chosen on val every 10 of `--mlp-epochs` epochs: what a plain network trained on the
  properties themselves reads from the default zoo's 2,040 training models;
- the zoo's recorded training accuracy as the one feature of a linear probe: whether test accuracy is a noisy
  target or one the network's function on its training inputs pins down; and the same feature measured on the
  network the pipeline's latent decodes to (`--model`, `--latents`: the train and encode stages' outputs,
  skipped when absent): whether the latent holds test accuracy, read through its decoder rather than linearly.
`--tiny` builds and ingests a small zoo first (the smoke test). Prints JSON.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from weightvae import standardize
from weightvae.behaviour import flat_logits, probe_inputs
from weightvae.config import TrainParams, latent_size
from weightvae.layout import Layout
from weightvae.nets import LinearVAE, VAEConfig
from weightvae.params import load_section
from weightvae.probe import (
    ProbeParams,
    RidgeBasis,
    gbt_probe,
    pca_features,
    r2_score,
    ridge_probe,
    targets,
    weight_stats,
)
from weightvae.shards import SPLITS, open_shard
from weightvae.train import scale_group_sizes

TARGETS = ("test_acc", "epoch", "lr")
NONLINEAR = ("log_std", "sW", "sW+log_std")  # small enough for kernel ridge on every training row
KERNEL_ALPHAS = (1e-3, 1e-2, 1e-1, 1.0)
KERNEL_WIDTHS = (0.1, 1.0, 3.0)  # RBF gamma times the number of features


def kernel_ridge_r2(f: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> float:
    """Test R² of RBF kernel ridge on standardised features, penalty and width chosen on val (never test)."""
    from sklearn.kernel_ridge import KernelRidge

    mu, sd = f["train"].mean(0), f["train"].std(0) + 1e-12
    x = {s: (f[s] - mu) / sd for s in SPLITS}
    best = (-np.inf, None)
    for alpha in KERNEL_ALPHAS:
        for width in KERNEL_WIDTHS:
            model = KernelRidge(alpha=alpha, kernel="rbf", gamma=width / x["train"].shape[1]).fit(x["train"], y["train"])
            val = r2_score(y["val"], model.predict(x["val"]))
            if val > best[0]:
                best = (val, model)
    return r2_score(y["test"], best[1].predict(x["test"]))


def mlp_r2(f: dict[str, np.ndarray], y: dict[str, np.ndarray], epochs: int, standardise: bool = True,
           hidden: int = 256, seed: int = 0) -> float:
    """Test R² of a two-layer MLP regressor (AdamW, dropout) at its best epoch on val; features standardised
    per column unless `standardise` is off (the weights, already per layer: per column it read them worse)."""
    torch.manual_seed(seed)
    mu, sd = (f["train"].mean(0), f["train"].std(0) + 1e-12) if standardise else (0.0, 1.0)
    x = {s: torch.from_numpy((f[s] - mu) / sd).float() for s in SPLITS}
    y_mu, y_sd = y["train"].mean(), y["train"].std()
    target = torch.from_numpy((y["train"] - y_mu) / y_sd).float()
    net = torch.nn.Sequential(torch.nn.Linear(x["train"].shape[1], hidden), torch.nn.GELU(), torch.nn.Dropout(0.2),
                              torch.nn.Linear(hidden, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 1))
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-3)
    best = (-np.inf, float("nan"))
    for epoch in range(epochs):
        net.train()
        for idx in torch.randperm(len(target)).split(64):
            loss = (net(x["train"][idx])[:, 0] - target[idx]).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        if epoch % 10 == 9 or epoch == epochs - 1:
            net.eval()
            with torch.no_grad():
                pred = {s: net(x[s])[:, 0].double().numpy() * y_sd + y_mu for s in ("val", "test")}
            val = r2_score(y["val"], pred["val"])
            if val > best[0]:
                best = (val, r2_score(y["test"], pred["test"]))
    return best[1]


@torch.no_grad()
def decoded_train_acc(model_path: Path, latents: Path, ids: list[str], task: str, arch: str, layout: Layout,
                      batch: int = 64) -> np.ndarray:
    """Accuracy on all of the task's training inputs of the networks the latents of `ids` decode to `[N, 1]`."""
    from weightvae.latents import read_latents
    from weightvae.model import VAE
    from weightvae.tasks import get_task

    model = VAE.from_export(str(model_path))
    rows, z = read_latents(latents, None, layout.layout_id)
    pos = {r["id"]: i for i, r in enumerate(rows)}
    z = z[[pos[i] for i in ids]]
    data = get_task(task)
    acc = []
    for start in range(0, len(z), batch):
        lids = [layout.layout_id] * len(z[start:start + batch])
        w = model.denormalize(model.decode(z[start:start + batch], lids), lids)[:, :layout.length]
        acc.append((flat_logits(arch, layout, w, data.x_train).argmax(-1) == data.y_train).double().mean(1))
    return torch.cat(acc).numpy()[:, None]


def measure(shards: Path, n_probes: int, latent: int, p: ProbeParams, model: Path | None = None,
            latents: Path | None = None, mlp_epochs: int = 300) -> dict:
    table = pd.read_parquet(shards / "models.parquet")
    (task, arch, lid), = table.groupby(["task", "architecture", "layout_id"]).groups  # the default zoo: one group
    layout = Layout.from_dict(json.loads((shards / "layouts.json").read_text())[lid])
    slices = layout.slices()
    parts = {s: table[table.split == s].sort_values("row") for s in SPLITS}
    w = {s: torch.from_numpy(np.asarray(open_shard(shards, s, lid)[parts[s].row.to_numpy()])) for s in SPLITS}
    # the codec itself, as train starts it: per-layer standardised with the train split's statistics
    mean, scale = standardize.from_weights(w["train"], slices)
    z = {s: (w[s] - mean) / scale for s in SPLITS}
    code = {}
    for by in ("tensor", "unit"):
        net = LinearVAE(VAEConfig(max_len=layout.length, codec="linear", latent_dim=latent, tensor_scales=True,
                                  tensor_sizes=scale_group_sizes(layout.to_dict(), by)))
        net.init_pca(z["train"])
        with torch.no_grad():
            code[by] = {s: net.encode(z[s]).mode().double().numpy() for s in SPLITS}
    with torch.no_grad():
        probes = probe_inputs(task, n_probes)
        outputs = {s: torch.log_softmax(flat_logits(arch, layout, w[s], probes), -1).flatten(1).double().numpy()
                   for s in SPLITS}
    w = {s: w[s].double().numpy() for s in SPLITS}
    sw = {s: weight_stats(w[s], slices)[0] for s in SPLITS}
    log_std = {s: code["tensor"][s][:, :len(slices)] for s in SPLITS}
    feats = {
        "log_std": log_std,
        "sW": sw,
        "sW+log_std": {s: np.hstack([sw[s], log_std[s]]) for s in SPLITS},
        "scale_direction_code": code["tensor"],
        "unit_scale_code": code["unit"],
        "pca_code": pca_features(w["train"], {s: w[s] for s in ("val", "test")}, slices, latent),
        "outputs": outputs,
    }
    values, _ = targets(pd.concat(parts.values()))
    bounds = np.cumsum([0] + [len(parts[s]) for s in SPLITS])
    out = {"group": f"{task}/{arch}", "models": {s: len(parts[s]) for s in SPLITS}, "probe_inputs": len(probes),
           "features": {name: int(f["train"].shape[1]) for name, f in feats.items()}, "test_r2": {},
           "nonlinear": {"gbt": {}, "kernel_ridge": {}, "mlp": {}}}
    ys = {t: {s: values[t][bounds[i]:bounds[i + 1]] for i, s in enumerate(SPLITS)} for t in TARGETS if t in values}
    for name, f in feats.items():
        basis = RidgeBasis(f["train"])
        out["test_r2"][name] = {}
        for t, y in ys.items():
            fit = ridge_probe(basis, y["train"], f["val"], y["val"], f["test"], p.alphas())
            out["test_r2"][name][t] = round(r2_score(y["test"], fit.pred), 4)
    # s(W) holds each tensor's variance, and trees split alike on any monotone map of a feature: adding the
    # log-stds cannot change them
    for name in NONLINEAR:
        f = feats[name]
        out["nonlinear"]["gbt"][name] = {t: round(r2_score(y["test"], gbt_probe(
            p, f["train"], y["train"], f["val"], y["val"], f["test"]).pred), 4) for t, y in ys.items()}
        out["nonlinear"]["kernel_ridge"][name] = {t: round(kernel_ridge_r2(f, y), 4) for t, y in ys.items()}
    for name, f in {"W": {s: z[s].double().numpy() for s in SPLITS}, "sW": sw}.items():
        out["nonlinear"]["mlp"][name] = {t: round(mlp_r2(f, y, mlp_epochs, standardise=name != "W"), 4)
                                         for t, y in ys.items()}
    refs = {"recorded_train_acc": {s: parts[s].train_acc.to_numpy(np.float64)[:, None] for s in SPLITS}}
    if model is not None and latents is not None:
        acc = decoded_train_acc(model, latents, [i for s in SPLITS for i in parts[s].id], task, arch, layout)
        refs["decoded_train_acc"] = {s: acc[bounds[i]:bounds[i + 1]] for i, s in enumerate(SPLITS)}  # one read
    out["reference"] = {}
    for name, acc in refs.items():
        if "test_acc" in ys and all(np.isfinite(a).all() for a in acc.values()):
            y = ys["test_acc"]
            fit = ridge_probe(RidgeBasis(acc["train"]), y["train"], acc["val"], y["val"], acc["test"], p.alphas())
            out["reference"][name] = {"test_acc": round(r2_score(y["test"], fit.pred), 4)}
    return out


def tiny_shards(root: Path) -> Path:
    """A 20-run, 2-epoch CNN zoo ingested: enough models in every split for the probes to run."""
    from weightvae.ingest import IngestParams, ingest
    from weightvae.zoo import ZooParams, build_zoo

    build_zoo(ZooParams(architectures={"cnn": 20}, epochs=2, save_epochs=(1, 2), group_size=20), root / "weights",
              log=lambda *_: None)
    ingest(IngestParams(zoo_dir=str(root / "weights"), workers=1), root / "shards", log=lambda *_: None)
    return root / "shards"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", default="model_data/shards")
    ap.add_argument("--params", default="params.yaml", help="the probe: section (penalty grid) and train.latent_dim")
    ap.add_argument("--probes", type=int, default=256, help="training inputs the outputs are taken on")
    ap.add_argument("--mlp-epochs", type=int, default=300, help="epochs of the supervised MLP bound")
    ap.add_argument("--model", default="model_data/models/vae.ckpt", help="the train stage's VAE export")
    ap.add_argument("--latents", default="model_data/latents.parquet", help="the encode stage's latents")
    ap.add_argument("--tiny", action="store_true", help="build and ingest a small zoo first (smoke test)")
    args = ap.parse_args()
    p = load_section(args.params, "probe", ProbeParams)
    train_params = load_section(args.params, "train", TrainParams)
    with tempfile.TemporaryDirectory() as tmp:
        shards = tiny_shards(Path(tmp)) if args.tiny else Path(args.shards)
        if not (shards / "manifest.json").exists():
            sys.exit(f"{shards}: no shards; run `dvc repro ingest` first")
        # train.latent_dim, or what `auto` gives the shards' longest layout (as the train stage sizes it)
        latent = latent_size(train_params, max(v["length"] for v in
                                               json.loads((shards / "layouts.json").read_text()).values()))
        if args.tiny:
            latent = 120  # the unit-scale code leads with 108 measured values
        model, latents = Path(args.model), Path(args.latents)
        if args.tiny or not (model.exists() and latents.exists()):
            print(f"{model}, {latents}: not both there (or --tiny); no decoded_train_acc reference", file=sys.stderr)
            model = latents = None
        start = time.perf_counter()
        out = measure(shards, args.probes, latent, p, model, latents, args.mlp_epochs)
        out["seconds"] = round(time.perf_counter() - start, 1)  # the measurement, not the --tiny zoo's build
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
