"""Every model of the shards to its latent code: the encoder's guess, refined against its function.

The encoder's posterior mean starts each code; `refine_steps` of latent refinement
(`weightvae.refine`) then move it until the decoded network computes what the original computes on
probe inputs from the task's training set. A training network that auto-decoding fitted a code to (the
function codec's train stage, `VAE.fitted_codes`) starts there instead and takes `fitted_refine_steps`
(default 0: the fitted code is kept, unless the encoder's code matches the network better). Networks
weightvae cannot run (no built-in or batched architecture) keep the encoder's mean. The codes are computed
once here and shared by everything downstream: reconstruct decodes them (and samples around the training
split's), the probe stage reads properties off them.

Output (one Parquet file, replaced atomically): one row per model with its id, split, task,
architecture, layout, run, epoch, `latent` (flattened), `latent_encoder` (the encoder's code before
refinement, which evaluate scores as `vae_encoder`), and `behaviour_kl_encoder` /
`behaviour_kl` (on the probes, before and after refinement; null where the network cannot be run).
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from weightvae.io import write_json
from weightvae.latents import write_latents
from weightvae.params import INPUTS, add_inputs, load_section, require
from weightvae.progress import Progress
from weightvae.shards import SPLITS


@dataclass(frozen=True)
class EncodeParams:
    """`encode:` section of params.yaml."""

    splits: tuple[str, ...] = SPLITS  # reconstruct's KDE sampler needs train; probes need all three
    refine_steps: int = 200  # Adam steps on each code (0: the encoder's code alone)
    fitted_refine_steps: int | None = 0  # training networks with a code auto-decoding fitted: steps from there
    # (None: from the encoder's code, `refine_steps`, like the rest)
    refine_lr: float = 0.2  # first learning rate of the cosine schedule (chosen on val: benchmarks/refine_lr.py)
    probe_count: int | None = None  # the task's training inputs the function is matched on (None: all)
    probe_batch: int = 16  # probe inputs scored per step, visiting all of them in a seeded order
    batch_size: int = 256  # networks refined together (a code does not depend on which networks share its batch)
    seed: int = 0  # of the probe order

    def __post_init__(self) -> None:
        require(len(self.splits) > 0 and set(self.splits) <= set(SPLITS) and len(set(self.splits)) == len(self.splits),
                "encode.splits", list(self.splits), f"choose distinct splits from {list(SPLITS)}")
        require(self.refine_steps >= 0, "encode.refine_steps", self.refine_steps, "need >= 0")
        require(self.fitted_refine_steps is None or self.fitted_refine_steps >= 0, "encode.fitted_refine_steps",
                self.fitted_refine_steps, "need null (from the encoder's code) or >= 0")
        require(self.refine_lr > 0, "encode.refine_lr", self.refine_lr, "need > 0")
        require(self.probe_count is None or self.probe_count >= 1, "encode.probe_count", self.probe_count,
                "need null (every training input) or >= 1")
        require(self.probe_batch >= 1, "encode.probe_batch", self.probe_batch, "need >= 1")
        require(self.batch_size >= 1, "encode.batch_size", self.batch_size, "need >= 1")


def encode(p: EncodeParams, shards: str | Path, model_path: str | Path, out: str | Path) -> dict[str, Any]:
    """Write the latents of every model of `p.splits` to `out` (Parquet); returns the stage's metrics."""
    from weightvae.data import ZooDataModule, ZooDataset, rows_per_batch
    from weightvae.model import VAE
    from weightvae.refine import refine

    t0 = time.perf_counter()
    model = VAE.from_export(str(model_path))
    rows: list[dict[str, Any]] = []
    # a layout at a time: the chunk codec codes each network at its own length, never padded to the longest
    own = model.cfg.codec == "chunk" and len(model.layout_ids) > 1
    datasets = {(s, lid): ZooDataset(shards, s, normalize=model.normalize, layout_id=lid,
                                     max_len=None if own else model.cfg.max_len)
                for s in p.splits for lid in model.layout_ids}
    fitted = dict.fromkeys(p.splits, 0)  # networks started at their auto-decoded code, per split
    with Progress("encode", total=sum(len(d) for d in datasets.values()), unit="networks") as bar:
        for (split, _), ds in datasets.items():
            for batch in ZooDataModule.loader(ds, batch_size=rows_per_batch(p.batch_size, ds.max_len)):
                x, props = batch["weight"], batch["model_properties"]
                lids = model.batch_layout_ids(batch, len(x))
                keys = model.batch_function_keys(batch, lids)
                with torch.no_grad():
                    z0 = model.encode(batch).mode()
                ids = [pr["id"] for pr in props]
                if p.fitted_refine_steps is not None and all(i in model.fitted_codes for i in ids):
                    start = torch.stack([model.fitted_codes[i] for i in ids]).view_as(z0)  # training networks
                    steps = p.fitted_refine_steps
                else:
                    start, steps = None, p.refine_steps
                z, before, after = refine(model, z0, x, lids, keys, steps, p.refine_lr, p.probe_count,
                                          p.probe_batch, p.seed, start=start)
                fitted[split] += len(ids) if start is not None else 0
                for pr, zi, ei, b, a in zip(props, z, z0, before.tolist(), after.tolist(), strict=True):
                    rows.append({"id": pr["id"], "split": split, "task": pr["task"], "architecture": pr["architecture"],
                                 "layout_id": pr["layout_id"], "run_id": pr["run_id"], "epoch": pr["epoch"],
                                 "latent": zi.flatten().numpy().astype(np.float32),
                                 "latent_encoder": ei.flatten().numpy().astype(np.float32),
                                 "behaviour_kl_encoder": None if math.isnan(b) else b,
                                 "behaviour_kl": None if math.isnan(a) else a})
                bar.update(len(x))
    write_latents(out, rows)
    return _metrics(rows, fitted, model, p, time.perf_counter() - t0)


