"""A generative model over the latent codes: flow matching, conditioned on the group and a target accuracy.

The codec (`weightvae.model`) gives every network a short code that decodes into a network computing what the
original computed. This module learns the distribution of the training split's codes, so that new codes, decoded,
are new networks: a velocity field `v(z_t, t, group, accuracy)` (an MLP with a time embedding, LayerNorm + GELU
residual blocks, a zero-initialised output) trained by rectified flow matching (Lipman et al. 2023, Liu et al.
2023) from N(0, I) to the standardised codes, with an exponential moving average of its weights for sampling.

Conditions: the (task, architecture, layout) group, always given; and the network's accuracy (the zoo's recorded
`test_acc`), dropped at random in training (`cond_dropout`) so that one model also samples without it and
classifier-free guidance (`guidance`) can sharpen the prompt. Sampling integrates the ODE with `sample_steps`
Euler steps from seeded noise. A prompted network is the best of `select_from` draws (`prompted_codes`): the
flow's own draws miss their prompt by 0.05 on average, their decoded networks' accuracy on the task's training
inputs tells which draw hits it.

The stage `generator` trains it on the training split's codes (`model_data/latents.parquet`: the codes
auto-decoding fitted, `encode.fitted_refine_steps`) and exports it
(`LatentGenerator.export`: plain tensors and lists, loadable with `torch.load(weights_only=True)`).
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from weightvae import FORMAT_VERSION
from weightvae.io import atomic_path, write_json
from weightvae.params import INPUTS, StageError, add_inputs, load_section, require


@dataclass(frozen=True)
class GeneratorParams:
    """`generator:` section of params.yaml."""

    hidden: int = 384  # width of the velocity network
    depth: int = 3  # residual blocks
    steps: int = 3000  # optimiser steps
    batch_size: int = 128
    learning_rate: float = 1e-3  # AdamW, 5 % warm-up then cosine to 0
    weight_decay: float = 0.0
    ema: float = 0.999  # decay of the moving average of the weights that samples
    cond_dropout: float = 0.1  # share of training steps' rows whose accuracy is hidden (unconditional model)
    accuracy_noise: float = 0.01  # std of Gaussian noise on the accuracy condition in training, so that an
    # accuracy is never the key of one training network (a prompt would then recall it)
    sample_steps: int = 64  # Euler steps from noise to a code
    guidance: float = 2.0  # classifier-free guidance scale on the accuracy (1: none)
    temperature: float = 1.5  # std of the noise a draw starts from when no accuracy is asked for (its accuracy
    # drawn from the zoo's final runs): more spreads the networks further from the training ones (1: the flow's own)
    prompt_temperature: float = 1.0  # the same when the user asks for an accuracy: 1 hits the prompt closest
    select_from: int = 16  # an asked-for accuracy: codes drawn per network; kept is the one whose network's accuracy
    # on the task's training inputs is nearest the prompt (`prompted_codes`; 1: the flow's first draw)
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("hidden", "depth", "steps", "batch_size", "sample_steps", "select_from"):
            require(getattr(self, key) >= 1, f"generator.{key}", getattr(self, key), "need >= 1")
        require(self.learning_rate > 0, "generator.learning_rate", self.learning_rate, "need > 0")
        require(0 <= self.ema < 1, "generator.ema", self.ema, "need a decay in [0, 1)")
        require(0 <= self.cond_dropout < 1, "generator.cond_dropout", self.cond_dropout, "need a share in [0, 1)")
        require(self.accuracy_noise >= 0, "generator.accuracy_noise", self.accuracy_noise, "need >= 0")
        for key in ("temperature", "prompt_temperature"):
            require(getattr(self, key) > 0, f"generator.{key}", getattr(self, key), "need > 0")
        require(self.guidance >= 0, "generator.guidance", self.guidance, "need >= 0 (1: no guidance)")


class GeneratorError(StageError):
    """A request the generator cannot serve, or inputs it cannot train on; the message says what to do."""


def time_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal features `[B, dim]` of times `t` `[B]` in [0, 1]."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, dtype=t.dtype, device=t.device) / half)
    angles = 1000.0 * t[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class VelocityNet(nn.Module):
    """`v(z_t, t, group, accuracy)`: the flow's velocity field over standardised codes `[B, dim]`."""

    def __init__(self, dim: int, groups: int, hidden: int = 512, depth: int = 4, time_dim: int = 64):
        super().__init__()
        self.time_dim = time_dim
        self.inp = nn.Linear(dim, hidden)
        self.time = nn.Sequential(nn.Linear(time_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.group = nn.Embedding(groups, hidden)
        self.accuracy = nn.Sequential(nn.Linear(time_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.no_accuracy = nn.Parameter(torch.zeros(hidden))  # the condition when the accuracy is not given
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, 2 * hidden), nn.GELU(),
                                                  nn.Linear(2 * hidden, hidden)) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, dim))
        nn.init.zeros_(self.out[1].weight)
        nn.init.zeros_(self.out[1].bias)

    def forward(self, z: Tensor, t: Tensor, group: Tensor, accuracy: Tensor, given: Tensor) -> Tensor:
        """`accuracy` `[B]` in [0, 1]; `given` `[B]` bool: rows where it is a condition (else the null one)."""
        acc = self.accuracy(time_embedding(accuracy, self.time_dim))
        acc = torch.where(given[:, None], acc, self.no_accuracy.expand_as(acc))
        h = self.inp(z) + self.time(time_embedding(t, self.time_dim)) + self.group(group) + acc
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


