"""`train.latent_dim: auto`: the code's size follows the network (`train.compression` weights per latent value)."""

import pytest

from weightvae.config import TrainParams, latent_size, resolve_latent
from weightvae.params import ParamsError, build
from weightvae.train import build_module


@pytest.mark.parametrize("params, length, expected", [
    ({}, 1706, 106),  # the default zoo: 1,706 / 16.0 = 106.6, rounded down: 16.09x
    ({}, 830, 51),  # 830 / 16 = 51.9
    ({"compression": 4.0}, 1706, 426),  # 426.5: the linear codec's 426 values
    ({"compression": 20.0}, 590, 29),  # 29.5
    ({"compression": 0.3}, 3, 10),  # 3 / 0.3 = 9.999999999999998 in floats: still 10
    ({"compression": 1.0}, 275, 275),
    ({"compression": 1e6}, 275, 1),  # never 0
    ({"latent_dim": 100}, 1706, 100),  # an explicit count stays possible
])
def test_latent_size(params, length, expected):
    assert latent_size(build(TrainParams, params, "train"), length) == expected


def test_auto_is_the_default_and_gives_the_default_zoo_its_106_values():
    assert TrainParams().latent_dim == "auto" and TrainParams().compression == 16.0
    lines = []
    p = resolve_latent(TrainParams(accelerator="cpu"), 1706, log=lines.append)
    assert p.latent_dim == 106 and lines == [
        ("train: latent_dim auto: 106 latent values for the longest layout's 1,706 learned weights "
         "(train.compression 16: 16.09x)")]
    assert build_module(TrainParams(codec="linear", accelerator="cpu"), 1706, ["a"], 4).cfg.latent_dim == 106


@pytest.mark.parametrize("params, message", [
    ({"latent_dim": "big"}, "train.latent_dim: 'big' is not allowed; expected"),
    ({"latent_dim": 0}, "train.latent_dim: 0 is not allowed; need >= 1"),
    ({"compression": 0}, "train.compression: 0.0 is not allowed; need > 0"),
])
def test_bad_sizes_are_named(params, message):
    with pytest.raises(ParamsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build(TrainParams, params, "train")
