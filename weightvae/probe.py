"""What the latent knows: probes that read a model's properties off its representation.

Hyper-representations (Schürholt et al., NeurIPS 2021) judge a weight representation by how well a
*linear* probe reads properties off it: ridge regression in closed form, the regularisation chosen
on the val split, R² on the test split (runs never seen in training). Beside the latent (the encode
stage's code) stand the field's baselines: the raw weights W, the weight statistics s(W) of
Unterthiner et al. (2020) (per learned tensor: mean, variance, 1/25/50/75/99th percentiles) and PCA
of the latent's size fitted on the training split (a linear code as large as the latent). Gradient-
boosted trees (`HistGradientBoostingRegressor`, number of trees chosen on val) on s(W) are the strong
non-linear baseline (R² > 0.98 for test accuracy on 30k-model zoos), on the latent for comparison.

Targets per (task, architecture): test and train accuracy, the generalisation gap (train minus test
accuracy), the epoch, and every numeric hyperparameter the zoo records. A target that cannot be
probed (not recorded, constant, a seed, too few models) is skipped with one line that says why.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from weightvae.io import atomic_path, write_json
from weightvae.params import StageError, add_inputs, load_section, require
from weightvae.progress import Progress
from weightvae.records import group_key
from weightvae.shards import SPLITS, open_shard

REPRESENTATIONS = ("latent", "W", "sW", "pca")
LABELS = {"latent": "latent", "W": "W", "sW": "s(W)", "pca": "PCA"}
PROBES = ("ridge", "gbt")
BUILTIN_TARGETS = ("test_acc", "train_acc", "gen_gap", "epoch")
PERCENTILES = (1, 25, 50, 75, 99)
STATS = ("mean", "var", *(f"p{q}" for q in PERCENTILES))


class ProbeError(StageError):
    """Inputs the probe stage cannot use; the message names the file and what to do."""


@dataclass(frozen=True)
class ProbeParams:
    """`probe:` section of params.yaml."""

    alpha_min: float = 1e-3  # ridge penalties: a log grid from alpha_min to alpha_max (features standardised)
    alpha_max: float = 1e7
    alpha_count: int = 41
    gbt: tuple[str, ...] = ("sW", "latent")  # representations that also get boosted trees
    gbt_max_iter: int = 300  # trees at most; how many are kept is chosen on val
    gbt_learning_rate: float = 0.1
    gbt_max_leaf_nodes: int = 31
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.alpha_min > 0, "probe.alpha_min", self.alpha_min, "need > 0")
        require(self.alpha_max >= self.alpha_min, "probe.alpha_max", self.alpha_max, "need >= probe.alpha_min")
        require(self.alpha_count >= 1, "probe.alpha_count", self.alpha_count, "need >= 1")
        require(set(self.gbt) <= set(REPRESENTATIONS) and len(set(self.gbt)) == len(self.gbt), "probe.gbt",
                list(self.gbt), f"choose distinct representations from {list(REPRESENTATIONS)}")
        require(self.gbt_max_iter >= 1, "probe.gbt_max_iter", self.gbt_max_iter, "need >= 1")
        require(self.gbt_learning_rate > 0, "probe.gbt_learning_rate", self.gbt_learning_rate, "need > 0")
        require(self.gbt_max_leaf_nodes >= 2, "probe.gbt_max_leaf_nodes", self.gbt_max_leaf_nodes, "need >= 2")

    def alphas(self) -> np.ndarray:
        return np.logspace(math.log10(self.alpha_min), math.log10(self.alpha_max), self.alpha_count)


# ----------------------------------------------------------------------------- features


def weight_stats(w: np.ndarray, slices: list[tuple[str, slice]]) -> tuple[np.ndarray, list[str]]:
    """s(W) of Unterthiner et al.: per learned tensor its mean, variance (population, ddof 0) and the
    1/25/50/75/99th percentiles (linear interpolation, numpy's default) over its entries.
    `w` `[N, L]` -> (`[N, 7 * tensors]` float64, feature names `tensor:stat`)."""
    cols, names = [], []
    for name, sl in slices:
        x = np.asarray(w[:, sl], dtype=np.float64)
        if x.shape[1] == 0:
            continue
        cols += [x.mean(1), x.var(1), *np.percentile(x, PERCENTILES, axis=1)]
        names += [f"{name}:{s}" for s in STATS]
    return (np.stack(cols, 1) if cols else np.zeros((len(w), 0))), names


def pca_features(train: np.ndarray, others: dict[str, np.ndarray], slices: list[tuple[str, slice]],
                 k: int) -> dict[str, np.ndarray]:
    """PCA codes of `k` values (at most the training matrix's rank) for the training models and
    `others`, the components fitted on the per-layer standardised training models only."""
    import torch

    from weightvae import metrics, standardize

    t = torch.from_numpy(np.asarray(train, dtype=np.float32))
    mean, scale = standardize.from_weights(t, slices)
    centre, basis = metrics.pca_fit(t, mean, scale, k)
    return {s: metrics.pca_codes(torch.from_numpy(np.asarray(x, dtype=np.float32)), mean, scale, centre,
                                 basis).numpy() for s, x in {"train": train, **others}.items()}


# ----------------------------------------------------------------------------- probes


def r2_score(y: np.ndarray, pred: np.ndarray) -> float:
    """1 - SSE / SST around `y`'s own mean (scikit-learn's `r2_score`); NaN when `y` is constant."""
    sst = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - pred) ** 2).sum()) / sst if sst > 0 else float("nan")


def kendall_tau(y: np.ndarray, pred: np.ndarray) -> float | None:
    """Kendall's tau-b between truth and prediction (None when either is constant)."""
    from scipy.stats import kendalltau

    tau = kendalltau(y, pred).statistic
    return None if tau is None or math.isnan(tau) else float(tau)


class RidgeBasis:
    """Ridge regression on one training matrix, for every target and penalty at once.

    Features are standardised with the training rows' mean and std (a constant feature becomes 0);
    the intercept (the target's training mean) is not penalised. One thin SVD of the standardised
    matrix `X = U S Vᵀ` then gives the coefficients `V diag(s / (s² + alpha)) Uᵀ y` for any target `y`
    and penalty `alpha`, at the cost of min(N, features)² per target: fast for wide W as for narrow s(W).
    """

    def __init__(self, x_train: np.ndarray):
        x = np.asarray(x_train, dtype=np.float64)
        self.mu = x.mean(0)
        sd = x.std(0)
        self.sd = np.where(sd > 0, sd, 1.0)
        u, s, vt = np.linalg.svd((x - self.mu) / self.sd, full_matrices=False)
        keep = s > (s[0] * max(x.shape) * np.finfo(np.float64).eps if len(s) else 0)  # the numerical rank
        self.u, self.s, self.v = u[:, keep], s[keep], vt[keep].T

    def project(self, x: np.ndarray) -> np.ndarray:
        """Rows `x` in the basis of the right singular vectors: `[M, rank]`."""
        return ((np.asarray(x, dtype=np.float64) - self.mu) / self.sd) @ self.v

    def predict(self, y_train: np.ndarray, projected: np.ndarray, alphas: np.ndarray) -> np.ndarray:
        """Predictions `[len(alphas), M]` for rows `projected` (`project`) of a fit to `y_train`."""
        y_mean = float(y_train.mean())
        uty = self.u.T @ (y_train - y_mean)  # [rank]
        shrink = self.s[None, :] / (self.s[None, :] ** 2 + alphas[:, None])  # [A, rank]
        return (shrink * uty[None, :]) @ projected.T + y_mean


@dataclass
class Fit:
    """One probe on one target: test predictions and what was chosen on val."""

    pred: np.ndarray  # [test models]
    val_r2: float  # of the chosen setting
    choice: dict[str, Any]  # {"alpha": ...} or {"iterations": ...}


def ridge_probe(basis: RidgeBasis, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, x_test: np.ndarray,
                alphas: np.ndarray) -> Fit:
    """Ridge fitted on the training rows, the penalty with the best R² on val; test labels never enter."""
    val = basis.predict(y_train, basis.project(x_val), alphas)  # [A, val]
    scores = np.array([r2_score(y_val, v) for v in val])
    best = int(np.nanargmax(scores))
    pred = basis.predict(y_train, basis.project(x_test), alphas[best:best + 1])[0]
    return Fit(pred, float(scores[best]), {"alpha": float(alphas[best]),
                                           "alpha_at_grid_edge": best in (0, len(alphas) - 1) and len(alphas) > 1})


def gbt_probe(p: ProbeParams, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
              x_test: np.ndarray) -> Fit:
    """Seeded gradient-boosted trees on the training rows; the number of trees with the best R² on val.

    One OpenMP thread: the trees are then the same on any machine whatever its core count, and on a
    shared machine OpenMP's spinning threads made a fit 5-7x slower than one thread."""
    from sklearn.ensemble import HistGradientBoostingRegressor
    from threadpoolctl import threadpool_limits

    model = HistGradientBoostingRegressor(max_iter=p.gbt_max_iter, learning_rate=p.gbt_learning_rate,
                                          max_leaf_nodes=p.gbt_max_leaf_nodes, early_stopping=False,
                                          random_state=p.seed)
    with threadpool_limits(limits=1, user_api="openmp"):
        model.fit(x_train, y_train)
        scores = np.array([r2_score(y_val, v) for v in model.staged_predict(x_val)])
        best = int(np.nanargmax(scores))
        pred = next(itertools.islice(model.staged_predict(x_test), best, None))
    return Fit(pred, float(scores[best]), {"iterations": best + 1})


# ----------------------------------------------------------------------------- targets


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def targets(rows: pd.DataFrame) -> tuple[dict[str, np.ndarray], list[str]]:
    """The properties to probe for `rows` (one group, any splits): (name -> float64 values `[N]`, NaN where a
    model lacks it; lines naming each target left out and why). Hyperparameters keep their recorded
    name (nested keys joined with '.'), prefixed `hp.` only where one would shadow a built-in target."""
    out: dict[str, np.ndarray] = {}
    skipped: list[str] = []

    def column(name: str) -> np.ndarray:
        return pd.to_numeric(rows[name], errors="coerce").to_numpy(dtype=np.float64) if name in rows else \
            np.full(len(rows), np.nan)

    acc = {k: column(k) for k in ("test_acc", "train_acc")}
    for name, v in acc.items():
        if np.isnan(v).all():
            skipped.append(f"{name}: skipped, the zoo does not record it")
        else:
            out[name] = v
    gap = acc["train_acc"] - acc["test_acc"]
    if np.isnan(gap).all():
        skipped.append("gen_gap: skipped, needs train_acc and test_acc of the same models, which the zoo does not "
                       "record")
    else:
        out["gen_gap"] = gap
    epoch = column("epoch")
    if np.isnan(epoch).all():
        skipped.append("epoch: skipped, the zoo does not record it")
    else:
        out["epoch"] = epoch
    hps = [_flatten(json.loads(h)) if isinstance(h, str) and h else {} for h in rows.get("hyperparameters", [])]
    keys = sorted({k for h in hps for k in h})
    if not keys:
        skipped.append("hyperparameters: skipped, the zoo records none")
    other = []
    for key in keys:
        values = [h.get(key) for h in hps]
        if not all(v is None or _number(v) for v in values):
            other.append(key)
            continue
        name = f"hp.{key}" if key in BUILTIN_TARGETS else key
        if key.lower().endswith("seed"):
            skipped.append(f"{name}: skipped, a random seed: there is no property to read off")
            continue
        out[name] = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    if other:
        skipped.append(f"{', '.join(other)}: skipped, not numeric")
    return out, skipped


def _unusable(y: dict[str, np.ndarray]) -> str | None:
    """Why a target with values `y[split]` (NaN dropped) cannot be probed, or None."""
    if len(y["train"]) < 2:
        return f"recorded for {len(y['train'])} training models, need 2 or more"
    if np.ptp(y["train"]) == 0:
        return f"constant ({y['train'][0]:g}) on the training split"
    if len(y["val"]) < 2 or np.ptp(y["val"]) == 0:
        return f"constant or missing on the val split ({len(y['val'])} models), so nothing can be chosen on it"
    if len(y["test"]) < 2 or np.ptp(y["test"]) == 0:
        return f"constant or missing on the test split ({len(y['test'])} models), so R² is undefined"
    return None


# ----------------------------------------------------------------------------- the stage


def _latents(path: str | Path, table: pd.DataFrame) -> dict[str, np.ndarray]:
    """{model id: latent}, every model of every split required."""
    from weightvae.latents import read_latents

    if not Path(path).exists():
        raise ProbeError(f"{path}: no latents table; run the encode stage first (dvc repro encode)")
    have = {}
    for lid in sorted(set(table.layout_id)):  # a layout at a time: codes of several lengths do not stack
        rows, z = read_latents(path, layout_id=lid)
        have.update({r["id"]: zi for r, zi in zip(rows, z.numpy(), strict=True)})
    for split in SPLITS:
        missing = [i for i in table.id[table.split == split] if i not in have]
        if missing:
            raise ProbeError(f"{path}: no latents of {len(missing)} {split}-split models (e.g. {missing[0]!r}); "
                             f"probes need train, val and test: set encode.splits to {list(SPLITS)} and rerun encode")
    return have


def probe(p: ProbeParams, shards: str | Path, latents: str | Path) -> tuple[dict[str, Any], pd.DataFrame,
                                                                               dict[str, dict[str, float]]]:
    """Every probe on every target of every (task, architecture) group: (metrics, per-model table of
    test predictions, {row label: {column label: test R²}} for the plot)."""
    from weightvae.layout import Layout

    t0 = time.perf_counter()
    shards = Path(shards)
    table = pd.read_parquet(shards / "models.parquet")
    layouts = {k: Layout.from_dict(v) for k, v in json.loads((shards / "layouts.json").read_text()).items()}
    latent = _latents(latents, table)
    alphas = p.alphas()
    metrics: dict[str, Any] = {"groups": {}, "skipped": []}
    rows: list[pd.DataFrame] = []
    heat: dict[str, dict[str, float]] = {}
    layouts_per = table.groupby(["task", "architecture"]).layout_id.nunique()
    several_groups = table.groupby(["task", "architecture", "layout_id"]).ngroups > 1
    bar = Progress("probe", unit="fits")
    for (task, arch, layout_id), g in table.groupby(["task", "architecture", "layout_id"], sort=True):
        key = group_key(task, arch, layout_id, layouts_per[(task, arch)] > 1)
        parts = {s: g[g.split == s].sort_values("row") for s in SPLITS}
        counts = {s: len(parts[s]) for s in SPLITS}
        if min(counts.values()) == 0:
            metrics["skipped"].append(f"{key}: every target skipped, probes need train, val and test models "
                                      f"(this group has {counts})")
            continue
        layout = layouts[layout_id]
        w = {s: np.asarray(open_shard(shards, s, layout_id)[parts[s].row.to_numpy()], dtype=np.float64)
             for s in SPLITS}
        z = {s: np.stack([latent[i] for i in parts[s].id]).astype(np.float64) for s in SPLITS}
        k = z["train"].shape[1]
        stats = {s: weight_stats(w[s], layout.slices())[0] for s in SPLITS}
        pca = pca_features(w["train"], {s: w[s] for s in ("val", "test")}, layout.slices(), k)
        feats = {"latent": z, "W": w, "sW": stats, "pca": pca}
        values, skipped = targets(pd.concat(parts.values()))
        bounds = np.cumsum([0] + [counts[s] for s in SPLITS])
        group: dict[str, Any] = {"models": counts, "features": {r: int(feats[r]["train"].shape[1])
                                                                for r in REPRESENTATIONS}, "targets": {}}
        usable = {}
        for name, v in values.items():
            per = {s: v[bounds[i]:bounds[i + 1]] for i, s in enumerate(SPLITS)}
            why = _unusable({s: x[~np.isnan(x)] for s, x in per.items()})
            if why is None:
                usable[name] = per
            else:
                skipped.append(f"{name}: skipped, {why}")
        bar.add_total(len(usable) * (len(REPRESENTATIONS) + len(p.gbt)))
        bases: dict[tuple[str, bytes], RidgeBasis] = {}
        for name, per in usable.items():
            has = {s: ~np.isnan(per[s]) for s in SPLITS}
            y = {s: per[s][has[s]] for s in SPLITS}
            out: dict[str, Any] = {"test_models": int(has["test"].sum())}
            test_rows = parts["test"][has["test"]]
            for rep in REPRESENTATIONS:
                x = {s: feats[rep][s][has[s]] for s in SPLITS}
                fits = {}
                cache = (rep, has["train"].tobytes())  # one SVD per representation and set of training rows
                if cache not in bases:
                    bases[cache] = RidgeBasis(x["train"])
                fits["ridge"] = ridge_probe(bases[cache], y["train"], x["val"], y["val"], x["test"], alphas)
                bar.update()
                if rep in p.gbt:
                    fits["gbt"] = gbt_probe(p, x["train"], y["train"], x["val"], y["val"], x["test"])
                    bar.update()
                out[rep] = {}
                for probe_name, f in fits.items():
                    r2 = r2_score(y["test"], f.pred)
                    out[rep][probe_name] = {"r2": r2, "kendall_tau": kendall_tau(y["test"], f.pred),
                                            "val_r2": f.val_r2, **f.choice}
                    heat.setdefault(f"{key}: {name}" if several_groups else name, {})[
                        f"{LABELS[rep]} {probe_name}"] = r2
                    rows.append(pd.DataFrame({"group": key, "id": test_rows.id.to_numpy(),
                                              "run_id": test_rows.run_id.to_numpy(),
                                              "epoch": test_rows.epoch.to_numpy(), "target": name,
                                              "representation": rep, "probe": probe_name, "true": y["test"],
                                              "predicted": f.pred}))
            group["targets"][name] = out
        group["skipped"] = skipped
        metrics["skipped"] += [f"{key}: {s}" for s in skipped]
        metrics["groups"][key] = group
    bar.close()
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    columns = ["group", "id", "run_id", "epoch", "target", "representation", "probe", "true", "predicted"]
    df = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=columns)
    return metrics, df, heat


