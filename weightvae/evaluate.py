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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from weightvae import metrics as M
from weightvae.archs import ARCHITECTURES
from weightvae.canonical import GROUPS, random_permutation
from weightvae.io import atomic_path, write_json
from weightvae.layout import Layout
from weightvae.params import load_section, require
from weightvae.progress import Progress
from weightvae.reconstruct import file_name
from weightvae.registry import ENABLE_HINT, check_spec, register
from weightvae.tasks import TASKS, get_task

VAE = "vae"
NEAREST = "nearest_train"
ORACLE = "oracle_train"


@dataclass(frozen=True)
class EvaluateParams:
    """`evaluate:` section of params.yaml."""

    split: str = "test"
    noise_amplitudes: tuple[float, ...] = (0.1, 0.5)
    seed: int = 0
    architectures: dict[str, str] = field(default_factory=dict)  # name -> "module:builder" (weightvae.registry)
    tasks: dict[str, str] = field(default_factory=dict)  # name -> "module:loader"

    def __post_init__(self) -> None:
        for kind in ("architectures", "tasks"):
            for name, spec in getattr(self, kind).items():
                check_spec(f"evaluate.{kind}.{name}", spec)
        require(self.split in ("val", "test"), "evaluate.split", self.split, "choose val or test")
        require(all(a > 0 for a in self.noise_amplitudes), "evaluate.noise_amplitudes",
                list(self.noise_amplitudes), "amplitudes must be > 0 (relative to each layer's std)")


def _load_flat(layout: Layout, path: Path) -> torch.Tensor:
    return layout.flatten(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])


def _group_key(task: str, arch: str) -> str:
    return f"{task}/{arch}"


