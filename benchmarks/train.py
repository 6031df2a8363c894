"""Training speed, memory and early val loss of the default VAE (`train:` in params.yaml) against the
seed's preset (the same params with `codec: conv`, `preset: d2nwg`), on the same shards, in one run.

    python benchmarks/train.py [--params params.yaml] [--shards model_data/shards]

Each config runs in a fresh child process (so VmHWM is that config's own peak RSS) that builds the
module exactly as the train stage does (seed, layouts, per-layer normalisation) and runs plain
optimisation steps (`VAE.loss_terms` + backward + AdamW step, no Trainer) on real train batches,
collated before the clock starts (data loading is not timed). Both configs run the same protocol:
`--steps` steps at batch `--batch` (the first `--warmup` untimed), then the val loss as the stage
logs it (posterior mean, eval mode) over the whole val split. The default config is also timed at
its own `train.batch_size`. The d2nwg preset is slow on CPU (a few samples/s), hence the few small
steps. Shards: `--shards` if it exists, else a small zoo built and ingested into a temporary folder.
Prints JSON. Goal: the default config trains >= 10x the samples/s of the d2nwg preset.
`speedup_same_batch` compares both at `--batch`; `speedup_default_batch_vs_d2nwg_batch` the default at
its own batch size against d2nwg at `--batch` (d2nwg's samples/s barely grows with the batch on CPU, but
that is not measured here: a batch-64 step of it takes about a minute).
"""

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from itertools import cycle, islice
from pathlib import Path

import torch


def peak_rss_mib() -> float:
    """This process's peak RSS so far (VmHWM)."""
    return int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) / 1024


def setup(params: str, preset: str, shards: str):
    """The train stage's module and datasets for `params` with `preset`, seeded as the stage seeds it."""
    import lightning as L

    from weightvae.data import ZooDataset
    from weightvae.params import load_section
    from weightvae.train import TrainParams, functional_info, initial_module

    p = load_section(params, "train", TrainParams)
    if preset == "d2nwg":  # the seed's AutoencoderKL: a conv codec
        p = dataclasses.replace(p, codec="conv", preset="d2nwg")
    L.seed_everything(p.seed, workers=True, verbose=False)
    train_ds = ZooDataset(shards, "train", dataset=p.dataset, normalize=p.normalize, topk=p.topk)
    val_ds = ZooDataset(shards, "val", dataset=p.dataset, normalize=p.normalize)
    layouts = json.loads((Path(shards) / "layouts.json").read_text())
    layout_ids = sorted(layouts)
    n_layers = max(sum(e["learned"] for e in lay["entries"]) for lay in layouts.values())
    functional = functional_info(shards, layouts, log=lambda *_: None)  # what the behavioural term runs
    return p, initial_module(p, train_ds, layout_ids, n_layers, functional), train_ds, val_ds


def fit_steps(model, train_ds, batch: int, steps: int, warmup: int, seed: int) -> float:
    """`warmup + steps` optimisation steps on shuffled train batches; samples/s over the last `steps`."""
    from weightvae.data import ZooDataModule

    loader = ZooDataModule.loader(train_ds, batch_size=batch, shuffle=True, seed=seed)
    batches = list(islice(cycle(loader), warmup + steps))  # cycle replays epoch 1 if the split is short
    opt = model.configure_optimizers()
    model.train()
    t0 = time.perf_counter()
    for i, b in enumerate(batches):
        if i == warmup:
            t0 = time.perf_counter()
        loss = model.loss_terms(b)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return sum(len(b["weight"]) for b in batches[warmup:]) / (time.perf_counter() - t0)


@torch.no_grad()
def val_loss(model, val_ds, batch: int = 64) -> float:
    """Batch-size-weighted mean of the val loss, posterior mean, eval mode: as the stage logs val/loss."""
    from weightvae.data import ZooDataModule

    model.eval()
    total = sum(float(model.loss_terms(b, sample_posterior=False)["loss"]) * len(b["weight"])
                for b in ZooDataModule.loader(val_ds, batch_size=batch))
    return total / len(val_ds)


