"""Reconstruct held-out networks through the VAE, and sample new ones.

Samples come from `sampler`: `kde` (default) draws latents from a kernel density estimate over
the training split's latents (`weightvae.prior`), `prior` from the VAE's N(0, I).

Outputs (one folder, replaced atomically):
    <out>/<split>/<id>.pt   reconstructions of each val/test model (posterior mean), zoo file schema
                            plus `source_id`
    <out>/samples/sample-<task>-<arch>-<layout>-<i>.pt   `n_samples` draws per (task, architecture,
                            layout), zoo file schema plus `sampler` and,
                            for `kde`, `anchor_id` (the training model whose kernel it came from)
    <out>/.../<name>.safetensors   each of those networks again, for code that is not weightvae: its
                            tensors, and its properties as string metadata (`weightvae.tensorfile`)
    <out>/samples/pool.json  for `kde`: {"<task>/<arch>/<layout>": ids of the training models the
                            kernels sit on}, the population evaluate compares samples with
    <out>/latents.parquet   one row per reconstructed model: id, split, task, run_id, latent
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from weightvae import FORMAT_VERSION, tensorfile
from weightvae.io import atomic_path, write_json
from weightvae.params import load_section, require
from weightvae.progress import Progress
from weightvae.records import POOL_FILE, file_name, pool_key

SAMPLERS = ("kde", "prior")


@dataclass(frozen=True)
class ReconstructParams:
    """`reconstruct:` section of params.yaml."""

    splits: tuple[str, ...] = ("val", "test")
    n_samples: int = 64  # sampled networks per (task, architecture, layout)
    sampler: str = "kde"  # kde | prior
    kde_bandwidth: float = 0.5  # kernel std / each latent dimension's spread over the group's training models
    kde_top: float = 0.3  # kernels on the best fraction of training models by their recorded train_acc
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        require(len(self.splits) > 0 and set(self.splits) <= {"train", "val", "test"}, "reconstruct.splits",
                list(self.splits), "choose from train, val, test")
        require(self.n_samples >= 0, "reconstruct.n_samples", self.n_samples, "need >= 0")
        require(self.sampler in SAMPLERS, "reconstruct.sampler", self.sampler, f"choose one of {list(SAMPLERS)}")
        require(self.kde_bandwidth >= 0, "reconstruct.kde_bandwidth", self.kde_bandwidth, "need >= 0")
        require(0 < self.kde_top <= 1, "reconstruct.kde_top", self.kde_top, "need a fraction in (0, 1]")
        require(self.batch_size >= 1, "reconstruct.batch_size", self.batch_size, "need >= 1")


def _save(rec: dict[str, Any], folder: Path, model_id: str) -> None:
    """A network as `<id>.pt` (zoo file schema) and `<id>.safetensors` (same tensors and properties)."""
    torch.save(rec, folder / file_name(model_id))
    (folder / file_name(model_id, ".safetensors")).write_bytes(tensorfile.record_bytes(rec))


def _record(state_dict: dict[str, torch.Tensor], props: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "state_dict": state_dict,
        "model_properties": {
            "format_version": FORMAT_VERSION,
            "run_id": props["run_id"],
            "task": props["task"],
            "architecture": {"name": props["architecture"], "kwargs": props["arch_kwargs"]},
            "epoch": props.get("epoch"),
            "layout_id": props["layout_id"],
            **extra,
        },
    }


@torch.no_grad()
def reconstruct(p: ReconstructParams, shards: str | Path, model_path: str | Path, out: str | Path) -> dict[str, int]:
    """Write reconstructions, latents and sampled networks; returns counts."""
    from weightvae.data import ZooDataset
    from weightvae.model import VAE

    model = VAE.from_export(str(model_path))
    counts: dict[str, int] = {}
    latents = []
    with atomic_path(out, is_dir=True) as tmp, Progress("reconstruct", unit="networks") as bar:
        for split in p.splits:
            ds = ZooDataset(shards, split, normalize=model.normalize, max_len=model.cfg.max_len)
            bar.add_total(len(ds))
            (tmp / split).mkdir()
            for z, props in _encoded(model, ds, p.batch_size):
                recon = model.decode(z)
                sds = model.reconstruct_to_model_weights(recon, props)
                for sd, pr, zi in zip(sds, props, z):
                    _save(_record(sd, pr, source_id=pr["id"], split=split), tmp / split, pr["id"])
                    latents.append({"id": pr["id"], "split": split, "task": pr["task"],
                                    "run_id": pr["run_id"], "latent": zi.flatten().tolist()})
                bar.update(len(sds))
            counts[split] = len(ds)
        (tmp / "samples").mkdir()
        counts["samples"] = _write_samples(p, model, shards, tmp / "samples", bar)
        pd.DataFrame(latents).to_parquet(tmp / "latents.parquet", index=False)
    return counts


def _encoded(model, ds, batch_size: int):
    """(posterior means, model properties) per batch of `ds`, in its order."""
    from weightvae.data import ZooDataModule

    for batch in ZooDataModule.loader(ds, batch_size=batch_size, shuffle=False):
        yield model.encode(batch).mode(), batch["model_properties"]


def _write_samples(p: ReconstructParams, model, shards: str | Path, out: Path, bar: Progress) -> int:
    """`n_samples` networks per (task, architecture, layout) of the training split, from `p.sampler`.

    Grouping by task too matters: one architecture trained on two tasks shares a layout, and a
    sample must come from (and be scored against) the models of its own task.
    """
    from weightvae.data import ZooDataset

    train = ZooDataset(shards, "train", normalize=model.normalize, max_len=model.cfg.max_len)
    if p.n_samples == 0:
        return 0
    encoded: dict[tuple[str, str, str], list[tuple[torch.Tensor, dict[str, Any]]]] = {}
    if p.sampler == "kde":
        for z, props in _encoded(model, train, p.batch_size):
            for zi, pr in zip(z, props):
                encoded.setdefault(_group(pr), []).append((zi, pr))
    gen = torch.Generator().manual_seed(p.seed)
    n = 0
    pools: dict[str, list[str]] = {}
    for (task, arch, layout_id), props in _one_row_per_group(train).items():
        bar.add_total(p.n_samples)
        if p.sampler == "kde":
            z, anchors, pool = _kde_latents(p, encoded[task, arch, layout_id], gen)
            pools[pool_key(task, arch, layout_id)] = pool
            vecs = model.decode(z.to(model.device))
        else:
            vecs, anchors = model.sample(p.n_samples, generator=gen), [None] * p.n_samples
        sds = model.reconstruct_to_model_weights(vecs, [props] * p.n_samples)
        for i, (sd, anchor) in enumerate(zip(sds, anchors)):
            sid = f"sample-{task}-{arch}-{layout_id[:8]}-{i:04d}"
            extra = {"sampler": p.sampler, **({"anchor_id": anchor} if anchor else {})}
            _save(_record(sd, {**props, "run_id": sid, "epoch": None}, source_id=None, split="samples", **extra),
                  out, sid)
            n += 1
        bar.update(p.n_samples)
    if pools:
        write_json(out / POOL_FILE, pools)
    return n


def _kde_latents(p: ReconstructParams, encoded: list[tuple[torch.Tensor, dict[str, Any]]],
                 gen: torch.Generator) -> tuple[torch.Tensor, list[str], list[str]]:
    """`n_samples` latents from a KDE over one group's training latents, their kernels' model ids,
    and the ids of every model a kernel sits on (the pool)."""
    from weightvae.prior import LatentKDE, top_fraction

    rows = [pr for _, pr in encoded]
    name = f"{rows[0]['task']}/{rows[0]['architecture']}"
    acc = np.array([np.nan if r.get("train_acc") is None else r["train_acc"] for r in rows], dtype=float)
    if p.kde_top < 1 and np.isnan(acc).all():
        print(f"reconstruct: {name} records no train_acc; kde_top={p.kde_top} ignored, kernels on all its "
              "training models")
    if len(rows) == 1 and p.kde_bandwidth > 0:
        print(f"reconstruct: {name} has one training model, so no spread to scale the KDE's noise; "
              "its samples are reconstructions of that model")
    kde = LatentKDE(torch.stack([z for z, _ in encoded]), top_fraction(acc, p.kde_top), p.kde_bandwidth)
    z, idx = kde.sample(p.n_samples, generator=gen)
    return z, [rows[i]["id"] for i in idx], sorted(rows[i]["id"] for i in kde.pool)


def _group(props: dict[str, Any]) -> tuple[str, str, str]:
    return props["task"], props["architecture"], props["layout_id"]


def _one_row_per_group(ds) -> dict[tuple[str, str, str], dict[str, Any]]:
    """A representative training row per (task, architecture, layout): its layout and buffers."""
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for i in range(len(ds)):
        props = ds.properties(i)
        rows.setdefault(_group(props), props)
    return dict(sorted(rows.items()))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    parser.add_argument("--shards", default="model_data/shards", help="ingest output (default: %(default)s)")
    parser.add_argument("--model", default="model_data/models/vae.ckpt", help="trained VAE (default: %(default)s)")
    parser.add_argument("--out", default="model_data/reconstructions", help="output folder (default: %(default)s)")


def run(args: argparse.Namespace) -> None:
    p = load_section(args.params, "reconstruct", ReconstructParams)
    counts = reconstruct(p, args.shards, args.model, args.out)
    print("reconstruct: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
