"""Generated networks judged as the field's critics judge them: accurate *and* new, against baselines and fresh runs.

Zeng et al. (2025) showed that weight generators mostly copy their training networks or do no better than adding
noise to them. Their protocol, per generated network: its accuracy on the task's test inputs; its distance to the
nearest training network in weight space (canonical unit order, per-layer standardised); in function space the
highest overlap (intersection over union) of its set of misclassified test inputs with any training network's,
and the highest agreement. The reference for each figure is what a *fresh run* scores: the final checkpoints of
the `split` runs (never trained on by the codec or the generator) against the same training networks.

Methods, `n_samples` networks each per (task, architecture, layout) group:
- `flow`: the latent generator (`weightvae.generator`), no prompt from the user: each sample's accuracy condition
  is drawn from the training runs' final checkpoints' recorded accuracies (the population a fresh run belongs to),
  at `generator.temperature`;
- `flow_t<T>`: the same at sampling temperature T (`temperatures`): the flow's knob between accuracy and novelty,
  as the bandwidth is the KDE's;
- `flow_unprompted`: the same model with the accuracy condition left out (the whole zoo, early checkpoints too);
- baselines: `kde_<b>` (the hyper-representations/SANE sampler: a KDE over the best `kde_top` training codes at
  bandwidth b), `noise_<a>` (a training run's final network plus Gaussian noise of a times each layer's std),
  `average_<k>` (the average of k training runs' final networks), `gaussian_codes` (a full-covariance Gaussian
  fitted to the training runs' final codes).
Conditioning (G.pt's prompt alignment): `prompts` accuracies spread evenly over the group's training range,
`per_prompt` samples each at `generator.prompt_temperature`, each the nearest its prompt of
`generator.select_from` draws by accuracy on the task's *training* inputs (as `weightvae generate --accuracy`
makes them); R² and mean absolute error between prompted and achieved (test) accuracy over all samples, and the
same at each draw count of `select_from` (`by_select_from`; 1: the flow's draws alone); prompts above the zoo's
best are reported apart (`above_best`).

Output: `metrics/generate.json` (`groups` -> {`fresh`, `unconditional`, `conditioned`, `methods`,
`best_baseline_at_novelty`, `seconds_generate_64`}, and the stage's `seconds`) and a PNG of accuracy against
novelty for every method, the fresh runs at (1, 1).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from weightvae import metrics as M
from weightvae import standardize
from weightvae.io import write_json
from weightvae.params import StageError, add_inputs, load_section, require

FLOW, FLOW_UNPROMPTED = "flow", "flow_unprompted"
#: the novelty a generator must reach, as a share of a fresh run's (weight and function space)
NOVELTY_BAR = 0.9


@dataclass(frozen=True)
class GenerationParams:
    """`generation:` section of params.yaml."""

    split: str = "test"  # the fresh runs: this split's final checkpoints
    n_samples: int = 128  # networks per method and group
    prompts: int = 20  # prompted accuracies per group, spread over its training range
    per_prompt: int = 8  # samples per prompt
    above_best: tuple[float, ...] = (0.01, 0.02, 0.04)  # prompts this far above the zoo's best, reported apart
    select_from: tuple[int, ...] = (1, 2, 4, 8, 16)  # the prompt alignment again with this many draws per
    # network (`generator.select_from` is read off this curve; 1: the flow's draws alone)
    temperatures: tuple[float, ...] = (1.0, 1.25, 1.75)  # the flow again at these sampling temperatures
    kde_bandwidths: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    kde_top: float = 0.3
    noise_amplitudes: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    average_of: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.split in ("val", "test"), "generation.split", self.split, "choose val or test")
        for key in ("n_samples", "prompts", "per_prompt", "average_of"):
            require(getattr(self, key) >= 1, f"generation.{key}", getattr(self, key), "need >= 1")
        require(0 < self.kde_top <= 1, "generation.kde_top", self.kde_top, "need a fraction in (0, 1]")
        require(all(k >= 1 for k in self.select_from), "generation.select_from", list(self.select_from),
                "need draws per network >= 1")


class GenerationError(StageError):
    """Inputs the generation stage cannot use; the message names the file or key and what to do."""


@dataclass
class Reference:
    """One group's training networks and fresh runs, with everything a sample is compared against."""

    arch: str
    kwargs: dict[str, Any]
    layout: Any  # weightvae.layout.Layout
    buffers: dict[str, Any]
    train_w: Tensor  # [T, L] all training checkpoints, canonical order
    scale: Tensor  # [L] per-layer std of the training networks
    x: Tensor  # the task's test inputs
    y: Tensor  # and labels
    task: str | None = None  # whose inputs trace a registered architecture's unit groups (weightvae.canonical)
    train_pred: Tensor = field(init=False)  # [T, N] the training networks' predictions

    def __post_init__(self) -> None:
        self.train_pred = self.predictions(self.train_w)

    def judge(self, w: Tensor) -> dict[str, Tensor]:
        """Per network `w` `[S, L]`: accuracy, weight distance to the nearest training network, highest error-set
        overlap and highest agreement with any training network."""
        pred = self.predictions(w)
        return {"acc": M.accuracy(pred, self.y),
                "distance": M.nearest_distances(self.canonical(w), self.train_w, self.scale),
                "error_overlap": M.best_error_overlap(pred, self.train_pred, self.y),
                "agreement": M.best_agreement(pred, self.train_pred)[0]}

    def predictions(self, w: Tensor) -> Tensor:
        return M.predictions(self.arch, self.kwargs, [self.layout.unflatten(v, self.buffers) for v in w], self.x)

    def canonical(self, w: Tensor) -> Tensor:
        """Networks in canonical unit order (as ingest stores the zoo's), where the architecture has one."""
        from weightvae.canonical import canonicalize, supports

        if not supports(self.arch, self.kwargs, self.task):
            return w
        return torch.stack([self.layout.flatten(canonicalize(self.arch, self.layout.unflatten(v, self.buffers), self.kwargs,
                                                             self.task)) for v in w])