def evaluate(p: EvaluateParams, shards: str | Path, recon_dir: str | Path) -> tuple[dict[str, Any], pd.DataFrame,
                                                                                       dict[str, Any]]:
    """Returns (headline metrics, per-model table, data for the plots)."""
    shards, recon_dir = Path(shards), Path(recon_dir)
    table = pd.read_parquet(shards / "models.parquet")
    layouts = {k: Layout.from_dict(v) for k, v in json.loads((shards / "layouts.json").read_text()).items()}
    shard = {s: np.load(shards / f"{s}.npy", mmap_mode="r") for s in ("train", p.split)}
    gen = torch.Generator().manual_seed(p.seed)
    samples = _load_samples(recon_dir)
    rows: list[dict[str, Any]] = []
    headline: dict[str, Any] = {"groups": {}}
    plots: dict[str, Any] = {"per_layer_r2": {}, "acc": {}}
    skipped: list[str] = []
    test_all = table[table.split == p.split]
    bar = Progress("evaluate", unit="networks")  # each test model once per method
    for (task, arch, layout_id), test in test_all.groupby(["task", "architecture", "layout_id"], sort=True):
        layout = layouts[layout_id]
        n = layout.length
        train = table[(table.split == "train") & (table.task == task) & (table.architecture == arch)
                      & (table.layout_id == layout_id)]
        if len(train) == 0:
            skipped.append(f"{task}/{arch}: no training-split models")
            continue
        slices = [(e.name, slice(e.offset, e.offset + e.numel)) for e in layout.learned]
        orig = torch.from_numpy(np.asarray(shard[p.split][test.row.to_numpy(), :n], dtype=np.float32))
        train_w = torch.from_numpy(np.asarray(shard["train"][np.sort(train.row.to_numpy()), :n], dtype=np.float32))
        train = train.sort_values("row")
        mean = train_w.mean(0)
        std = M.layer_std(train_w, slices)
        recon = torch.stack([_load_flat(layout, recon_dir / p.split / file_name(i)) for i in test.id])

        near, _, _ = M.nearest_train_baseline(orig, train_w, std)
        cands = {VAE: recon, "mean": M.mean_baseline(train_w, len(orig))}
        for a in p.noise_amplitudes:
            cands[f"noise_{a:g}"] = M.noise_baseline(orig, std, a, gen)
        cands["random_train"] = M.random_train_baseline(test.reset_index(drop=True), train.reset_index(drop=True),
                                                        train_w, gen)
        cands[NEAREST] = near

        key = _group_key(task, arch)
        g: dict[str, Any] = {"models": len(test), "train_models": len(train), "methods": {}}
        functional = task in TASKS and arch in ARCHITECTURES
        if functional:
            data = get_task(task)
            kwargs = json.loads(test.arch_kwargs.iloc[0]) if isinstance(test.arch_kwargs.iloc[0], str) else {}
            bufs = [json.loads(b) if isinstance(b, str) else {} for b in test.buffers]
            pred_orig = _predictions(arch, kwargs, layout, bufs, orig, data.x_test)
            acc_orig = M.accuracy(pred_orig, data.y_test)
            eps = 1.0 / len(data.y_test)
            train_bufs = [json.loads(b) if isinstance(b, str) else {} for b in train.buffers]
            pred_train = _predictions(arch, kwargs, layout, train_bufs, train_w, data.x_test)
            cands[ORACLE] = train_w[M.most_agreeing(pred_orig, pred_train)]
        bar.add_total(len(orig) * len(cands))
        for name, w in cands.items():
            r2 = M.r2(orig, w, mean, slices)
            mse = M.mse(orig, w)
            m: dict[str, Any] = {"r2": r2["overall"], "mse": float(mse.mean())}
            per_model: dict[str, Any] = {"mse": mse}
            if functional:
                pred = _predictions(arch, kwargs, layout, bufs, w, data.x_test)
                acc = M.accuracy(pred, data.y_test)
                agree = M.agreement(pred, pred_orig)
                per_model.update(acc=acc, agreement=agree)
                m.update(acc=float(acc.mean()), retention=float((acc / acc_orig.clamp_min(eps)).mean()),
                         agreement=float(agree.mean()))
            g["methods"][name] = m
            plots["per_layer_r2"].setdefault(name, {}).update(
                {f"{key}:{k}" if len(test_all.architecture.unique()) > 1 else k: v for k, v in r2["per_layer"].items()})
            for j, (_, row) in enumerate(test.iterrows()):
                rows.append({"group": key, "id": row.id, "run_id": row.run_id, "epoch": row.epoch, "method": name,
                             "original_acc": float(acc_orig[j]) if functional else None,
                             **{k: float(v[j]) for k, v in per_model.items()}})
            bar.update(len(w))
        if functional:
            ar, an = per_model_agree(rows, key, VAE), per_model_agree(rows, key, NEAREST)
            g["fidelity_gain"] = M.fidelity_gain(ar, an, eps)
            g["fidelity_gain_median"] = float(M.fidelity_gains(ar, an, eps).median())
            g["fidelity_gain_vs_oracle"] = M.fidelity_gain(ar, per_model_agree(rows, key, ORACLE), eps)
            g["original_acc"] = float(acc_orig.mean())
            plots["acc"].setdefault("originals", []).extend(acc_orig.tolist())
        else:
            unknown = [f"{k} {v!r}" for k, v, known in (("task", task, TASKS), ("architecture", arch, ARCHITECTURES))
                       if v not in known]
            skipped.append(f"{key}: functional metrics skipped (unknown {' and '.join(unknown)})")
        g["samples"] = _samples(samples, layout, arch, task, train, train_w, std,
                                pred_train if functional else None, torch.Generator().manual_seed(p.seed))
        if g["samples"].get("acc") is not None:
            plots["acc"].setdefault("samples", []).extend(g["samples"].pop("acc"))
        headline["groups"][key] = g
    bar.close()
    headline.update(_overall(headline["groups"]))
    if skipped:
        headline["skipped"] = skipped
    df = pd.DataFrame(rows)
    for name in (VAE, NEAREST, ORACLE, "mean"):
        if len(df) and "acc" in df:
            plots["acc"][name] = df[df.method == name].acc.dropna().tolist()
    return headline, df, plots


