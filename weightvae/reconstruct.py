"""Reconstruct held-out networks through the VAE, and sample new ones from its prior.

Outputs (one folder, replaced atomically):
    <out>/<split>/<id>.pt   reconstructions of each val/test model (posterior mean), zoo file schema
                            plus `source_id`
    <out>/samples/<arch>-<i>.pt   `n_samples` prior draws per layout, zoo file schema
    <out>/latents.parquet   one row per reconstructed model: id, split, task, run_id, latent
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from weightvae import FORMAT_VERSION
from weightvae.io import atomic_path
from weightvae.params import load_section, require


@dataclass(frozen=True)
class ReconstructParams:
    """`reconstruct:` section of params.yaml."""

    splits: tuple[str, ...] = ("val", "test")
    n_samples: int = 64  # prior samples per architecture (layout)
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        require(len(self.splits) > 0 and set(self.splits) <= {"train", "val", "test"}, "reconstruct.splits",
                list(self.splits), "choose from train, val, test")
        require(self.n_samples >= 0, "reconstruct.n_samples", self.n_samples, "need >= 0")
        require(self.batch_size >= 1, "reconstruct.batch_size", self.batch_size, "need >= 1")


def file_name(model_id: str) -> str:
    """A model id as a file name (ids may hold '/')."""
    return model_id.replace("/", "__") + ".pt"


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
    """Write reconstructions, latents and prior samples; returns counts."""
    from weightvae.data import ZooDataModule, ZooDataset
    from weightvae.model import VAE

    model = VAE.from_export(str(model_path))
    counts: dict[str, int] = {}
    latents = []
    with atomic_path(out, is_dir=True) as tmp:
        for split in p.splits:
            ds = ZooDataset(shards, split, normalize=model.normalize, max_len=model.cfg.max_len)
            (tmp / split).mkdir()
            loader = ZooDataModule.loader(ds, batch_size=p.batch_size, shuffle=False)
            for batch in loader:
                z = model.encode(batch).mode()
                recon = model.decode(z)
                sds = model.reconstruct_to_model_weights(recon, batch["model_properties"])
                for sd, props, zi in zip(sds, batch["model_properties"], z):
                    rec = _record(sd, props, source_id=props["id"], split=split)
                    torch.save(rec, tmp / split / file_name(props["id"]))
                    latents.append({"id": props["id"], "split": split, "task": props["task"],
                                    "run_id": props["run_id"], "latent": zi.flatten().tolist()})
            counts[split] = len(ds)
        (tmp / "samples").mkdir()
        train = ZooDataset(shards, "train", normalize=False)
        gen = torch.Generator().manual_seed(p.seed)
        n = 0
        for layout_id, props in _one_row_per_layout(train).items():
            vecs = model.sample(p.n_samples, generator=gen)
            sds = model.reconstruct_to_model_weights(vecs, [props] * p.n_samples)
            for i, sd in enumerate(sds):
                sid = f"sample-{props['architecture']}-{layout_id[:8]}-{i:04d}"
                rec = _record(sd, {**props, "run_id": sid, "epoch": None}, source_id=None, split="samples")
                torch.save(rec, tmp / "samples" / file_name(sid))
                n += 1
        counts["samples"] = n
        pd.DataFrame(latents).to_parquet(tmp / "latents.parquet", index=False)
    return counts


def _one_row_per_layout(ds) -> dict[str, dict[str, Any]]:
    """A representative training row per layout (its task, architecture, layout and buffers)."""
    rows: dict[str, dict[str, Any]] = {}
    for i in range(len(ds)):
        props = ds.properties(i)
        rows.setdefault(props["layout_id"], props)
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
