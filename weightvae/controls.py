"""The controls a learned codec must beat: the same latent refinement, in subspaces where nothing was learned.

Refining a network's code against its own outputs (`weightvae.refine`) distils the network into almost any
subspace of a few hundred directions (Li et al. 2018, the intrinsic dimension of objective landscapes), so a
codec's refined codes prove nothing by themselves. Two decoders with nothing learned give the bar, at the
latent size of the run (`train.latent_dim`, or `auto` with `train.compression`) and with the encode stage's
refinement (steps, learning rate, probe inputs, seed):

- `pca_refined`: the span of the train split's top principal directions around its mean, whitened (the linear
  codec's untrained start); each network starts at its projection.
- `random_refined`: a seeded random orthonormal subspace around the train mean, each direction scaled by
  PCA's spectrum (the same sizes, no learned directions); each network starts at its projection.

They depend on the shards and those params alone, so a codec change does not rerun them. Output: one file per
control, `<out>/<name>.pt` = {"ids": the split's model ids, "weights": `[N, length]` their refined networks'
real (denormalised) flat weights, one `[n, length]` tensor per layout, in that order}, which evaluate scores
beside the codec's reconstructions.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from weightvae.io import atomic_path, write_json
from weightvae.params import add_inputs, load_section, require
from weightvae.records import CONTROLS


@dataclass(frozen=True)
class ControlsParams:
    """`controls:` section of params.yaml."""

    split: str = "test"  # the networks refined in each control (evaluate's split)
    seed: int = 0  # of the random subspace

    def __post_init__(self) -> None:
        require(self.split in ("val", "test"), "controls.split", self.split, "choose val or test")


def random_orthonormal(length: int, k: int, seed: int) -> torch.Tensor:
    """`[k, length]` orthonormal rows spanning a seeded random subspace (QR of a Gaussian matrix, float64)."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(length, k, generator=g, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).T  # the sign fix makes the basis a function of the draw alone


def linear_params(train_p, latent_dim: int):
    """The run's train params as a plain linear codec of `latent_dim` values (the template the controls' subspaces
    are written into): its normalisation and probes, none of its codec's own options."""
    from dataclasses import replace

    return replace(train_p, codec="linear", latent_dim=latent_dim, window=None, preset="small", tensor_scales=False,
                   scale_groups="tensor", function_code=0, encoder_probes=False)


def subspace_module(kind: str, train_x: torch.Tensor, latent_dim: int, template, seed: int):
    """A linear codec (`template`: a VAE module of `codec: linear` with its normalisation and `functional` set)
    whose decoder is the control's subspace and whose encoder is the projection onto it: `pca` (whitened PCA of
    the standardised train vectors `train_x` `[N, L]`) or `random` (a seeded orthonormal basis, PCA's scales)."""
    from weightvae.pca import whitened_pca

    centre, basis, scale = whitened_pca(train_x, latent_dim)
    if kind == "random":
        basis = random_orthonormal(train_x.shape[1], latent_dim, seed)
    net = template.net
    with torch.no_grad():
        net.to_latent.weight.zero_()
        net.to_latent.weight[:latent_dim] = (basis / scale[:, None]).float()
        net.to_latent.bias[:latent_dim] = (-(centre @ basis.T) / scale).float()
        net.to_latent.bias[latent_dim:] = -9.0
        net.from_latent.weight.copy_((basis.T * scale).float())
        net.from_latent.bias.copy_(centre.float())
    return template.eval()


