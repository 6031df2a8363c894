import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from weightvae.plots import accuracy_histograms, accuracy_scatter, layer_r2_bars, training_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def check_png(path):
    assert path.read_bytes()[:8] == PNG_MAGIC
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp files left


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
    accuracy_scatter(df, path)  # overwrites in place, no hue
    check_png(path)


def test_layer_r2_bars_clips_very_negative(tmp_path):
    per_layer = {"vae": {"conv1.weight": 0.4, "conv1.bias": -250.0, "fc2.weight": 0.9},
                 "noise_0.1": {"conv1.weight": 0.99, "conv1.bias": 0.99, "fc2.weight": 0.99},
                 "mean": {"conv1.weight": 0.0, "fc2.weight": 0.0}}  # missing layer is left blank
    path = tmp_path / "r2.png"
    layer_r2_bars(per_layer, path)
    check_png(path)


def test_accuracy_histograms(tmp_path):
    r = rng()
    groups = {"originals": r.uniform(0.3, 0.97, 300), "reconstructions": r.uniform(0.05, 0.2, 300),
              "samples": r.uniform(0, 1, 64).tolist(), "empty": []}
    path = tmp_path / "hist.png"
    accuracy_histograms(groups, path)
    check_png(path)


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
