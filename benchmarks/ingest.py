"""Ingest speed and memory on synthetic zoos, and the DataModule's loading speed.

    python benchmarks/ingest.py [--sizes 1000 10000 50000] [--workers 1 2] [--loader-seconds 5]

Builds zoos of small models (the built-in `mlp` with 48 hidden units: 3,610 float params each, zoo file schema, `torch.save`) in a temporary
folder, ingests each in a fresh subprocess per worker count (so `ru_maxrss` is that ingest's own
peak), and prints JSON: models/s and peak RSS (MiB) of the main process and of the worker processes,
next to the output's size and the RSS of a process that only imports `weightvae.ingest`. Goal: >= 2,000
models/s and peak RSS flat in the zoo size apart from the output. Files are read from a warm page
cache (they were just written).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

# the built-in `mlp` (kwargs hidden=48) on 8x8 inputs and 10 classes: ingest checks that files fit it
SHAPES = {"fc1.weight": (48, 64), "fc1.bias": (48,), "fc2.weight": (10, 48), "fc2.bias": (10,)}  # 3,610 params
EPOCHS = 5  # checkpoints per run


def _write(args: tuple[str, int, int]) -> None:
    """Write models [start, stop): one random base per process, a cheap per-model change."""
    out, start, stop = args
    g = torch.Generator().manual_seed(start)
    base = {k: torch.randn(s, generator=g) * 0.1 for k, s in SHAPES.items()}
    for i in range(start, stop):
        run, epoch = divmod(i, EPOCHS)
        sd = {k: v + 0.001 * (i % 97) for k, v in base.items()}
        props = {"format_version": 1, "run_id": f"synth-{run:06d}", "task": "synthetic",
                 "architecture": {"name": "mlp", "kwargs": {"hidden": 48}}, "seed": run, "epoch": epoch + 1,
                 "hyperparameters": {"lr": 0.001}, "metrics": {"train_acc": 0.5, "test_acc": 0.5, "test_loss": 1.0}}
        torch.save({"state_dict": sd, "model_properties": props}, f"{out}/synth-{run:06d}_e{epoch + 1:03d}.pt")


def build(out: Path, n: int, have: int = 0) -> None:
    """Grow the zoo in `out` from `have` to `n` models, on every core."""
    out.mkdir(exist_ok=True)
    step = 1000
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_write, [(str(out), s, min(s + step, n)) for s in range(have, n, step)]))


def peak_rss_mib() -> float:
    """This process's peak RSS. /proc's VmHWM, not ru_maxrss: on Linux ru_maxrss survives exec, so a
    child would report its parent's peak if that was higher."""
    try:
        return int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) / 1024
    except (OSError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(zoo: str, out: str, workers: int) -> None:
    """Run one ingest and print its speed and peak memory."""
    from weightvae.ingest import IngestParams, ingest

    if workers == 0:  # baseline: the imports alone
        return print(round(peak_rss_mib(), 1))
    m = ingest(IngestParams(zoo_dir=zoo, workers=workers), out, log=lambda *_: None)
    size = sum(f.stat().st_size for f in Path(out).iterdir())
    print(json.dumps({"models": m["models"], "seconds": m["seconds"], "models_per_s": m["models_per_s"],
                      "peak_rss_mib": round(peak_rss_mib(), 1),
                      "workers_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
                      "output_mib": round(size / 2**20, 1)}))


def loader_speed(shards: str, seconds: float = 5.0) -> dict:
    from weightvae.data import ZooDataModule

    dm = ZooDataModule(shards, batch_size=64, seed=0)
    dm.setup("fit")
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        for batch in dm.train_dataloader():
            n += len(batch["weight"])
    return {"train_rows": len(dm.train_dataset), "batch_size": 64,
            "samples_per_s": round(n / (time.perf_counter() - t))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--loader-seconds", type=float, default=5.0, help="how long to time the DataModule loader")
    ap.add_argument("--child", nargs=3, metavar=("ZOO", "OUT", "WORKERS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], int(args.child[2]))
    me = [sys.executable, __file__]
    base = subprocess.run(me + ["--child", "-", "-", "0"], capture_output=True, text=True, check=True)
    result = {"cpus": os.cpu_count(), "import_only_rss_mib": float(base.stdout), "sizes": {}}
    with tempfile.TemporaryDirectory() as d:
        zoo, have = Path(d) / "zoo", 0
        for n in sorted(args.sizes):
            t = time.perf_counter()
            build(zoo, n, have)
            have = n
            entry = {"build_seconds": round(time.perf_counter() - t, 1)}
            for w in args.workers:
                out = Path(d) / f"shards-{n}-{w}"
                proc = subprocess.run(me + ["--child", str(zoo), str(out), str(w)], capture_output=True, text=True,
                                      check=True)
                entry[f"workers_{w}"] = json.loads(proc.stdout)
            if n == 10000 or n == max(args.sizes):
                entry["loader"] = loader_speed(str(out), args.loader_seconds)
            result["sizes"][str(n)] = entry
            print(json.dumps({str(n): entry}), file=sys.stderr)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
