"""Decode held-out networks from their latent codes, and sample new ones.

The codes come from the encode stage (`weightvae.encode`: the encoder's mean, refined against each
network's function). Samples come from `sampler`: `flow` (default) from the latent generator
(`weightvae.generator`, prompted as `generation`'s `flow`: accuracies drawn from the zoo's final runs, at
`generator.temperature`), `kde` from a kernel density estimate over the training split's codes
(`weightvae.prior`), `prior` from the VAE's N(0, I).

Outputs (one folder, replaced atomically):
    <out>/<split>/<id>.pt   each val/test model decoded from its code, zoo file schema plus `source_id`
    <out>/encoder/<split>/<id>.pt   the same from the encoder's code alone, no refinement (`vae_encoder`)
    <out>/samples/sample-<task>-<arch>-<layout>-<i>.pt   `n_samples` draws per (task, architecture,
                            layout), zoo file schema plus `sampler` and,
                            for `kde`, `anchor_id` (the training model whose kernel it came from)
    <out>/.../<name>.safetensors   each of those networks again, for code that is not weightvae: its
                            tensors, and its properties as string metadata (`weightvae.tensorfile`)
    <out>/samples/pool.json  for `kde`: {"<task>/<arch>/<layout>": ids of the training models the
                            kernels sit on}, the population evaluate compares samples with
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from weightvae.io import atomic_path, write_json
from weightvae.params import INPUTS, StageError, add_inputs, load_section, require
from weightvae.progress import Progress
from weightvae.records import POOL_FILE, pool_key, shard_record
from weightvae.tensorfile import save_network

SAMPLERS = ("flow", "kde", "prior")


@dataclass(frozen=True)
class ReconstructParams:
    """`reconstruct:` section of params.yaml."""

    splits: tuple[str, ...] = ("val", "test")
    n_samples: int = 64  # sampled networks per (task, architecture, layout)
    sampler: str = "flow"  # flow (the generator stage's model) | kde | prior
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


class ReconstructError(StageError):
    """Inputs reconstruct cannot use; the message names the file or key and what to do."""


@torch.no_grad()
def reconstruct(p: ReconstructParams, shards: str | Path, model_path: str | Path, latents: str | Path,
                out: str | Path, generator: str | Path | None = None, gen_p=None) -> dict[str, int]:
    """Decode the encode stage's latents of `p.splits` into networks, and sample new ones; returns counts.
    `generator`, `gen_p`: the latent generator and its params (`GeneratorParams`), for `sampler: flow`."""
    from weightvae.data import rows_per_batch, split_properties
    from weightvae.latents import read_latents
    from weightvae.model import VAE

    model = VAE.from_export(str(model_path))
    counts: dict[str, int] = {}
    with atomic_path(out, is_dir=True) as tmp, Progress("reconstruct", unit="networks") as bar:
        for split in p.splits:
            props = split_properties(shards, split)
            counts[split] = 0
            for column, folder in (("latent", tmp / split), ("latent_encoder", tmp / "encoder" / split)):
                folder.mkdir(parents=True)
                for lid in sorted({r["layout_id"] for r in props.values()}):  # codes of one layout decode together
                    rows, z = read_latents(latents, split, lid, column)
                    bar.add_total(len(rows))
                    size = rows_per_batch(p.batch_size, model.cfg.max_len)
                    for start in range(0, len(rows), size):
                        batch = [props[r["id"]] for r in rows[start:start + size]]
                        vecs = model.decode(z[start:start + size], [lid] * len(batch))
                        for sd, pr in zip(model.reconstruct_to_model_weights(vecs, batch), batch, strict=True):
                            save_network(shard_record(sd, pr, source_id=pr["id"], split=split), folder, pr["id"])
                        bar.update(len(batch))
                    counts[split] += len(rows) if column == "latent" else 0
            if props and not counts[split]:  # an empty split (a small zoo, ingest's line) has nothing to decode
                raise ReconstructError(f"{latents}: no latents of the {split!r} split; add {split!r} to encode.splits "
                                       "(or remove it from reconstruct.splits) and rerun encode")
        (tmp / "samples").mkdir()
        counts["samples"] = _write_samples(p, model, shards, latents, tmp / "samples", bar, generator, gen_p)
    return counts


def _write_samples(p: ReconstructParams, model, shards: str | Path, latents: str | Path, out: Path,
                   bar: Progress, generator: str | Path | None = None, gen_p=None) -> int:
    """`n_samples` networks per (task, architecture, layout) of the training split, from `p.sampler`.

    Grouping by task too matters: one architecture trained on two tasks shares a layout, and a
    sample must come from (and be scored against) the models of its own task.
    """
    from weightvae.data import rows_per_batch, split_properties
    from weightvae.latents import read_latents

    if p.n_samples == 0:
        return 0
    props = split_properties(shards, "train")
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}  # a representative row each: its layout and buffers
    for r in props.values():
        groups.setdefault(_group(r), r)
    encoded: dict[tuple[str, str, str], list[tuple[torch.Tensor, dict[str, Any]]]] = {}
    if p.sampler == "kde":
        for lid in sorted({r["layout_id"] for r in props.values()}):
            rows, z = read_latents(latents, "train", lid)
            for zi, r in zip(z, rows, strict=True):
                encoded.setdefault(_group(props[r["id"]]), []).append((zi, props[r["id"]]))
        if not encoded:
            raise ReconstructError(f"{latents}: no latents of the training split, which the kde sampler draws "
                                   "around; add 'train' to encode.splits or set reconstruct.sampler: prior")
    if p.sampler == "flow":
        from weightvae.generator import GeneratorParams, LatentGenerator, zoo_prompts

        if generator is None:
            raise ReconstructError("reconstruct.sampler: flow needs the generator stage's model (--generator)")
        flow = LatentGenerator.load(generator)
        gen_p = gen_p if gen_p is not None else GeneratorParams()
        table = pd.read_parquet(Path(shards) / "models.parquet")
    gen = torch.Generator().manual_seed(p.seed)
    n = 0
    pools: dict[str, list[str]] = {}
    size = rows_per_batch(p.batch_size, model.cfg.max_len)
    for (task, arch, layout_id), group_props in sorted(groups.items()):
        bar.add_total(p.n_samples)
        if p.sampler == "kde":
            z, anchors, pool = _kde_latents(p, encoded[task, arch, layout_id], gen)
            pools[pool_key(task, arch, layout_id)] = pool
        elif p.sampler == "flow":
            from weightvae.generator import group_name

            train = table[(table.split == "train") & (table.task == task) & (table.architecture == arch)
                          & (table.layout_id == layout_id)]
            prompts = zoo_prompts(train, p.n_samples, gen)
            z = flow.sample(group_name(task, arch, layout_id), p.n_samples, prompts, gen_p.guidance,
                            gen_p.sample_steps, gen, gen_p.temperature)
            anchors = [None] * p.n_samples
        else:
            z, anchors = model.prior_latents(p.n_samples, gen, layout_id), [None] * p.n_samples
        for start in range(0, p.n_samples, size):  # decoded a batch at a time: the codes were drawn at once
            vecs = model.decode(z[start:start + size].to(model.device), [layout_id] * len(z[start:start + size]))
            sds = model.reconstruct_to_model_weights(vecs, [group_props] * len(vecs))
            for i, (sd, anchor) in enumerate(zip(sds, anchors[start:start + size]), start):
                sid = f"sample-{task}-{arch}-{layout_id[:8]}-{i:04d}"
                extra = {"sampler": p.sampler, **({"anchor_id": anchor} if anchor else {})}
                rec = shard_record(sd, {**group_props, "run_id": sid, "epoch": None}, source_id=None, split="samples",
                                   **extra)
                save_network(rec, out, sid)
                n += 1
            bar.update(len(sds))
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_inputs(parser, "params", "shards", "model", "latents", "generator")
    parser.add_argument("--out", default=INPUTS["recon"][0], help="output folder (default: %(default)s)")


def run(args: argparse.Namespace) -> None:
    from weightvae.registry import register_params

    register_params(args.params)  # the user's architectures and tasks (`registry:`)
    from weightvae.generator import GeneratorParams

    p = load_section(args.params, "reconstruct", ReconstructParams)
    gen_p = load_section(args.params, "generator", GeneratorParams)
    counts = reconstruct(p, args.shards, args.model, args.latents, args.out, args.generator, gen_p)  # errors: one line
    print("reconstruct: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