def summary(j: dict[str, Tensor], fresh: dict[str, Tensor]) -> dict[str, float | None]:
    """A method's figures against the fresh runs': accuracy ratio (means), weight novelty (median distance ratio),
    functional novelty (median of 1 - error overlap, ratio), agreement with the nearest training network.
    A novelty ratio is None (null in the JSON) where the fresh runs' median is 0: on a task so easy that most
    fresh runs miss exactly the inputs some training network misses, no ratio to them tells new from copied
    (`is_novel` then compares the medians themselves)."""
    def med(t: Tensor) -> float:
        return float(t.double().quantile(0.5))

    def ratio(a: float, b: float) -> float | None:
        return a / b if b > 0 else None

    return {"acc_mean": float(j["acc"].mean()),
            "acc_ratio_vs_fresh": float(j["acc"].mean() / fresh["acc"].mean()),
            "weight_novelty_vs_fresh": ratio(med(j["distance"]), med(fresh["distance"])),
            "functional_novelty_vs_fresh": ratio(med(1 - j["error_overlap"]), med(1 - fresh["error_overlap"])),
            "error_overlap_median": med(j["error_overlap"]),
            "nearest_agreement_median": med(j["agreement"]),
            "nearest_distance_median": med(j["distance"])}


def is_novel(s: dict[str, float | None], fresh: dict[str, float | None]) -> bool:
    """Whether a method's medians (`summary`) reach `NOVELTY_BAR` times the fresh runs' in weight and in function
    space: the ratios' test, also where a ratio is undefined (the fresh runs' median 0: any median reaches it)."""
    return (s["nearest_distance_median"] >= NOVELTY_BAR * fresh["nearest_distance_median"]
            and 1 - s["error_overlap_median"] >= NOVELTY_BAR * (1 - fresh["error_overlap_median"]))


def prompt_alignment(prompted: np.ndarray, achieved: np.ndarray) -> dict[str, float]:
    """R² of achieved on prompted accuracy (1 - SS_res / SS_tot over every sample) and the mean absolute error."""
    ss_res = float(((achieved - prompted) ** 2).sum())
    ss_tot = float(((achieved - achieved.mean()) ** 2).sum())
    return {"prompt_r2": 1 - ss_res / max(ss_tot, 1e-12), "prompt_mae": float(np.abs(achieved - prompted).mean())}


def _final(rows: pd.DataFrame) -> np.ndarray:
    """Mask of the rows that are their run's last checkpoint."""
    return (rows.epoch == rows.groupby("run_id").epoch.transform("max")).to_numpy(copy=True)  # writable: torch wraps it