def controls(shards: str | Path, out: str | Path, train_p, encode_p, p: ControlsParams,
             log=print) -> dict[str, Any]:
    """Refine every network of `p.split` in each control's subspace; write `<out>/<name>.pt`; returns metrics."""
    from weightvae.config import latent_size
    from weightvae.data import ZooDataset
    from weightvae.refine import refine
    from weightvae.train import build_module, functional_info

    t0 = time.perf_counter()
    layouts = json.loads((Path(shards) / "layouts.json").read_text())
    functional = functional_info(shards, layouts, log=log)
    k = latent_size(train_p, int(json.loads((Path(shards) / "manifest.json").read_text())["max_len"]))  # the run's
    linear = linear_params(train_p, k)
    metrics: dict[str, Any] = {"split": p.split, "latent_size": k,
                               "refine_steps": encode_p.refine_steps, "methods": {}}
    results: dict[str, dict[str, Any]] = {name: {"ids": [], "weights": []} for name in CONTROLS}
    kl: dict[str, list[tuple[float, float]]] = {name: [] for name in CONTROLS}
    for lid in sorted(layouts):
        keys = {k: v for k, v in functional.items() if k.endswith("/" + lid)}
        train_ds = ZooDataset(shards, "train", normalize=train_p.normalize, layout_id=lid)
        ds = ZooDataset(shards, p.split, normalize=train_p.normalize, layout_id=lid)
        if not len(ds) or not len(train_ds):
            continue
        train_x = torch.stack([train_ds.vector(i) for i in range(len(train_ds))])
        x = torch.stack([ds.vector(i) for i in range(len(ds))])
        props = [ds.properties(i) for i in range(len(ds))]
        row_keys = [f"{r['task']}/{lid}" for r in props]
        for name in CONTROLS:
            model = build_module(linear, ds.max_len, [lid], 1, keys)
            if train_p.normalize:
                model.set_normalization({lid: train_ds.normalization(lid)})
            model = subspace_module(name.split("_")[0], train_x, k, model, p.seed)
            with torch.no_grad():
                z0 = model.net.encode(x).mode()
            codes, before, after = [], [], []
            for i in range(0, len(x), encode_p.batch_size):  # a code never depends on its batch
                s = slice(i, i + encode_p.batch_size)
                z, b, a = refine(model, z0[s], x[s], [lid] * len(x[s]), row_keys[s], encode_p.refine_steps,
                                 encode_p.refine_lr, encode_p.probe_count, encode_p.probe_batch, encode_p.seed)
                codes.append(z)
                before += b.tolist()
                after += a.tolist()
            with torch.no_grad():
                w = model.denormalize(model.decode(torch.cat(codes)), [lid] * len(x))
            length = ds.layouts[lid].length
            results[name]["ids"] += [r["id"] for r in props]
            results[name]["weights"].append(w[:, :length])
            kl[name] += [(b, a) for b, a in zip(before, after, strict=True) if not math.isnan(a)]
    out = Path(out)
    with atomic_path(out, is_dir=True) as tmp:
        for name, r in results.items():  # weights: one `[n, length]` tensor per layout
            torch.save({"ids": r["ids"], "weights": r["weights"]}, tmp / f"{name}.pt")
    for name in CONTROLS:
        m: dict[str, Any] = {"models": len(results[name]["ids"]), "refined": len(kl[name])}
        if kl[name]:
            m["behaviour_kl_start_mean"] = sum(b for b, _ in kl[name]) / len(kl[name])
            m["behaviour_kl_mean"] = sum(a for _, a in kl[name]) / len(kl[name])
        metrics["methods"][name] = m
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    return metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_inputs(parser, "params", "shards")
    parser.add_argument("--out", default="model_data/controls", help="refined control networks (default: %(default)s)")
    parser.add_argument("--metrics", default="metrics/controls.json", help="stage metrics (default: %(default)s)")


def run(args: argparse.Namespace) -> None:
    from weightvae.encode import EncodeParams
    from weightvae.registry import register_params
    from weightvae.train import TrainParams

    register_params(args.params)  # the user's architectures and tasks (`registry:`), before refinement runs them
    p = load_section(args.params, "controls", ControlsParams)
    train_p = load_section(args.params, "train", TrainParams)
    encode_p = load_section(args.params, "encode", EncodeParams)
    m = controls(args.shards, args.out, train_p, encode_p, p)
    write_json(args.metrics, m)
    parts = [f"{name} KL {v.get('behaviour_kl_start_mean', math.nan):.3f} -> {v.get('behaviour_kl_mean', math.nan):.3f}"
             for name, v in m["methods"].items()]
    print(f"controls: {m['latent_size']} values, {m['refine_steps']} steps on the {p.split} split: "
          + ", ".join(parts) + f" in {m['seconds']}s")
