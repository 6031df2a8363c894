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
- `pca_code`: PCA of the per-layer standardised weights, 426 values (the probe stage's PCA representation,
  the default linear codec at its start);
- `outputs`: the network's log-softmax outputs on `--probes` training inputs of its task (the function itself,
  not a weight feature: how far a linear readout of the network's behaviour gets).
It bounds what a linear probe on a weight code can reach, and shows where the goal of issue 14 (test-accuracy
R² >= 0.95 from a linear probe on the latent) stands. `--tiny` builds and ingests a small zoo first (the smoke
test). Prints JSON.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from weightvae import standardize
from weightvae.behaviour import flat_logits, probe_inputs
from weightvae.layout import Layout
from weightvae.nets import LinearVAE, VAEConfig
from weightvae.params import load_section
from weightvae.probe import ProbeParams, RidgeBasis, pca_features, r2_score, ridge_probe, targets, weight_stats
from weightvae.shards import SPLITS, open_shard

TARGETS = ("test_acc", "epoch", "lr")


def measure(shards: Path, n_probes: int, latent: int, p: ProbeParams) -> dict:
    table = pd.read_parquet(shards / "models.parquet")
    (task, arch, lid), = table.groupby(["task", "architecture", "layout_id"]).groups  # the default zoo: one group
    layout = Layout.from_dict(json.loads((shards / "layouts.json").read_text())[lid])
    slices = layout.slices()
    parts = {s: table[table.split == s].sort_values("row") for s in SPLITS}
    w = {s: torch.from_numpy(np.asarray(open_shard(shards, s, lid)[parts[s].row.to_numpy()])) for s in SPLITS}
    # the codec itself, as train starts it: per-layer standardised with the train split's statistics
    mean, scale = standardize.from_weights(w["train"], slices)
    z = {s: (w[s] - mean) / scale for s in SPLITS}
    net = LinearVAE(VAEConfig(max_len=layout.length, codec="linear", latent_dim=latent,
                              tensor_sizes=tuple(sl.stop - sl.start for _, sl in slices), tensor_scales=True))
    net.init_pca(z["train"])
    with torch.no_grad():
        code = {s: net.encode(z[s]).mode().double().numpy() for s in SPLITS}
        probes = probe_inputs(task, n_probes)
        outputs = {s: torch.log_softmax(flat_logits(arch, layout, w[s], probes), -1).flatten(1).double().numpy()
                   for s in SPLITS}
    w = {s: w[s].double().numpy() for s in SPLITS}
    sw = {s: weight_stats(w[s], slices)[0] for s in SPLITS}
    log_std = {s: code[s][:, :len(slices)] for s in SPLITS}
    feats = {
        "log_std": log_std,
        "sW": sw,
        "sW+log_std": {s: np.hstack([sw[s], log_std[s]]) for s in SPLITS},
        "scale_direction_code": code,
        "pca_code": pca_features(w["train"], {s: w[s] for s in ("val", "test")}, slices, latent),
        "outputs": outputs,
    }
    values, _ = targets(pd.concat(parts.values()))
    bounds = np.cumsum([0] + [len(parts[s]) for s in SPLITS])
    out = {"group": f"{task}/{arch}", "models": {s: len(parts[s]) for s in SPLITS}, "probe_inputs": len(probes),
           "features": {name: int(f["train"].shape[1]) for name, f in feats.items()}, "test_r2": {}}
    for name, f in feats.items():
        basis = RidgeBasis(f["train"])
        out["test_r2"][name] = {}
        for t in TARGETS:
            if t not in values:
                continue
            y = {s: values[t][bounds[i]:bounds[i + 1]] for i, s in enumerate(SPLITS)}
            fit = ridge_probe(basis, y["train"], f["val"], y["val"], f["test"], p.alphas())
            out["test_r2"][name][t] = round(r2_score(y["test"], fit.pred), 4)
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
    ap.add_argument("--tiny", action="store_true", help="build and ingest a small zoo first (smoke test)")
    args = ap.parse_args()
    p = load_section(args.params, "probe", ProbeParams)
    import yaml

    latent = int(yaml.safe_load(Path(args.params).read_text())["train"]["latent_dim"])
    with tempfile.TemporaryDirectory() as tmp:
        shards = tiny_shards(Path(tmp)) if args.tiny else Path(args.shards)
        if not (shards / "manifest.json").exists():
            sys.exit(f"{shards}: no shards; run `dvc repro ingest` first")
        if args.tiny:
            latent = 20
        print(json.dumps(measure(shards, args.probes, latent, p), indent=2))


if __name__ == "__main__":
    main()
