"""Evaluate reconstructions and samples *as networks*, against baselines that a reconstruction must beat.

For each test-split model: its original, its VAE reconstruction and each baseline (the mean
model; the original plus Gaussian noise of a few amplitudes relative to each layer's std; a
random training model and the nearest training model of the same task and architecture) are
rebuilt, run on the task's fixed test set, and compared with the original: accuracy, retention
(acc / original acc), prediction agreement, weight-space MSE and R² against the train-mean
vector (overall and per layer). The fidelity gain says whether the reconstruction beats
handing back the nearest training model. In a zoo that keeps early checkpoints, the nearest
model in weight space is often a near-initial "hub" at chance accuracy, a weak substitute;
so the table also has `oracle_train`, the training model whose predictions agree most with
the original's (the best any substitution could do), and `fidelity_gain_vs_oracle`. Sampled
networks get accuracy and two memorisation checks: distance to the nearest training model
relative to the typical one between runs (weight space), and the same with disagreement on the
test set (function space, blind to permuted copies), with permuted training networks beside them.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from weightvae import metrics as M
from weightvae import standardize
from weightvae.archs import ARCHITECTURES
from weightvae.canonical import random_permutation, supports
from weightvae.io import atomic_path, write_json
from weightvae.layout import Layout
from weightvae.params import StageError, add_inputs, load_section, require
from weightvae.progress import Progress
from weightvae.records import CONTROLS, POOL_FILE, file_name, group_key, load_control, pool_key
from weightvae.registry import ENABLE_HINT, register_params
from weightvae.shards import open_shard
from weightvae.tasks import TASKS, get_task

VAE = "vae"
VAE_ENCODER = "vae_encoder"  # the encoder's code decoded, no refinement
NEAREST = "nearest_train"
ORACLE = "oracle_train"
PCA = "pca"


class EvaluateError(StageError):
    """Inputs evaluate cannot use; the message names the file or key and what to do."""


@dataclass(frozen=True)
class EvaluateParams:
    """`evaluate:` section of params.yaml."""

    split: str = "test"
    noise_amplitudes: tuple[float, ...] = (0.1, 0.5)
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.split in ("val", "test"), "evaluate.split", self.split, "choose val or test")
        require(all(a > 0 for a in self.noise_amplitudes), "evaluate.noise_amplitudes",
                list(self.noise_amplitudes), "amplitudes must be > 0 (relative to each layer's std)")


def _load_flat(layout: Layout, path: Path) -> torch.Tensor:
    return layout.flatten(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])


def _json_list(values: pd.Series) -> list[dict[str, Any]]:
    return [json.loads(v) if isinstance(v, str) else {} for v in values]


@dataclass
class _Group:
    """One (task, architecture, layout) group: its test and training models as flat vectors."""

    key: str
    task: str
    arch: str
    layout: Layout
    test: pd.DataFrame  # test-split rows, shard order
    train: pd.DataFrame  # training-split rows, shard order
    orig: torch.Tensor  # [M, L]
    train_w: torch.Tensor  # [T, L]
    pred_train: torch.Tensor | None = None  # training models' test-input predictions [T, N] (functional only)

    def __post_init__(self) -> None:
        # the per-layer standardisation of the training models: mean and (floored) std, [L] each
        self.mean, self.scale = standardize.from_weights(self.train_w, self.layout.slices())

    @property
    def kwargs(self) -> dict[str, Any]:
        v = self.test.arch_kwargs.iloc[0]
        return json.loads(v) if isinstance(v, str) else {}

    def predictions(self, w: torch.Tensor, buffers: list[dict[str, Any]], x: torch.Tensor) -> torch.Tensor:
        """Predictions `[M, N]` of the networks given as flat vectors `w` `[M, length]` on inputs `x`."""
        return M.predictions(self.arch, self.kwargs, [self.layout.unflatten(v, b) for v, b in
                                                      zip(w, buffers, strict=True)], x)


def evaluate(p: EvaluateParams, shards: str | Path, recon_dir: str | Path, latents: str | Path | None = None,
             controls: str | Path | None = None) -> tuple[dict[str, Any], pd.DataFrame, dict[str, Any]]:
    """Returns (headline metrics, per-model table, data for the plots). `latents`: the encode stage's
    table, for the code size (latent values per model) that `pca` matches and `compression_ratio` reports.
    `controls`: the controls stage's folder (`weightvae.controls`), scored as methods beside `vae`; the
    reconstructions' `encoder/<split>` folder, if there, is scored as `vae_encoder`."""
    shards, recon_dir = Path(shards), Path(recon_dir)
    if not (recon_dir / p.split).is_dir():
        raise EvaluateError(f"{recon_dir / p.split}: no reconstructions of the {p.split!r} split; add "
                            f"{p.split!r} to reconstruct.splits (or choose another evaluate.split) and rerun "
                            "reconstruct")
    table = pd.read_parquet(shards / "models.parquet")
    layouts = {k: Layout.from_dict(v) for k, v in json.loads((shards / "layouts.json").read_text()).items()}
    latent_sizes = _latent_sizes(latents)
    pools = json.loads((recon_dir / "samples" / POOL_FILE).read_text()) \
        if (recon_dir / "samples" / POOL_FILE).exists() else {}
    samples = _load_samples(recon_dir)
    extra_files = {VAE_ENCODER: recon_dir / "encoder" / p.split} if (recon_dir / "encoder" / p.split).is_dir() else {}
    control_nets = _load_controls(controls, p.split)
    gen = torch.Generator().manual_seed(p.seed)
    rows: list[dict[str, Any]] = []
    headline: dict[str, Any] = {"groups": {}}
    plots: dict[str, Any] = {"per_layer_r2": {}, "acc": {}}
    skipped: list[str] = []
    test_all = table[table.split == p.split]
    several = test_all.groupby(["task", "architecture", "layout_id"]).ngroups > 1
    layouts_per = table.groupby(["task", "architecture"]).layout_id.nunique()
    bar = Progress("evaluate", unit="networks")  # each test model once per method
    for (task, arch, layout_id), test in test_all.groupby(["task", "architecture", "layout_id"], sort=True):
        layout = layouts[layout_id]
        train = table[(table.split == "train") & (table.task == task) & (table.architecture == arch)
                      & (table.layout_id == layout_id)].sort_values("row")
        key = group_key(task, arch, layout_id, layouts_per[(task, arch)] > 1)
        if len(train) == 0:
            skipped.append(f"{key}: no training-split models")
            continue
        g = _Group(key, task, arch, layout, test, train, *(
            torch.from_numpy(np.asarray(open_shard(shards, s, layout_id)[t.row.to_numpy()], dtype=np.float32))
            for s, t in ((p.split, test), ("train", train))))
        recon = torch.stack([_load_flat(layout, recon_dir / p.split / file_name(i)) for i in test.id])
        extra = {name: torch.stack([_load_flat(layout, folder / file_name(i)) for i in test.id])
                 for name, folder in extra_files.items()}
        for name, nets in control_nets.items():
            missing = [i for i in test.id if i not in nets]
            if missing:
                raise EvaluateError(f"{controls}/{name}.pt: no network for {len(missing)} {p.split} models (e.g. "
                                    f"{missing[0]}); rerun the controls stage on these shards (dvc repro controls)")
            extra[name] = torch.stack([nets[i] for i in test.id])
        sizes = {latent_sizes.get(i) for i in test.id}
        k = sizes.pop() if len(sizes) == 1 else None  # None: no latents written for this group
        out, group_rows, layer_r2, acc = _evaluate_group(p, g, recon, k, gen, bar, extra)
        rows += group_rows
        for name, per_layer in layer_r2.items():
            plots["per_layer_r2"].setdefault(name, {}).update(
                {f"{key}:{k}" if several else k: v for k, v in per_layer.items()})
        for name, values in acc.items():
            plots["acc"].setdefault(name, []).extend(values)
        if "fidelity_gain" not in out:
            unknown = [f"{k} {v!r}" for k, v, known in (("task", task, TASKS), ("architecture", arch, ARCHITECTURES))
                       if v not in known]
            skipped.append(f"{key}: functional metrics skipped (unknown {' and '.join(unknown)})")
        out["samples"] = _samples(samples, g, pools.get(pool_key(task, arch, layout_id)),
                                  torch.Generator().manual_seed(p.seed))
        if out["samples"].get("acc") is not None:
            plots["acc"].setdefault("samples", []).extend(out["samples"].pop("acc"))
        headline["groups"][key] = out
    bar.close()
    df = pd.DataFrame(rows)
    headline.update(_overall(headline["groups"], df))
    if skipped:
        headline["skipped"] = skipped
    return headline, df, plots