def _predictions(arch: str, kwargs: dict[str, Any], layout: Layout, buffers: list[dict[str, Any]], w: torch.Tensor,
                 x: torch.Tensor) -> torch.Tensor:
    """Predictions `[M, N]` of the networks given as flat vectors `w` `[M, length]` of one layout."""
    return M.predictions(arch, kwargs, [layout.unflatten(v, b) for v, b in zip(w, buffers, strict=True)], x)


def per_model_agree(rows: list[dict[str, Any]], group: str, method: str) -> torch.Tensor:
    return torch.tensor([r["agreement"] for r in rows if r["group"] == group and r["method"] == method],
                        dtype=torch.float64)


def _load_samples(recon_dir: Path) -> list[dict[str, Any]]:
    """Every sampled network written by reconstruct, loaded once, in file-name order."""
    return [torch.load(f, map_location="cpu", weights_only=True) for f in sorted((recon_dir / "samples").glob("*.pt"))]


def _samples(samples: list[dict[str, Any]], layout: Layout, arch: str, task: str, train: pd.DataFrame,
             train_w: torch.Tensor, std: torch.Tensor, pred_train: torch.Tensor | None,
             gen: torch.Generator) -> dict[str, Any]:
    """Accuracy and novelty of sampled networks; `pred_train`: training models' test predictions
    (None when the task or architecture is unknown: weight-space novelty only).

    Beside them, `permuted_copies`: as many random training networks with their hidden units
    shuffled. They are copies, yet far away in weight space; the functional novelty sees through
    that, the weight-space ratio does not.
    """
    recs = [r for r in samples if (r["model_properties"]["layout_id"], r["model_properties"]["task"],
                                   r["model_properties"]["architecture"]["name"]) == (layout.layout_id, task, arch)]
    if not recs:
        return {}
    w = torch.stack([layout.flatten(r["state_dict"]) for r in recs])
    run_ids = train.run_id.tolist()
    nov = M.novelty_ratio(w, train_w, std, run_ids)
    out: dict[str, Any] = {"count": len(recs), "novelty_ratio": nov["ratio_median"],
                           "nearest_train_distance_median": nov["sample_nn_median"],
                           "train_nn_distance_median": nov["train_nn_median"]}
    if pred_train is not None:
        data = get_task(task)
        kwargs = recs[0]["model_properties"]["architecture"]["kwargs"]
        zoo_mean = float(train.test_acc.mean())
        train_dis = M.train_nn_disagreement(pred_train, run_ids)
        pred = M.predictions(arch, kwargs, [r["state_dict"] for r in recs], data.x_test)
        acc = M.accuracy(pred, data.y_test)
        fnov = M.functional_novelty_ratio(pred, pred_train, train_dis)
        out.update(acc_mean=float(acc.mean()), acc_max=float(acc.max()), zoo_acc_mean=zoo_mean,
                   acc_ratio=float(acc.mean()) / zoo_mean, functional_novelty_ratio=fnov["ratio_median"],
                   disagreement_with_nearest_train_median=fnov["sample_disagreement_median"],
                   train_nn_disagreement_median=train_dis, acc=acc.tolist())
        if arch in GROUPS:
            idx = torch.randint(len(train_w), (len(recs),), generator=gen)
            copies = [random_permutation(arch, layout.unflatten(train_w[i], {}), gen) for i in idx]
            pred_c = M.predictions(arch, kwargs, copies, data.x_test)
            out["permuted_copies"] = {
                "acc_ratio": float(M.accuracy(pred_c, data.y_test).mean()) / zoo_mean,
                "novelty_ratio": M.novelty_ratio(torch.stack([layout.flatten(c) for c in copies]), train_w, std,
                                                 run_ids)["ratio_median"],
                "functional_novelty_ratio": M.functional_novelty_ratio(pred_c, pred_train, train_dis)["ratio_median"]}
    return out