class LatentGenerator(nn.Module):
    """The trained velocity field (its EMA weights) with what sampling needs: the codes' standardisation, the
    groups' names and the range of accuracies each group was trained on."""

    def __init__(self, dim: int, groups: Sequence[str], hidden: int, depth: int,
                 accuracy_range: dict[str, tuple[float, float]] | None = None):
        super().__init__()
        self.dim, self.groups = dim, list(groups)
        self.hidden, self.depth = hidden, depth
        self.accuracy_range = dict(accuracy_range or {})
        self.net = VelocityNet(dim, len(self.groups), hidden, depth)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def group_index(self, group: str) -> int:
        if group not in self.groups:
            raise GeneratorError(f"group {group!r} is not one the generator was trained on; choose one of "
                                 f"{self.groups} (task/architecture/layout)")
        return self.groups.index(group)

    @torch.no_grad()
    def sample(self, group: str, n: int, accuracy: float | Tensor | None = None, guidance: float = 1.0,
               steps: int = 64, generator: torch.Generator | None = None, temperature: float = 1.0) -> Tensor:
        """`n` codes `[n, dim]` of `group`, prompted with `accuracy` (a value or `[n]` values; None: unprompted),
        by `steps` Euler steps of the flow from seeded N(0, I) noise; `guidance` > 1 extrapolates away from the
        unprompted velocity (classifier-free guidance); `temperature` scales the starting noise."""
        g = torch.full((n,), self.group_index(group), dtype=torch.long)
        given = torch.full((n,), accuracy is not None)
        acc = torch.zeros(n) if accuracy is None else torch.as_tensor(accuracy, dtype=torch.float32).expand(n)
        z = temperature * torch.randn(n, self.dim, generator=generator)
        dt = 1.0 / steps
        for i in range(steps):
            t = torch.full((n,), i * dt)
            v = self.net(z, t, g, acc, given)
            if accuracy is not None and guidance != 1.0:
                v0 = self.net(z, t, g, acc, torch.zeros(n, dtype=torch.bool))
                v = v0 + guidance * (v - v0)
            z = z + dt * v
        return z * self.std + self.mean

    def export(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "kind": "latent_flow",
                "config": {"dim": self.dim, "groups": self.groups, "hidden": self.hidden, "depth": self.depth,
                           "accuracy_range": {k: list(v) for k, v in self.accuracy_range.items()}},
                "state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}}

    @classmethod
    def load(cls, path: str | Path) -> LatentGenerator:
        if not Path(path).exists():
            raise GeneratorError(f"{path}: no generator here; train one first (dvc repro generator)")
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("kind") != "latent_flow" or blob.get("format_version") != FORMAT_VERSION:
            raise GeneratorError(f"{path}: not a latent generator of format {FORMAT_VERSION}; retrain it with this "
                                 "version of weightvae (dvc repro generator)")
        c = blob["config"]
        model = cls(c["dim"], c["groups"], c["hidden"], c["depth"],
                    {k: (float(v[0]), float(v[1])) for k, v in c["accuracy_range"].items()})
        model.load_state_dict(blob["state_dict"])
        return model.eval()


def _lr(step: int, steps: int) -> float:
    warm = max(1, steps // 20)
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))