def _latent_sizes(latents: str | Path | None) -> dict[str, int]:
    """{model id: latent values per model}, from the encode stage's table (empty without one)."""
    if latents is None:
        return {}
    if not Path(latents).exists():
        raise EvaluateError(f"{latents}: no latents table; run the encode stage first (dvc repro encode)")
    lat = pd.read_parquet(latents, columns=["id", "latent"])
    return dict(zip(lat.id, (len(v) for v in lat.latent)))


def _load_controls(folder: str | Path | None, split: str) -> dict[str, dict[str, torch.Tensor]]:
    """{control name: {model id: refined network's flat weights}} from the controls stage's folder (none: {})."""
    if folder is None:
        return {}
    folder = Path(folder)
    files = {name: folder / f"{name}.pt" for name in CONTROLS}
    if not all(f.exists() for f in files.values()):
        raise EvaluateError(f"{folder}: no control networks ({', '.join(f.name for f in files.values())}); run the "
                            "controls stage first (dvc repro controls)")
    return {name: load_control(f) for name, f in files.items()}


def _evaluate_group(p: EvaluateParams, g: _Group, recon: torch.Tensor, latent_size: int | None,
                    gen: torch.Generator, bar: Progress, extra: dict[str, torch.Tensor] | None = None
                    ) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Every method of one group against the originals: (group metrics, per-model rows,
    per-layer R^2 per method, accuracies for the histograms). `extra`: more methods' networks, `[models, L]`
    in the group's test order (`vae_encoder`, the controls)."""
    slices, scale = g.layout.slices(), g.scale
    train_mean = g.train_w.mean(0)  # [L] per entry: R^2's reference, the mean model
    near, _, _ = M.nearest_train_baseline(g.orig, g.train_w, scale)
    cands = {VAE: recon, **(extra or {})}
    if latent_size is not None:
        cands[PCA] = M.pca_baseline(g.orig, g.train_w, g.mean, scale, latent_size)
    cands["mean"] = M.mean_baseline(g.train_w, len(g.orig))
    for a in p.noise_amplitudes:
        cands[f"noise_{a:g}"] = M.noise_baseline(g.orig, scale, a, gen)
    cands["random_train"] = M.random_train_baseline(g.test.reset_index(drop=True), g.train.reset_index(drop=True),
                                                    g.train_w, gen)
    cands[NEAREST] = near
    out: dict[str, Any] = {"models": len(g.test), "train_models": len(g.train),
                           "learned_weights": g.layout.length, "methods": {}}
    if latent_size is not None:
        out.update(latent_size=latent_size, compression_ratio=g.layout.length / latent_size)
    functional = g.task in TASKS and g.arch in ARCHITECTURES
    if functional:
        data = get_task(g.task)
        eps = 1.0 / len(data.y_test)
        bufs, train_bufs = _json_list(g.test.buffers), _json_list(g.train.buffers)
        pred_orig = g.predictions(g.orig, bufs, data.x_test)
        acc_orig = M.accuracy(pred_orig, data.y_test)
        # the oracle substitute is chosen on the task's *training* inputs and scored on the test inputs
        choice = M.most_agreeing(g.predictions(g.orig, bufs, data.x_train),
                                 g.predictions(g.train_w, train_bufs, data.x_train))
        cands[ORACLE] = g.train_w[choice]
        g.pred_train = g.predictions(g.train_w, train_bufs, data.x_test)  # reused by the sample metrics
    bar.add_total(len(g.orig) * len(cands))
    rows: list[dict[str, Any]] = []
    layer_r2: dict[str, Any] = {}
    accs: dict[str, list[float]] = {"originals": acc_orig.tolist()} if functional else {}
    agree: dict[str, torch.Tensor] = {}
    for name, w in cands.items():
        r2 = M.r2(g.orig, w, train_mean, slices)
        mse = M.mse(g.orig, w)
        m: dict[str, Any] = {"r2": r2["overall"], "r2_layer_mean": r2["layer_mean"], "mse": float(mse.mean())}
        per_model: dict[str, Any] = {"mse": mse}
        if functional:
            pred = g.predictions(w, bufs, data.x_test)
            acc = M.accuracy(pred, data.y_test)
            agree[name] = M.agreement(pred, pred_orig)
            per_model.update(acc=acc, retention=acc / acc_orig.clamp_min(eps), agreement=agree[name])
            m.update(acc=float(acc.mean()), retention=M.retention(acc, acc_orig),
                     retention_median=M.retention_median(acc, acc_orig, eps), agreement=float(agree[name].mean()))
            if name in (VAE, NEAREST, ORACLE, "mean", PCA):  # the histograms' methods
                accs[name] = acc.tolist()
        out["methods"][name] = m
        layer_r2[name] = r2["per_layer"]
        for j, row in enumerate(g.test.itertuples(index=False)):
            rows.append({"group": g.key, "id": row.id, "run_id": row.run_id, "epoch": row.epoch, "method": name,
                         "original_acc": float(acc_orig[j]) if functional else None,
                         **{k: float(v[j]) for k, v in per_model.items()}})
        bar.update(len(w))
    if functional:
        out["fidelity_gain"] = M.fidelity_gain(agree[VAE], agree[NEAREST], eps)
        out["fidelity_gain_median"] = float(M.fidelity_gains(agree[VAE], agree[NEAREST], eps).quantile(0.5))
        out["fidelity_gain_vs_oracle"] = M.fidelity_gain(agree[VAE], agree[ORACLE], eps)
        out["original_acc"] = float(acc_orig.mean())
        epochs = g.test.epoch.to_numpy()
        out["vae_agreement_by_epoch"] = {str(int(e)): float(agree[VAE][torch.from_numpy(epochs == e)].mean())
                                         for e in sorted(set(epochs[~pd.isna(epochs)]))}
    return out, rows, layer_r2, accs


