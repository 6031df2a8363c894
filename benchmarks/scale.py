"""Networks of any size: ingest, chunk-codec training and reconstruction on MLPs of ~1.7k, 17k, 170k and
1.7M weights, in one run.

    python benchmarks/scale.py [--models 24] [--steps 100] [--batch 8] [--window 24] [--chunk-size 64]

Each size runs in a fresh child process (so VmHWM is that size's own peak RSS):
1. `--models` bare state_dicts of the built-in `mlp` at that width (`hidden` = 23, 227, 2,267, 22,667:
   75 * hidden + 10 weights), one run each, random weights (speed and memory do not depend on the values),
   written as `.pt` files and ingested (`weightvae.ingest`, 1 worker, 4 files in flight): `ingest_models_per_s`.
2. The train stage's chunk-codec module (`train.codec: chunk`, started at chunk PCA of the train split), then
   `--steps` optimiser steps (`VAE.loss_terms` + backward + AdamW, after 3 untimed) on windows of `--window`
   chunks read by `ZooDataset(window=...)` through a DataLoader, data loading timed:
   `train_weights_per_s` = the real weights (padding not counted) in the windows of those steps / seconds.
3. Every model encoded, decoded, turned back into a state_dict and written as safetensors (what the reconstruct
   stage does per network), 4 at a time or fewer (`weightvae.data.rows_per_batch`: at most 1 M weights a
   batch, as the stages batch them): `reconstruct_weights_per_s`.
`peak_rss_mib` is the child's VmHWM; `data_mib` the float32 size of all its models' weights (the data itself:
the shards' memory-mapped pages count in RSS once read), so `peak_rss_mib - data_mib` is what the rest costs.
Training's data is dropped before step 3, as the stages run in processes of their own. `anon_rss_mib_after`:
the anonymous part of RSS (not file pages) at the end of training and of step 3. Goal (issue 13): `train_weights_per_s` within 2x across the sizes, and peak RSS flat
apart from the data. Prints JSON.
"""

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HIDDEN = {"1.7k": 23, "17k": 227, "170k": 2267, "1.7M": 22667}


def peak_rss_mib(key: str = "VmHWM") -> float:
    """This process's peak RSS (`VmHWM`), or another line of /proc/self/status in MiB (`RssAnon`: memory that is
    not a file's pages; memory-mapped shard pages count in RSS as `RssFile`)."""
    return int(Path("/proc/self/status").read_text().split(f"{key}:")[1].split()[0]) / 1024