def train_generator(codes: Tensor, groups: Sequence[str], accuracy: Tensor, p: GeneratorParams,
                    log=print) -> tuple[LatentGenerator, dict[str, Any]]:
    """Fit the flow to `codes` `[N, dim]` with each row's `groups` name and `accuracy` `[N]` (NaN: not recorded,
    trained unprompted only); returns (the generator with its EMA weights, metrics)."""
    if len(codes) < 2:
        raise GeneratorError(f"{len(codes)} training codes; the generator needs at least 2 (encode the train split)")
    t0 = time.perf_counter()
    names = sorted(set(groups))
    ranges = {}
    for name in names:
        acc = accuracy[[i for i, g in enumerate(groups) if g == name]]
        acc = acc[~acc.isnan()]
        if len(acc):
            ranges[name] = (float(acc.min()), float(acc.max()))
    torch.manual_seed(p.seed)  # the network's initial weights
    model = LatentGenerator(codes.shape[1], names, p.hidden, p.depth, ranges)
    gen = torch.Generator().manual_seed(p.seed)
    mean, std = codes.mean(0), codes.std(0, unbiased=False).clamp_min(1e-8)
    model.mean.copy_(mean)
    model.std.copy_(std)
    x1_all = (codes - mean) / std
    g_all = torch.tensor([names.index(g) for g in groups])
    known = ~accuracy.isnan()
    acc_all = torch.nan_to_num(accuracy.float(), nan=0.0)
    ema = copy.deepcopy(model.net).requires_grad_(False)
    ema_params, net_params = list(ema.parameters()), list(model.net.parameters())
    opt = torch.optim.AdamW(model.net.parameters(), lr=p.learning_rate, weight_decay=p.weight_decay,
                            fused=True)  # one kernel for all parameters: a quarter of the step time on CPU
    losses = []
    for step in range(p.steps):
        for group in opt.param_groups:
            group["lr"] = p.learning_rate * _lr(step, p.steps)
        idx = torch.randint(len(codes), (p.batch_size,), generator=gen)
        x1 = x1_all[idx]
        x0 = torch.randn(x1.shape, generator=gen)
        t = torch.rand(len(idx), generator=gen)
        given = known[idx] & (torch.rand(len(idx), generator=gen) >= p.cond_dropout)
        acc = acc_all[idx] + p.accuracy_noise * torch.randn(len(idx), generator=gen)
        xt = (1 - t[:, None]) * x0 + t[:, None] * x1
        loss = (model.net(xt, t, g_all[idx], acc, given) - (x1 - x0)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, net_params, 1 - p.ema)
        losses.append(loss.item())
        if (step + 1) % max(1, p.steps // 4) == 0:
            log(f"generator: step {step + 1}/{p.steps}, flow loss {sum(losses[-100:]) / len(losses[-100:]):.4f}")
    model.net = ema
    seconds = round(time.perf_counter() - t0, 1)
    return model.eval(), {"codes": len(codes), "latent_size": codes.shape[1], "groups": names,
                          "accuracy_range": {k: list(v) for k, v in ranges.items()},
                          "flow_loss_final": sum(losses[-100:]) / len(losses[-100:]), "seconds": seconds,
                          "params": asdict(p)}


def group_name(task: str, arch: str, layout_id: str) -> str:
    """A group's name in the generator: `task/architecture/layout` (the layout's first 8 characters)."""
    return f"{task}/{arch}/{layout_id[:8]}"


def prompted_codes(flow: LatentGenerator, group: str, prompts: torch.Tensor, p: GeneratorParams, guidance: float,
                   steps: int, gen: torch.Generator, accuracy: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Codes `[n, dim]` of `group` for the accuracies `prompts` `[n]`: `p.select_from` draws each (the flow at
    `p.prompt_temperature`), of which the one whose network's accuracy is nearest its prompt is kept
    (`nearest_draws`). `accuracy(codes [m, dim]) -> [m]` runs the decoded networks on the task's *training*
    inputs, never the test inputs the generation stage scores. `select_from: 1` keeps the flow's draws as they are."""
    n, k = len(prompts), p.select_from
    z = flow.sample(group, n * k, prompts.repeat_interleave(k), guidance, steps, gen, p.prompt_temperature)
    if k == 1:
        return z
    z = z.view(n, k, -1)
    return z[torch.arange(n), nearest_draws(accuracy(z.flatten(0, 1)).view(n, k), prompts, k)]


def nearest_draws(accuracy: torch.Tensor, prompts: torch.Tensor, k: int) -> torch.Tensor:
    """`[n]`: which of the first `k` draws of each prompt has the accuracy nearest it (`accuracy` `[n, K >= k]`,
    `prompts` `[n]`; ties: the first)."""
    return (accuracy[:, :k] - prompts[:, None].to(accuracy)).abs().argmin(1)


def zoo_prompts(train: Any, n: int, generator: torch.Generator | None = None) -> Tensor | None:
    """`n` accuracy prompts for samples with no prompt from the user: drawn from the recorded `test_acc` of the
    training runs' final checkpoints (`train`: a group's rows of the shards' models table), the population a fresh
    run belongs to; None (unprompted) where the zoo records no accuracy."""
    final = train[train.epoch == train.groupby("run_id").epoch.transform("max")].test_acc.dropna()
    if not len(final):
        return None
    acc = torch.tensor(sorted(final.to_numpy(dtype=float)), dtype=torch.float32)
    return acc[torch.randint(len(acc), (n,), generator=generator)]


def training_codes(shards: str | Path, latents: str | Path) -> tuple[Tensor, list[str], Tensor, list[dict]]:
    """The training split's refined codes `[N, dim]`, each row's group name, its recorded `test_acc` (NaN where
    the zoo has none) and the rows (latents table order)."""
    import pandas as pd

    from weightvae.latents import read_latents

    try:
        rows, z = read_latents(latents, "train")
    except ValueError as e:
        raise GeneratorError(f"{e}; the generator needs codes of one length (not the chunk codec on a joint zoo)") \
            from None
    if not rows:
        raise GeneratorError(f"{latents}: no codes of the training split; add 'train' to encode.splits and rerun "
                             "encode")
    table = pd.read_parquet(Path(shards) / "models.parquet", columns=["id", "test_acc"]).set_index("id")
    acc = torch.tensor([float("nan") if pd.isna(table.test_acc.get(r["id"])) else float(table.test_acc[r["id"]])
                        for r in rows], dtype=torch.float32)
    return z, [group_name(r["task"], r["architecture"], r["layout_id"]) for r in rows], acc, rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_inputs(parser, "params", "shards", "latents")
    parser.add_argument("--out", default=INPUTS["generator"][0], help="the generator (default: %(default)s)")
    parser.add_argument("--metrics", default="metrics/generator.json", help="stage metrics (default: %(default)s)")


def run(args: argparse.Namespace) -> None:
    p = load_section(args.params, "generator", GeneratorParams)
    codes, groups, acc, _ = training_codes(args.shards, args.latents)
    model, metrics = train_generator(codes, groups, acc, p)
    with atomic_path(args.out) as tmp:
        torch.save(model.export(), tmp)
    write_json(args.metrics, metrics)
    print(f"generator: {metrics['codes']} codes of {metrics['latent_size']} values, {len(metrics['groups'])} "
          f"group(s), flow loss {metrics['flow_loss_final']:.4f} in {metrics['seconds']}s -> {args.out}")