def _load_samples(recon_dir: Path) -> list[dict[str, Any]]:
    """Every sampled network written by reconstruct, loaded once, in file-name order."""
    return [torch.load(f, map_location="cpu", weights_only=True) for f in sorted((recon_dir / "samples").glob("*.pt"))]


def _final_epoch(train: pd.DataFrame) -> np.ndarray:
    """Boolean mask of the training rows that are their run's last checkpoint."""
    last = train.groupby("run_id").epoch.transform("max")
    return (train.epoch == last).to_numpy()


def _samples(samples: list[dict[str, Any]], g: _Group, pool_ids: list[str] | None,
             gen: torch.Generator) -> dict[str, Any]:
    """Accuracy and novelty of one group's sampled networks.

    Accuracy is reported against three populations: all training checkpoints (early ones
    included), the zoo's final-epoch models, and the pool the sampler drew from (each sample's
    own anchor; for the prior sampler, all training models). Novelty likewise against the
    distances between all training models and between the pool's. Beside them,
    `permuted_copies`: as many random training networks with their hidden units shuffled. They
    are copies, yet far away in weight space; the functional novelty sees through that, the
    weight-space ratio does not. `g.pred_train`: training models' test predictions (None when the
    task or architecture is unknown: weight-space novelty only).
    """
    recs = [r for r in samples if (r["model_properties"]["layout_id"], r["model_properties"]["task"],
                                   r["model_properties"]["architecture"]["name"]) == (g.layout.layout_id, g.task,
                                                                                      g.arch)]
    if not recs:
        return {}
    pos = {i: j for j, i in enumerate(g.train.id)}  # training model id -> row in g.train / g.train_w
    pool = np.array([pos[i] for i in pool_ids]) if pool_ids else np.arange(len(pos))
    scale = g.scale
    w = torch.stack([g.layout.flatten(r["state_dict"]) for r in recs])
    run_ids = g.train.run_id.tolist()
    train_nn = M.train_nn_distances(g.train_w, scale, run_ids)
    nov = M.novelty_ratio(w, g.train_w, scale, train_nn)
    out: dict[str, Any] = {"count": len(recs), "pool_models": len(pool), "novelty_ratio": nov["ratio_median"],
                           "novelty_ratio_vs_pool": M.novelty_ratio(w, g.train_w, scale,
                                                                    train_nn[pool])["ratio_median"],
                           "nearest_train_distance_median": nov["sample_nn_median"],
                           "train_nn_distance_median": nov["train_nn_median"]}
    if g.pred_train is None:
        return out
    data = get_task(g.task)
    kwargs = recs[0]["model_properties"]["architecture"]["kwargs"]
    test_acc = g.train.test_acc.to_numpy(dtype=float)
    train_dis = M.train_nn_disagreements(g.pred_train, run_ids)
    pred = M.predictions(g.arch, kwargs, [r["state_dict"] for r in recs], data.x_test)
    acc = M.accuracy(pred, data.y_test)
    acc_mean = float(acc.mean())
    anchors = [r["model_properties"].get("anchor_id") for r in recs]
    fnov = M.functional_novelty_ratio(pred, g.pred_train, train_dis.quantile(0.5).item())
    out.update(acc_mean=acc_mean, acc_max=float(acc.max()),
               zoo_acc_mean=float(np.mean(test_acc)),
               acc_ratio_vs_all_checkpoints=acc_mean / float(np.mean(test_acc)),
               acc_ratio_vs_final_epoch=acc_mean / float(np.mean(test_acc[_final_epoch(g.train)])),
               acc_ratio_vs_pool=acc_mean / float(np.mean(test_acc[pool])),
               functional_novelty_ratio=fnov["ratio_median"],
               functional_novelty_ratio_vs_pool=M.functional_novelty_ratio(
                   pred, g.pred_train, train_dis[torch.from_numpy(pool)].quantile(0.5).item())["ratio_median"],
               disagreement_with_nearest_train_median=fnov["sample_disagreement_median"],
               train_nn_disagreement_median=fnov["train_disagreement_median"], acc=acc.tolist())
    if all(anchors):  # the KDE sampler: each sample against its own kernel's model
        out["acc_ratio_vs_anchors"] = acc_mean / float(np.mean([test_acc[pos[a]] for a in anchors]))
    if supports(g.arch, kwargs, g.task):
        idx = torch.randint(len(g.train_w), (len(recs),), generator=gen)
        bufs = _json_list(g.train.buffers)  # integer buffers (BatchNorm's count) ride along unpermuted
        copies = [random_permutation(g.arch, g.layout.unflatten(g.train_w[i], bufs[i]), gen, kwargs, g.task)
                  for i in idx]
        pred_c = M.predictions(g.arch, kwargs, copies, data.x_test)
        out["permuted_copies"] = {
            "acc_ratio_vs_all_checkpoints": float(M.accuracy(pred_c, data.y_test).mean()) / float(np.mean(test_acc)),
            "novelty_ratio": M.novelty_ratio(torch.stack([g.layout.flatten(c) for c in copies]), g.train_w, scale,
                                             train_nn)["ratio_median"],
            "functional_novelty_ratio": M.functional_novelty_ratio(pred_c, g.pred_train,
                                                                   fnov["train_disagreement_median"])["ratio_median"]}
    return out