def _metrics(rows: list[dict[str, Any]], fitted: dict[str, int], model, p: EncodeParams,
             seconds: float) -> dict[str, Any]:
    sizes = {lid: model.latent_size(lid) for lid in model.layout_ids} or {"": model.latent_size()}
    out: dict[str, Any] = {"latent_size": sizes.popitem()[1] if len(set(sizes.values())) == 1 else sizes,
                           "refine_steps": p.refine_steps, "fitted_refine_steps": p.fitted_refine_steps,
                           "splits": {}}
    for split in p.splits:
        mine = [r for r in rows if r["split"] == split]
        ran = [r for r in mine if r["behaviour_kl"] is not None]
        s: dict[str, Any] = {"models": len(mine), "refined": len(ran) if p.refine_steps else 0,
                             "from_fitted_codes": fitted[split]}
        kept = sorted({f"{r['task']}/{r['architecture']}" for r in mine if r["behaviour_kl"] is None})
        if kept:
            s["unrefined_groups"] = kept  # weightvae cannot run them: they keep the encoder's code
        if ran:
            s["behaviour_kl_encoder_mean"] = float(np.mean([r["behaviour_kl_encoder"] for r in ran]))
            s["behaviour_kl_mean"] = float(np.mean([r["behaviour_kl"] for r in ran]))
        out["splits"][split] = s
    out["seconds"] = round(seconds, 1)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_inputs(parser, "params", "shards", "model")
    parser.add_argument("--out", default=INPUTS["latents"][0], help="latents table (default: %(default)s)")
    parser.add_argument("--metrics", default="metrics/encode.json", help="stage metrics (default: %(default)s)")


def run(args: argparse.Namespace) -> None:
    from weightvae.registry import register_params

    register_params(args.params)  # the user's architectures and tasks (`registry:`), before refinement runs them
    p = load_section(args.params, "encode", EncodeParams)
    m = encode(p, args.shards, args.model, args.out)
    write_json(args.metrics, m)
    parts = [f"{s} {v['models']}" + (f" (behaviour KL {v['behaviour_kl_encoder_mean']:.3f} -> "
                                       f"{v['behaviour_kl_mean']:.3f})" if "behaviour_kl_mean" in v else "")
             for s, v in m["splits"].items()]
    print(f"encode: {m['latent_size']} latent values per model; " + ", ".join(parts) + f" in {m['seconds']}s")
    kept = sorted({g for v in m["splits"].values() for g in v.get("unrefined_groups", [])})
    if kept and p.refine_steps:
        print(f"encode: {', '.join(kept)}: not refined, their architecture or task is not registered (registry: in "
              "params.yaml; train said which); these networks keep the encoder's code")
