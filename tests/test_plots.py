import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from weightvae.plots import (
    accuracy_histograms,
    accuracy_scatter,
    layer_r2_bars,
    message,
    probe_r2_heatmap,
    training_curves,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def check_png(path):
    assert path.read_bytes()[:8] == PNG_MAGIC
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp files left


def tab10(i: int, alpha: float = 1.0) -> np.ndarray:
    """Colour i of tab10 as drawn on white with `alpha`."""
    from matplotlib import colormaps

    return alpha * np.array(colormaps["tab10"](i)[:3]) + (1 - alpha)


def pixels(path, rgb: np.ndarray, region: tuple[slice, slice] | None = None) -> int:
    """Pixels of colour `rgb` (within 0.06 per channel) in the PNG, optionally in a (rows, cols) region."""
    img = matplotlib.image.imread(path)[..., :3]
    if region is not None:
        img = img[region]
    return int((np.abs(img - rgb).max(-1) < 0.06).sum())


def rng():
    return np.random.default_rng(0)


def test_accuracy_scatter(tmp_path):
    r = rng()
    orig = r.uniform(0.1, 0.97, 60)
    df = pd.DataFrame({"original_acc": np.tile(orig, 2),
                       "reconstructed_acc": np.concatenate([orig - 0.02, np.full(60, 0.1)]),
                       "method": ["vae"] * 60 + ["mean"] * 60})
    path = tmp_path / "out" / "scatter.png"  # parent folder is created
    accuracy_scatter(df, path, hue="method")
    check_png(path)
    # groups sorted by name, tab10 colours in order: "mean" blue, "vae" orange; both drawn
    assert pixels(path, tab10(0, 0.6)) > 100 and pixels(path, tab10(1, 0.6)) > 100
    accuracy_scatter(df, path)  # overwrites in place, no hue: one colour
    check_png(path)
    assert pixels(path, tab10(0, 0.6)) > 100 and pixels(path, tab10(1, 0.6)) == 0
    # the points land where the data says: all at (0.05, 0.05) puts blue only in the lower-left of the figure
    corner = pd.DataFrame({"original_acc": [0.05], "reconstructed_acc": [0.05]})
    accuracy_scatter(corner, path)
    h, w = matplotlib.image.imread(path).shape[:2]
    assert pixels(path, tab10(0, 0.6), (slice(h // 2, h), slice(0, w // 2))) > 3
    assert pixels(path, tab10(0, 0.6), (slice(0, h // 2), slice(0, w))) == 0


def test_layer_r2_bars_clips_very_negative(tmp_path):
    per_layer = {"vae": {"conv1.weight": 0.4, "conv1.bias": -250.0, "fc2.weight": 0.9},
                 "noise_0.1": {"conv1.weight": 0.99, "conv1.bias": 0.99, "fc2.weight": 0.99},
                 "mean": {"conv1.weight": 0.0, "fc2.weight": 0.0}}  # missing layer is left blank
    path = tmp_path / "r2.png"
    layer_r2_bars(per_layer, path)
    check_png(path)
    assert all(pixels(path, tab10(i)) > 50 for i in range(3))  # a bar colour per method
    layer_r2_bars({"vae": per_layer["vae"]}, path)
    assert pixels(path, tab10(0)) > 50 and pixels(path, tab10(1)) == pixels(path, tab10(2)) == 0


def test_accuracy_histograms(tmp_path):
    r = rng()
    groups = {"originals": r.uniform(0.3, 0.97, 300), "reconstructions": r.uniform(0.05, 0.2, 300),
              "samples": r.uniform(0, 1, 64).tolist(), "empty": []}
    path = tmp_path / "hist.png"
    accuracy_histograms(groups, path)
    check_png(path)
    assert all(pixels(path, tab10(i)) > 50 for i in range(3))
    assert pixels(path, tab10(3)) == 0  # the empty group draws nothing


def test_training_curves_and_determinism(tmp_path):
    steps = np.arange(1, 201)
    val = np.where(steps % 50 == 0, 2 / steps, np.nan)
    df = pd.DataFrame({"step": steps, "train/loss": 1 / steps, "val/loss": val})
    a, b = tmp_path / "a" / "curves.png", tmp_path / "b" / "curves.png"
    training_curves(df, a, logy=True)
    training_curves(df, b, logy=True)
    check_png(a)
    assert a.read_bytes() == b.read_bytes()
    with pytest.raises(ValueError, match="step"):
        training_curves(pd.DataFrame({"loss": [1.0]}), tmp_path / "c.png")


def test_message_stands_in_for_an_empty_plot(tmp_path):
    path = tmp_path / "scatter.png"
    message(path, "Test accuracy", "no functional metrics: digits/mynet: unknown architecture 'mynet'")
    check_png(path)
    dark = (matplotlib.image.imread(path)[..., :3].max(-1) < 0.3).sum()
    assert dark > 200  # the title and the reason are written on it


def test_probe_r2_heatmap_colours_cells_by_r2_and_floors_negative_ones(tmp_path):
    from matplotlib import colormaps

    viridis = colormaps["viridis"]
    path = tmp_path / "probe.png"
    r2 = {"test_acc": {"latent ridge": 1.0, "W ridge": -3.0}, "epoch": {"latent ridge": 1.0}}  # a blank cell
    probe_r2_heatmap(r2, path, columns=["latent ridge", "W ridge"])
    check_png(path)
    top = np.array(viridis(1.0)[:3])
    bottom = np.array(viridis(0.0)[:3])
    # two cells at R² 1, one (R² -3) drawn as 0: twice the area (less the labels), the blank cell neither
    assert pixels(path, bottom) > 500 and 1.8 < pixels(path, top) / pixels(path, bottom) < 2.2
    probe_r2_heatmap({"test_acc": {"latent ridge": 0.0}}, path)
    assert pixels(path, top) == 0 and pixels(path, bottom) > 500