def write_outputs(metrics: dict[str, Any], df: pd.DataFrame, heat: dict[str, dict[str, float]],
                  metrics_path: str | Path, table_path: str | Path, plot_path: str | Path) -> None:
    """The metrics, the per-model table and the plot, each atomically; all three always exist."""
    from weightvae import plots as P

    write_json(metrics_path, _finite(metrics))
    with atomic_path(table_path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    title = "Probes: R² on the test split"
    if heat:
        order = [f"{LABELS[r]} {pr}" for pr in PROBES for r in REPRESENTATIONS]
        P.probe_r2_heatmap(heat, plot_path, [c for c in order if any(c in row for row in heat.values())], title)
    else:
        P.message(plot_path, title, "nothing to probe: " + ("; ".join(metrics["skipped"]) or "no models"))


def _finite(obj: Any) -> Any:
    """NaN and infinities as null: JSON has no NaN, and DVC reads metrics as strict JSON."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def summary_lines(metrics: dict[str, Any]) -> list[str]:
    """One line per group: each target's test R² of the latent's ridge probe and the best baseline."""
    lines = []
    for key, g in metrics["groups"].items():
        parts = []
        for name, t in g["targets"].items():
            base = {f"{LABELS[r]} {pr}": v["r2"] for r in REPRESENTATIONS if r != "latent" for pr, v in t[r].items()}
            best = max(base, key=lambda b: -math.inf if math.isnan(base[b]) else base[b])
            parts.append(f"{name} {t['latent']['ridge']['r2']:.3f} (best baseline {best} {base[best]:.3f})")
        m = g["models"]
        lines.append(f"{key} (train/val/test {m['train']}/{m['val']}/{m['test']}): latent ridge R² "
                     + ("; ".join(parts) or "no targets"))
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_inputs(parser, "params", "shards", "latents")
    parser.add_argument("--metrics", default="metrics/probe.json", help="probe metrics (default: %(default)s)")
    parser.add_argument("--table", default="metrics/probe_models.csv",
                        help="per-model test predictions (default: %(default)s)")
    parser.add_argument("--plot", default="metrics/plots/probe_r2.png", help="R² heatmap (default: %(default)s)")


def run(args: argparse.Namespace) -> None:
    from weightvae.registry import register_params

    register_params(args.params)  # the user's architectures and tasks (`registry:`)
    p = load_section(args.params, "probe", ProbeParams)
    metrics, df, heat = probe(p, args.shards, args.latents)  # a ProbeError is one line (run_command)
    write_outputs(metrics, df, heat, args.metrics, args.table, args.plot)
    for line in metrics["skipped"]:
        print(f"probe: {line}")
    for line in summary_lines(metrics):
        print(f"probe: {line}")