def child(args: argparse.Namespace) -> None:
    p, model, train_ds, val_ds = setup(args.params, args.child, args.shards)
    out = {"preset": args.child, "parameters": sum(t.numel() for t in model.parameters()),
           "codec": model.cfg.codec, "latent_shape": list(model.net.latent_shape),
           "steps": args.steps, "warmup": args.warmup, "batch_size": args.batch}
    t0 = time.perf_counter()
    out["samples_per_s"] = round(fit_steps(model, train_ds, args.batch, args.steps, args.warmup, p.seed), 2)
    t1 = time.perf_counter()
    out["val_loss"] = round(val_loss(model, val_ds), 5)
    out["train_seconds"], out["val_seconds"] = round(t1 - t0, 1), round(time.perf_counter() - t1, 1)
    out["peak_rss_mib"] = round(peak_rss_mib(), 1)
    if args.own_batch:  # the config at its own train.batch_size, on a fresh copy (same init)
        _, fresh, _, _ = setup(args.params, args.child, args.shards)
        steps = args.steps
        out["own_batch"] = {"batch_size": p.batch_size, "steps": steps, "warmup": args.warmup,
                            "samples_per_s": round(fit_steps(fresh, train_ds, p.batch_size, steps, args.warmup,
                                                             p.seed), 2),
                            "peak_rss_mib": round(peak_rss_mib(), 1)}
    print(json.dumps(out))


def shards_or_build(shards: str, tmp: str) -> tuple[str, str]:
    if Path(shards, "manifest.json").exists():
        return shards, "existing"
    from weightvae.ingest import IngestParams, ingest
    from weightvae.zoo import ZooParams, build_zoo

    zoo = ZooParams(architectures={"cnn": 64}, epochs=4, save_epochs=(1, 2, 4), group_size=64)
    build_zoo(zoo, Path(tmp) / "zoo", log=lambda *_: None)
    ingest(IngestParams(zoo_dir=str(Path(tmp) / "zoo"), workers=1), Path(tmp) / "shards", log=lambda *_: None)
    return str(Path(tmp) / "shards"), "built: 64 cnn runs x 3 checkpoints"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--shards", default="model_data/shards", help="used if it exists (default: %(default)s)")
    ap.add_argument("--batch", type=int, default=8, help="batch of the shared protocol (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps of the shared protocol (default: %(default)s)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed first steps (default: %(default)s)")
    ap.add_argument("--child", choices=["default", "d2nwg"], help=argparse.SUPPRESS)
    ap.add_argument("--own-batch", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    t0, load = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        shards, source = shards_or_build(args.shards, tmp)
        manifest = json.loads(Path(shards, "manifest.json").read_text())
        runs = {}
        for preset in ("default", "d2nwg"):
            cmd = [sys.executable, __file__, "--child", preset, "--params", args.params, "--shards", shards,
                   "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup)]
            res = subprocess.run(cmd + (["--own-batch"] if preset == "default" else []), capture_output=True,
                                 text=True, check=True)
            runs[preset] = json.loads(res.stdout.strip().splitlines()[-1])
    small, seed = runs["default"], runs["d2nwg"]
    print(json.dumps({
        "shards": shards, "shards_source": source, "max_len": manifest["max_len"], "models": manifest["counts"],
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "loadavg_1m": [round(load, 2), round(os.getloadavg()[0], 2)],  # start, end: other processes share the CPUs
        "protocol": f"{args.warmup} warm-up + {args.steps} timed AdamW steps at batch {args.batch} from the same "
                    "seeded init and data order, batches pre-collated (loading not timed); then val loss over "
                    "the whole val split (posterior mean). The d2nwg preset is timed over these few steps only.",
        "speedup_same_batch": round(small["samples_per_s"] / seed["samples_per_s"], 1),
        "speedup_default_batch_vs_d2nwg_batch": round(small["own_batch"]["samples_per_s"] / seed["samples_per_s"], 1),
        "parameter_ratio": round(seed["parameters"] / small["parameters"], 1),
        "default": small, "d2nwg": seed, "seconds": round(time.perf_counter() - t0, 1),
    }))


if __name__ == "__main__":
    main()
