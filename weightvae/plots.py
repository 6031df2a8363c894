"""PNG plots of evaluation results, rendered offline.

Plain data in (DataFrames, dicts), one PNG out, written atomically. Figures are built with
`matplotlib.figure.Figure` on the Agg canvas directly, never through `pyplot`, so nothing
here touches matplotlib's global backend or state, and nothing needs a display or network.
PNG metadata carries no software version or timestamp, so identical inputs on the same
matplotlib and font set give identical bytes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from weightvae.io import atomic_path

DPI = 120
#: R^2 of a poor reconstruction can be -100; bars are clipped here and labelled with their value.
R2_FLOOR = -1.0


def _figure(size: tuple[float, float]) -> tuple[Figure, Axes]:
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Figure, path: str | os.PathLike) -> None:
    """Write the PNG to a temporary sibling, then rename it into place."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def accuracy_scatter(df: pd.DataFrame, path: str | os.PathLike, x: str = "original_acc",
                     y: str = "reconstructed_acc", hue: str | None = None, title: str | None = None) -> None:
    """Test accuracy of each original (x) against its reconstruction or baseline (y), with the
    diagonal; `hue` names a column (e.g. the method) that colours the points."""
    fig, ax = _figure((5.5, 5))
    groups = [(None, df)] if hue is None else list(df.groupby(hue, sort=True))
    for (name, g), color in zip(groups, _colors(len(groups))):
        ax.scatter(g[x], g[y], s=12, alpha=0.6, color=color, label=None if name is None else f"{name} (n={len(g)})",
                   linewidths=0)
    ax.plot([0, 1], [0, 1], color="0.4", lw=1, ls="--", label="y = x")
    ax.set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel=x, ylabel=y, aspect="equal", title=title or f"{y} vs {x}")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    _save(fig, path)


def layer_r2_bars(per_layer: Mapping[str, Mapping[str, float]], path: str | os.PathLike,
                  title: str = "R² per layer (vs train mean)") -> None:
    """Grouped bars of per-layer R^2, one colour per method: `{method: {layer: r2}}`.

    Bars below `R2_FLOOR` are clipped there and labelled with their true value.
    """
    methods = list(per_layer)
    layers = list(dict.fromkeys(layer for m in methods for layer in per_layer[m]))  # first-seen order
    fig, ax = _figure((max(5.0, 1.0 + 0.35 * len(layers) * max(1, len(methods))), 4.5))
    width = 0.8 / max(1, len(methods))
    pos = np.arange(len(layers))
    for i, (method, color) in enumerate(zip(methods, _colors(len(methods)))):
        vals = np.array([per_layer[method].get(layer, np.nan) for layer in layers], dtype=float)
        xs = pos - 0.4 + width * (i + 0.5)
        # The edge keeps a bar of height 0 (the mean model) visible as a line.
        ax.bar(xs, np.maximum(vals, R2_FLOOR), width, color=color, edgecolor=color, linewidth=1.5, label=method)
        for xi, v in zip(xs, vals):
            if v < R2_FLOOR:
                ax.annotate(f"{v:.3g}", (xi, R2_FLOOR), ha="center", va="bottom", fontsize="x-small", rotation=90)
    ax.axhline(0, color="0.3", lw=0.8)
    ax.axhline(1, color="0.3", lw=0.8, ls=":")
    ax.set(xticks=pos, ylim=(R2_FLOOR - 0.05, 1.05), ylabel="R²", title=title)
    ax.set_xticklabels(layers, rotation=30, ha="right")
    fig.legend(loc="outside right upper", fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def accuracy_histograms(groups: Mapping[str, Sequence[float] | np.ndarray], path: str | os.PathLike,
                        bins: int = 40, title: str = "Test accuracy") -> None:
    """Overlaid step histograms of accuracy for originals, reconstructions, samples and
    baselines, on shared bins over [0, 1]; each as a share of its own models, so groups of
    different sizes compare."""
    fig, ax = _figure((6.5, 4.5))
    edges = np.linspace(0, 1, bins + 1)
    for (name, values), color in zip(groups.items(), _colors(len(groups))):
        v = np.asarray(values, dtype=float).ravel()
        v = v[np.isfinite(v)]
        if len(v) == 0:
            continue
        ax.hist(v, bins=edges, weights=np.full(len(v), 1 / len(v)), histtype="step", lw=1.6, color=color,
                label=f"{name} (n={len(v)}, mean {v.mean():.3f})")
    ax.set(xlim=(0, 1), xlabel="accuracy", ylabel="share of models", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    _save(fig, path)


def training_curves(df: pd.DataFrame, path: str | os.PathLike, x: str | None = None,
                    metrics: Sequence[str] | None = None, logy: bool = False, title: str = "Training") -> None:
    """One line per metric column against `x` (default: `step` if present, else `epoch`).

    `metrics` defaults to every other numeric column. Rows missing a metric are skipped per
    line, so per-step train and per-epoch validation logs can share one table.
    """
    if x is None:
        x = next((c for c in ("step", "epoch") if c in df.columns), None)
        if x is None:
            raise ValueError(f"no 'step' or 'epoch' column; columns: {list(df.columns)}; pass x=")
    if metrics is None:
        metrics = [c for c in df.select_dtypes("number").columns if c not in (x, "step", "epoch")]
    if not metrics:
        raise ValueError(f"no metric columns to plot besides {x!r}; columns: {list(df.columns)}")
    fig, ax = _figure((6.5, 4.5))
    for name, color in zip(metrics, _colors(len(metrics))):
        d = df[[x, name]].dropna().sort_values(x)
        ax.plot(d[x], d[name], color=color, lw=1.4, marker="o" if len(d) <= 30 else None, ms=3, label=name)
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel=x, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    _save(fig, path)


def message(path: str | os.PathLike, title: str, text: str) -> None:
    """A figure holding only `title` and `text`: the stand-in for a plot with nothing to show,
    so an output that `dvc.yaml` declares always exists and says why it is empty."""
    import textwrap

    fig, ax = _figure((6.5, 3.0))
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, textwrap.fill(text, 80), ha="center", va="center", fontsize="small", wrap=True)
    _save(fig, path)


def probe_r2_heatmap(r2: Mapping[str, Mapping[str, float]], path: str | os.PathLike,
                     columns: Sequence[str] | None = None, title: str = "Probes: R² on the test split") -> None:
    """A table of R² as coloured cells, `{row (target): {column (representation and probe): r2}}`, each
    cell labelled with its value. Colours run over [0, 1]: a negative R² (worse than predicting the
    mean) is drawn as 0 but keeps its true value in the label; a missing cell stays blank."""
    rows = list(r2)
    if columns is None:
        columns = list(dict.fromkeys(c for r in rows for c in r2[r]))
    values = np.array([[r2[r].get(c, np.nan) for c in columns] for r in rows], dtype=float)
    fig, ax = _figure((max(5.0, 2.2 + 1.05 * len(columns)), max(2.5, 1.4 + 0.42 * len(rows))))
    ax.imshow(np.ma.masked_invalid(np.clip(values, 0.0, 1.0)), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize="small",
                    color="black" if v > 0.6 else "white")
    ax.set_xticks(np.arange(len(columns)), labels=list(columns), rotation=30, ha="right")
    ax.set_yticks(np.arange(len(rows)), labels=rows)
    ax.set_title(title)
    _save(fig, path)