def _overall(groups: dict[str, Any]) -> dict[str, Any]:
    """Model-weighted means over groups of each headline number."""
    out: dict[str, Any] = {}
    total = sum(g["models"] for g in groups.values()) or 1
    methods = sorted({m for g in groups.values() for m in g["methods"]})
    for name in methods:
        vals: dict[str, float] = {}
        for k in ("acc", "retention", "agreement", "r2", "mse"):
            pairs = [(g["methods"][name][k], g["models"]) for g in groups.values()
                     if name in g["methods"] and g["methods"][name].get(k) is not None]
            if pairs:
                vals[k] = sum(v * n for v, n in pairs) / sum(n for _, n in pairs)
        out[name] = vals
    for k in ("fidelity_gain", "fidelity_gain_vs_oracle"):
        fg = [(g[k], g["models"]) for g in groups.values() if k in g]
        if fg:
            out[k] = sum(v * n for v, n in fg) / sum(n for _, n in fg)
    samples = [g["samples"] for g in groups.values() if g.get("samples")]
    if samples:
        s_out: dict[str, float] = {}
        for k in ("acc_ratio", "novelty_ratio", "functional_novelty_ratio", "acc_mean"):
            vals = [s[k] for s in samples if s.get(k) is not None]
            if vals:
                s_out[k] = float(np.mean(vals))
        out["samples"] = s_out
    out["models"] = total
    return out


def write_outputs(headline: dict[str, Any], df: pd.DataFrame, plots: dict[str, Any], metrics_path: str | Path,
                  table_path: str | Path, plots_dir: str | Path, live_dir: str | Path | None) -> None:
    from weightvae import plots as P

    write_json(metrics_path, headline)
    with atomic_path(table_path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    vae = df[df.method == VAE] if len(df) else df
    if len(vae) and vae.original_acc.notna().any():
        scatter = pd.concat([vae, df[df.method == NEAREST]]).rename(columns={"acc": "reconstructed_acc"})
        P.accuracy_scatter(scatter, plots_dir / "accuracy_scatter.png", hue="method")
    keep = [m for m in (VAE, "mean", NEAREST, ORACLE, "random_train") if m in plots["per_layer_r2"]]
    keep += [m for m in plots["per_layer_r2"] if m.startswith("noise_")][:1]
    if keep:
        P.layer_r2_bars({m: plots["per_layer_r2"][m] for m in keep}, plots_dir / "layer_r2.png")
    if plots["acc"]:
        P.accuracy_histograms(plots["acc"], plots_dir / "accuracy_histograms.png")
    if live_dir is not None:
        curves = _training_curves(Path(live_dir))
        if curves is not None:
            P.training_curves(curves, plots_dir / "training_curves.png", logy=True)


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
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    parser.add_argument("--shards", default="model_data/shards", help="ingest output (default: %(default)s)")
    parser.add_argument("--recon", default="model_data/reconstructions",
                        help="reconstruct output (default: %(default)s)")
    parser.add_argument("--metrics", default="metrics/eval.json", help="headline metrics (default: %(default)s)")
    parser.add_argument("--table", default="metrics/eval_models.csv", help="per-model table (default: %(default)s)")
    parser.add_argument("--plots", default="metrics/plots", help="PNG plots folder (default: %(default)s)")
    parser.add_argument("--live-dir", default="metrics/train", help="DVCLive folder of the train stage")


def run(args: argparse.Namespace) -> None:
    p = load_section(args.params, "evaluate", EvaluateParams)
    register(p.architectures, p.tasks)
    headline, df, plots = evaluate(p, args.shards, args.recon)
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
    for name in (VAE, NEAREST, ORACLE, "random_train", "mean"):
        m = h.get(name, {})
        if m:
            parts.append(f"{name}: " + " ".join(f"{k} {m[k]:.3f}" for k in ("retention", "agreement", "r2") if k in m))
    if "fidelity_gain" in h:
        parts.append(f"fidelity_gain {h['fidelity_gain']:.3f}")
    s = h.get("samples", {})
    if s:
        parts.append("samples: " + " ".join(f"{k} {s[k]:.3f}" for k in ("acc_ratio", "novelty_ratio",
                                                                          "functional_novelty_ratio") if k in s))
    return "; ".join(parts)