#: Sample metrics averaged over groups into the headline.
SAMPLE_KEYS = ("acc_mean", "acc_ratio_vs_all_checkpoints", "acc_ratio_vs_final_epoch", "acc_ratio_vs_pool",
               "acc_ratio_vs_anchors", "novelty_ratio", "novelty_ratio_vs_pool", "functional_novelty_ratio",
               "functional_novelty_ratio_vs_pool")


def _overall(groups: dict[str, Any], df: pd.DataFrame) -> dict[str, Any]:
    """The headline over all groups.

    Per-model quantities come from the per-model table, over every test model of every group:
    accuracy and agreement are means over models, retention the ratio of the mean accuracies
    (`retention_median` the median per-model ratio), fidelity gains means over models. Weight-space
    R^2 and MSE (pooled within a layout) are model-weighted means of the groups'. The code size is
    the total learned weights over the total latent values of the test models.
    """
    out: dict[str, Any] = {}
    total = sum(g["models"] for g in groups.values())
    for name in sorted({m for g in groups.values() for m in g["methods"]}):
        vals: dict[str, float] = {}
        for k in ("r2", "r2_layer_mean", "mse"):
            pairs = [(g["methods"][name][k], g["models"]) for g in groups.values()
                     if not math.isnan(g["methods"].get(name, {}).get(k, math.nan))]
            if pairs:
                vals[k] = sum(v * n for v, n in pairs) / sum(n for _, n in pairs)
        rows = df[(df.method == name) & df.original_acc.notna()] if len(df) and "acc" in df else df.iloc[:0]
        if len(rows):
            vals.update(acc=float(rows.acc.mean()), retention=float(rows.acc.mean() / rows.original_acc.mean()),
                        retention_median=float(rows.retention.median()), agreement=float(rows.agreement.mean()))
        out[name] = dict(sorted(vals.items()))
    for k in ("fidelity_gain", "fidelity_gain_vs_oracle"):
        fg = [(g[k], g["models"]) for g in groups.values() if k in g]
        if fg:
            out[k] = sum(v * n for v, n in fg) / sum(n for _, n in fg)
    sized = [g for g in groups.values() if "latent_size" in g]
    if sized:
        values = sum(g["latent_size"] * g["models"] for g in sized)
        out["latent_size"] = values / sum(g["models"] for g in sized)
        out["compression_ratio"] = sum(g["learned_weights"] * g["models"] for g in sized) / values
    samples = [g["samples"] for g in groups.values() if g.get("samples")]
    if samples:
        out["samples"] = {k: float(np.mean([s[k] for s in samples if k in s])) for k in SAMPLE_KEYS
                          if any(k in s for s in samples)}
    out["models"] = total
    return out