def conditioning(flow, name: str, ref: Reference, decode, data, p: GenerationParams, gen_p,
                 gen: torch.Generator) -> dict[str, Any]:
    """G.pt's prompt alignment for one group: prompts spread over its training range, each prompted network the
    nearest its prompt of `generator.select_from` draws by accuracy on the task's training inputs (`data`'s), and
    the same at every draw count of `p.select_from` (one set of draws: each network the nearest of its first k);
    prompts above the group's best apart. `decode`: codes -> flat weights."""
    from weightvae.generator import nearest_draws, prompted_codes

    def accuracy(z: Tensor) -> Tensor:  # of the decoded networks on the task's training inputs, never its test ones
        return M.accuracy(M.predictions(ref.arch, ref.kwargs, [ref.layout.unflatten(v, ref.buffers) for v in decode(z)],
                                        data.x_train), data.y_train)

    lo, hi = flow.accuracy_range[name]
    grid = np.linspace(lo, hi, p.prompts)
    prompts = torch.from_numpy(np.repeat(grid, p.per_prompt)).float()
    most = max(gen_p.select_from, *p.select_from)
    draws = flow.sample(name, len(prompts) * most, prompts.repeat_interleave(most), gen_p.guidance,
                        gen_p.sample_steps, gen, gen_p.prompt_temperature).view(len(prompts), most, -1)
    draw_acc = accuracy(draws.flatten(0, 1)).view(len(prompts), most)

    def alignment(k: int) -> tuple[dict[str, float], np.ndarray]:
        kept = draws[torch.arange(len(prompts)), nearest_draws(draw_acc, prompts, k)]
        achieved = ref.judge(decode(kept))["acc"].numpy()
        return prompt_alignment(prompts.double().numpy(), achieved), achieved

    aligned, achieved = alignment(gen_p.select_from)
    above = {}
    for d in p.above_best:
        z = prompted_codes(flow, name, torch.full((p.per_prompt,), hi + d), gen_p, gen_p.guidance,
                           gen_p.sample_steps, gen, accuracy)
        acc = ref.judge(decode(z))["acc"]
        above[f"{hi + d:.3f}"] = {"achieved_mean": float(acc.mean()), "achieved_max": float(acc.max())}
    t0 = time.perf_counter()  # what `weightvae generate --accuracy A -n 64` spends on its networks
    decode(prompted_codes(flow, name, torch.full((64,), float(grid[len(grid) // 2])), gen_p, gen_p.guidance,
                          gen_p.sample_steps, gen, accuracy))
    return {**aligned, "seconds_prompted_64": round(time.perf_counter() - t0, 3),
            "range": [lo, hi], "prompts": p.prompts, "per_prompt": p.per_prompt,
            "guidance": gen_p.guidance, "temperature": gen_p.prompt_temperature, "select_from": gen_p.select_from,
            "by_select_from": {str(k): alignment(k)[0] for k in p.select_from}, "above_best": above,
            "curve": [[float(a), float(np.mean(achieved[i * p.per_prompt:(i + 1) * p.per_prompt]))]
                      for i, a in enumerate(grid)]}


def generation(p: GenerationParams, gen_p, shards: str | Path, model_path: str | Path, generator_path: str | Path,
               latents: str | Path) -> dict[str, Any]:
    """Every method's networks judged against the fresh runs, per group; returns generate.json's content."""
    from weightvae.archs import ARCHITECTURES
    from weightvae.generator import LatentGenerator, group_name, zoo_prompts
    from weightvae.latents import read_latents
    from weightvae.layout import Layout
    from weightvae.model import VAE
    from weightvae.prior import LatentKDE, top_fraction
    from weightvae.progress import Progress
    from weightvae.shards import open_shard
    from weightvae.tasks import TASKS, get_task

    shards = Path(shards)
    vae = VAE.from_export(str(model_path))
    flow = LatentGenerator.load(generator_path)
    table = pd.read_parquet(shards / "models.parquet")
    layouts = {k: Layout.from_dict(v) for k, v in json.loads((shards / "layouts.json").read_text()).items()}
    rows_all, z_all = read_latents(latents, "train")
    code_of = {r["id"]: z for r, z in zip(rows_all, z_all, strict=True)}
    start = time.perf_counter()
    out: dict[str, Any] = {"split": p.split, "groups": {}, "skipped": []}
    bar = Progress("generation", unit="networks")
    for (task, arch, lid), train in table[table.split == "train"].groupby(["task", "architecture", "layout_id"]):
        name = group_name(task, arch, lid)
        fresh_rows = table[(table.split == p.split) & (table.task == task) & (table.architecture == arch)
                           & (table.layout_id == lid)]
        if task not in TASKS or arch not in ARCHITECTURES or not len(fresh_rows):
            out["skipped"].append(f"{name}: " + ("no networks of the " + p.split + " split" if len(fresh_rows) else
                                                 "the task or architecture is not known (registry: in params.yaml)"))
            continue
        train = train.sort_values("row")
        fresh_rows = fresh_rows.sort_values("row")[_final(fresh_rows.sort_values("row"))]
        layout = layouts[lid]

        def load(split: str, rows: pd.DataFrame, lid: str = lid) -> Tensor:
            return torch.from_numpy(np.asarray(open_shard(shards, split, lid)[rows.row.to_numpy()], dtype=np.float32))
        train_w = load("train", train)
        buffers = json.loads(train.buffers.iloc[0]) if isinstance(train.buffers.iloc[0], str) else {}
        kwargs = json.loads(train.arch_kwargs.iloc[0]) if isinstance(train.arch_kwargs.iloc[0], str) else {}
        data = get_task(task)
        _, scale = standardize.from_weights(train_w, layout.slices())
        ref = Reference(arch, kwargs, layout, buffers, train_w, scale, data.x_test, data.y_test, task)
        gen = torch.Generator().manual_seed(p.seed)
        final = _final(train)
        codes = torch.stack([code_of[i] for i in train.id])

        def decode(z: Tensor, lid: str = lid, layout: Layout = layout) -> Tensor:
            with torch.no_grad():
                return vae.denormalize(vae.decode(z), [lid] * len(z))[:, :layout.length].float()

        fresh = ref.judge(load(p.split, fresh_rows))
        n = p.n_samples
        candidates: dict[str, Tensor] = {}
        t0 = time.perf_counter()
        prompts = zoo_prompts(train, n, gen)
        candidates[FLOW] = decode(flow.sample(name, n, prompts, gen_p.guidance, gen_p.sample_steps, gen,
                                              gen_p.temperature))
        seconds_64 = (time.perf_counter() - t0) * 64 / n
        for temp in p.temperatures:  # the flow's knob between accuracy and novelty, as bandwidth is the KDE's
            candidates[f"{FLOW}_t{temp:g}"] = decode(flow.sample(name, n, zoo_prompts(train, n, gen), gen_p.guidance,
                                                                 gen_p.sample_steps, gen, temp))
        candidates[FLOW_UNPROMPTED] = decode(flow.sample(name, n, None, 1.0, gen_p.sample_steps, gen,
                                                         gen_p.temperature))
        acc_train = train.train_acc.to_numpy(dtype=float)
        for b in p.kde_bandwidths:
            kde = LatentKDE(codes, top_fraction(acc_train, p.kde_top), b)
            candidates[f"kde_{b:g}"] = decode(kde.sample(n, generator=gen)[0])
        finals = train_w[torch.from_numpy(final)]
        for a in p.noise_amplitudes:
            pick = finals[torch.randint(len(finals), (n,), generator=gen)]
            candidates[f"noise_{a:g}"] = M.noise_baseline(pick, scale, a, gen)
        k = min(p.average_of, len(finals))
        candidates[f"average_{k}"] = torch.stack([finals[torch.randperm(len(finals), generator=gen)[:k]].mean(0)
                                                  for _ in range(n)])
        fc = codes[torch.from_numpy(final)].double()
        cov = torch.cov(fc.T) + 1e-6 * torch.eye(fc.shape[1], dtype=torch.float64)
        chol = torch.linalg.cholesky(cov)
        noise = torch.randn(n, fc.shape[1], generator=gen, dtype=torch.float64)
        candidates["gaussian_codes"] = decode((fc.mean(0) + noise @ chol.T).float())
        bar.add_total(n * len(candidates) + p.prompts * p.per_prompt)
        methods: dict[str, Any] = {}
        for m, w in candidates.items():
            methods[m] = summary(ref.judge(w), fresh)
            bar.update(n)
        conditioned = conditioning(flow, name, ref, decode, data, p, gen_p, gen)
        bar.update(p.prompts * p.per_prompt)
        fresh_summary = summary(fresh, fresh)
        baselines = [m for m in methods if not m.startswith(FLOW)]
        novel = [m for m in baselines if is_novel(methods[m], fresh_summary)]
        best = max(novel, key=lambda m: methods[m]["acc_ratio_vs_fresh"]) if novel else None
        out["groups"][name] = {
            "fresh": {"runs": len(fresh_rows), "acc_mean": fresh_summary["acc_mean"],
                      "nearest_distance_median": fresh_summary["nearest_distance_median"],
                      "error_overlap_median": fresh_summary["error_overlap_median"],
                      "nearest_agreement_median": fresh_summary["nearest_agreement_median"]},
            "train_networks": len(train),
            "unconditional": {**{k: methods[FLOW][k] for k in ("acc_ratio_vs_fresh", "weight_novelty_vs_fresh",
                                                               "functional_novelty_vs_fresh")},
                              "temperature": gen_p.temperature},
            "conditioned": conditioned,
            "best_baseline_at_novelty": {"novelty_bar": NOVELTY_BAR, "method": best,
                                         **({"acc_ratio_vs_fresh": methods[best]["acc_ratio_vs_fresh"]} if best
                                            else {})},
            "seconds_generate_64": round(seconds_64, 3),
            "methods": methods,
        }
    bar.close()
    if not out["groups"]:
        raise GenerationError(f"{shards}: no group to judge ({'; '.join(out['skipped'])})")
    if not out["skipped"]:
        del out["skipped"]
    out["seconds"] = round(time.perf_counter() - start, 1)  # this stage's own time, without loading the modules
    return out


def plot(result: dict[str, Any], path: str | Path) -> None:
    """Accuracy (vs fresh runs) against weight and functional novelty for every method, one row per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from weightvae.io import atomic_path

    groups = result["groups"]
    fig, axes = plt.subplots(len(groups), 2, figsize=(11, 4.5 * len(groups)), squeeze=False)
    for row, (name, g) in zip(axes, groups.items(), strict=True):
        for ax, key, label in ((row[0], "weight_novelty_vs_fresh", "weight-space novelty (nearest training network)"),
                               (row[1], "functional_novelty_vs_fresh", "functional novelty (1 - error-set overlap)")):
            for m, v in g["methods"].items():
                family = m.split("_")[0]
                if v[key] is None:  # undefined (`summary`): nothing to place
                    continue
                ax.scatter(v[key], v["acc_ratio_vs_fresh"], marker="*" if family == "flow" else "o",
                           s=160 if family == "flow" else 40, label=m)
                ax.annotate(m, (v[key], v["acc_ratio_vs_fresh"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
            ax.scatter([1.0], [1.0], marker="s", c="k", s=60, label="fresh runs")
            ax.axvline(NOVELTY_BAR, ls=":", c="grey")
            ax.axhline(0.95, ls=":", c="grey")
            ax.set_xlabel(label + ", / fresh runs'")
            ax.set_ylabel("accuracy / fresh runs'")
            ax.set_title(name, fontsize=9)
        row[1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_inputs(parser, "params", "shards", "model", "generator", "latents")
    parser.add_argument("--metrics", default="metrics/generate.json", help="metrics (default: %(default)s)")
    parser.add_argument("--plot", default="metrics/plots/generation.png", help="PNG (default: %(default)s)")


def run(args: argparse.Namespace) -> None:
    from weightvae.generator import GeneratorParams
    from weightvae.registry import register_params

    register_params(args.params)
    p = load_section(args.params, "generation", GenerationParams)
    gen_p = load_section(args.params, "generator", GeneratorParams)
    result = generation(p, gen_p, args.shards, args.model, args.generator, args.latents)
    write_json(args.metrics, result)
    plot(result, args.plot)
    for name, g in result["groups"].items():
        u, c = g["unconditional"], g["conditioned"]
        weight, function = (("undefined" if v is None else f"{v:.3f}")
                            for v in (u["weight_novelty_vs_fresh"], u["functional_novelty_vs_fresh"]))
        print(f"generation: {name}: flow acc {u['acc_ratio_vs_fresh']:.3f}x fresh, novelty weight "
              f"{weight} function {function}; prompts R² "
              f"{c['prompt_r2']:.3f} MAE {c['prompt_mae']:.3f}; best baseline at novelty "
              f"{g['best_baseline_at_novelty']['method']}")