def child(hidden: int, models: int, steps: int, batch: int, window: int, chunk_size: int) -> dict:
    import lightning as L
    import torch
    from safetensors.torch import save_file

    from weightvae.archs import build_model
    from weightvae.data import ZooDataModule, ZooDataset, rows_per_batch
    from weightvae.ingest import IngestParams, ingest
    from weightvae.train import TrainParams, initial_module, tensor_sizes

    L.seed_everything(0, verbose=False)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "zoo").mkdir()
        weights = 0
        for i in range(models):
            sd = build_model("mlp", {"hidden": hidden}).state_dict()
            weights = sum(v.numel() for v in sd.values())
            torch.save(sd, tmp / "zoo" / f"run{i:03d}.pt")
        rss = {"write_zoo": peak_rss_mib()}
        t0 = time.perf_counter()
        # chunk_size: files in flight (each held whole while it is flattened), what bounds ingest's memory
        ingest(IngestParams(zoo_dir=str(tmp / "zoo"), workers=1, chunk_size=4), tmp / "shards", log=lambda *_: None)
        ingest_s = time.perf_counter() - t0
        rss["ingest"] = peak_rss_mib()

        p = TrainParams(codec="chunk", chunk_size=chunk_size, chunk_latent=chunk_size // 4, window=window,
                        behaviour_weight=0.0, batch_size=batch, accelerator="cpu")
        shards = tmp / "shards"
        layouts = json.loads((shards / "layouts.json").read_text())
        train_ds = ZooDataset(shards, "train", window=window, chunk_size=chunk_size)
        model = initial_module(p, train_ds, sorted(layouts), 4, None, tensor_sizes(layouts, p))
        rss["train_start"] = peak_rss_mib()
        opt = model.configure_optimizers()
        loader = ZooDataModule.loader(train_ds, batch, shuffle=True)

        def batches():
            while True:
                yield from loader

        it, trained = batches(), 0
        mask = model.net.chunking.mask
        for i in range(3 + steps):
            if i == 3:
                t0 = time.perf_counter()
            b = next(it)
            trained += int(mask[b["chunk_ids"]].sum()) if i >= 3 else 0  # real weights, padding not counted
            loss = model.loss_terms(b)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
        train_s = time.perf_counter() - t0
        rss["train"] = peak_rss_mib()
        anon = {"train": peak_rss_mib("RssAnon")}
        # reconstruct runs in a process of its own in the pipeline: drop training's data (its memory map of the
        # train split would otherwise be counted twice: each mapping of a page counts in RSS)
        del it, loader, train_ds, opt, b, loss
        gc.collect()

        model.eval()
        everything = [ZooDataset(shards, s) for s in ("train", "val", "test")]
        t0, n = time.perf_counter(), 0
        with torch.no_grad():
            for ds in everything:
                for b in ZooDataModule.loader(ds, rows_per_batch(4, ds.max_len)):
                    sds = model.reconstruct_to_model_weights(model.decode(model.encode(b).mean),
                                                             b["model_properties"])
                    for sd, props in zip(sds, b["model_properties"], strict=True):
                        save_file(sd, str(tmp / f"{props['id'].replace('/', '_')}.safetensors"))
                        n += 1
        reconstruct_s = time.perf_counter() - t0
        anon["reconstruct"] = peak_rss_mib("RssAnon")
    return {"weights": weights, "hidden": hidden, "models": models,
            "ingest_models_per_s": round(models / ingest_s, 2),
            "train_weights_per_s": round(trained / train_s),
            "reconstruct_weights_per_s": round(n * weights / reconstruct_s),
            "latent_values": int(model.net.latent_shape[0]),
            "compression": round(weights / model.net.latent_shape[0], 3),
            "peak_rss_mib": round(peak_rss_mib(), 1),
            "peak_rss_mib_after": {k: round(v, 1) for k, v in rss.items()},
            "anon_rss_mib_after": {k: round(v, 1) for k, v in anon.items()},
            "data_mib": round(models * weights * 4 / 2**20, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=24)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--window", type=int, default=24, help="chunks; 24 fit in the smallest model's 29")
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--sizes", default=",".join(HIDDEN), help="comma-separated, of " + ", ".join(HIDDEN))
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        print(json.dumps(child(a.child, a.models, a.steps, a.batch, a.window, a.chunk_size)))
        return
    rows = {}
    for name in a.sizes.split(","):
        cmd = [sys.executable, __file__, "--child", str(HIDDEN[name]), "--models", str(a.models), "--steps",
               str(a.steps), "--batch", str(a.batch), "--window", str(a.window), "--chunk-size", str(a.chunk_size)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows[name] = json.loads(out.stdout.strip().splitlines()[-1])
    speeds = [r["train_weights_per_s"] for r in rows.values()]
    extra = [r["peak_rss_mib"] - r["data_mib"] for r in rows.values()]
    print(json.dumps({"sizes": rows, "train_speed_max_over_min": round(max(speeds) / min(speeds), 3),
                      "rss_minus_data_mib": [round(e, 1) for e in extra],
                      "config": {"models": a.models, "steps": a.steps, "batch": a.batch, "window": a.window,
                                 "chunk_size": a.chunk_size, "chunk_latent": a.chunk_size // 4}}, indent=1))


if __name__ == "__main__":
    main()