def write_outputs(headline: dict[str, Any], df: pd.DataFrame, plots: dict[str, Any], metrics_path: str | Path,
                  table_path: str | Path, plots_dir: str | Path, live_dir: str | Path | None) -> None:
    """Write the metrics, the per-model table and every plot `dvc.yaml` declares. A plot with
    nothing to show (no functional metrics for an unregistered architecture, no training log)
    is still written, as a figure that says why, so `dvc repro` finds every declared output."""
    from weightvae import plots as P

    write_json(metrics_path, headline)
    with atomic_path(table_path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    no_function = "no functional metrics: " + ("; ".join(headline.get("skipped", [])) or "no test models")
    vae = df[df.method == VAE] if len(df) else df
    if len(vae) and vae.original_acc.notna().any():
        scatter = pd.concat([vae, df[df.method == NEAREST]]).rename(columns={"acc": "reconstructed_acc"})
        P.accuracy_scatter(scatter, plots_dir / "accuracy_scatter.png", hue="method")
    else:
        P.message(plots_dir / "accuracy_scatter.png", "Test accuracy: original vs reconstructed", no_function)
    keep = [m for m in (VAE, PCA, "mean", NEAREST, ORACLE, "random_train") if m in plots["per_layer_r2"]]
    keep += [m for m in plots["per_layer_r2"] if m.startswith("noise_")][:1]
    if keep:
        P.layer_r2_bars({m: plots["per_layer_r2"][m] for m in keep}, plots_dir / "layer_r2.png")
    else:
        P.message(plots_dir / "layer_r2.png", "R² per layer", "no test models to evaluate")
    if plots["acc"]:
        P.accuracy_histograms(plots["acc"], plots_dir / "accuracy_histograms.png")
    else:
        P.message(plots_dir / "accuracy_histograms.png", "Test accuracy", no_function)
    curves = _training_curves(Path(live_dir)) if live_dir is not None else None
    if curves is not None:
        P.training_curves(curves, plots_dir / "training_curves.png", logy=True)
    else:
        P.message(plots_dir / "training_curves.png", "Training", f"no DVCLive training log under {live_dir}")


def _training_curves(live_dir: Path) -> pd.DataFrame | None:
    """DVCLive's per-metric TSVs (train/val loss per epoch) as one table."""
    frames = []
    for name in ("train/loss", "val/loss", "train/recon", "val/recon"):
        f = live_dir / "plots" / "metrics" / f"{name}.tsv"
        if f.exists():
            d = pd.read_csv(f, sep="\t")
            frames.append(d[["step", name.split("/")[-1]]].rename(columns={name.split("/")[-1]: name}))
    if not frames:
        return None
    out = frames[0]
    for f in frames[1:]:
        out = out.merge(f, on="step", how="outer")
    return out.sort_values("step")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_inputs(parser, "params", "shards", "recon", "latents")
    parser.add_argument("--controls", default=None,
                        help="controls stage output, scored as methods beside vae (e.g. model_data/controls)")
    parser.add_argument("--metrics", default="metrics/eval.json", help="headline metrics (default: %(default)s)")
    parser.add_argument("--table", default="metrics/eval_models.csv", help="per-model table (default: %(default)s)")
    parser.add_argument("--plots", default="metrics/plots", help="PNG plots folder (default: %(default)s)")
    parser.add_argument("--live-dir", default="metrics/train", help="DVCLive folder of the train stage")


def run(args: argparse.Namespace) -> None:
    register_params(args.params)  # first: a registration still under `evaluate:` gets its one line
    p = load_section(args.params, "evaluate", EvaluateParams)
    headline, df, plots = evaluate(p, args.shards, args.recon, args.latents,
                                   getattr(args, "controls", None))  # an EvaluateError: one line
    write_outputs(headline, df, plots, args.metrics, args.table, args.plots, args.live_dir)
    no_function = [m for m in headline.get("skipped", []) if ": functional metrics skipped" in m]
    for msg in headline.get("skipped", []):
        if msg not in no_function:
            print(f"evaluate: {msg}")
    if no_function:  # once, whatever the number of groups
        groups = "; ".join(m.replace(": functional metrics skipped", "") for m in no_function)
        print(f"evaluate: functional metrics (accuracy, retention, agreement) skipped for {groups}; "
              f"weight-space metrics (R2, MSE) are reported; {ENABLE_HINT}")
    print("evaluate: " + summary_line(headline))


def summary_line(h: dict[str, Any]) -> str:
    parts = []
    for name in (VAE, VAE_ENCODER, "pca_refined", "random_refined", PCA, NEAREST, ORACLE, "random_train", "mean"):
        m = h.get(name, {})
        if m:
            parts.append(f"{name}: " + " ".join(f"{k} {m[k]:.3f}" for k in ("retention", "agreement", "r2") if k in m))
    if "fidelity_gain" in h:
        parts.append(f"fidelity_gain {h['fidelity_gain']:.3f}")
    if "compression_ratio" in h:
        parts.append(f"latent {h['latent_size']:.0f} values ({h['compression_ratio']:.2f}x compression)")
    s = h.get("samples", {})
    if s:
        parts.append("samples: " + " ".join(f"{k} {s[k]:.3f}" for k in ("acc_ratio_vs_pool", "novelty_ratio_vs_pool",
                                                                          "functional_novelty_ratio") if k in s))
    return "; ".join(parts)
