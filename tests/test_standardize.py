"""Per-layer standardisation and its floor: a layer (nearly) constant in the train split must not
be blown up by ~1e8 in val/test, where it varies."""

import json

import pytest
import torch
from torch import nn

from weightvae.data import ZooDataset
from weightvae.ingest import IngestParams, ingest, split_of
from weightvae.standardize import REL_FLOOR, from_stats, from_weights, layer_scale


def test_layer_scale_by_hand():
    assert layer_scale(0.0, 0.5) == 0.5  # an ordinary layer: its std
    assert layer_scale(3.0, 0.0) == pytest.approx(REL_FLOOR * 3.0)  # constant 3 in train: 1 % of its magnitude
    assert layer_scale(-4.0, 1e-9) == pytest.approx(REL_FLOOR * 4.0)  # nearly constant: floored too
    assert layer_scale(0.0, 0.0) == 1.0  # all zeros in train: not scaled at all
    assert layer_scale(0.3, 0.4) == 0.4 > REL_FLOOR * 0.5


def test_vectors_from_stats_and_from_weights_agree():
    train = torch.tensor([[1.0, 3.0, 5.0, 5.0], [3.0, 1.0, 5.0, 5.0]], dtype=torch.float64)
    slices = [("a", slice(0, 2)), ("b", slice(2, 4))]
    mean, scale = from_weights(train, slices)
    assert mean.tolist() == [2.0, 2.0, 5.0, 5.0] and scale.tolist() == pytest.approx([1.0, 1.0, 0.05, 0.05])
    stats = {"a": {"mean": 2.0, "std": 1.0}, "b": {"mean": 5.0, "std": 0.0}}
    m2, s2 = from_stats(stats, slices, 6)  # padded to 6: mean 0, scale 1 beyond the layout
    assert m2.tolist() == [2.0, 2.0, 5.0, 5.0, 0.0, 0.0] and s2.tolist() == pytest.approx([1, 1, .05, .05, 1, 1])


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.frozen = nn.Parameter(torch.full((5,), 0.7))  # constant in every training run


def test_a_layer_constant_in_train_but_not_in_test_stays_bounded(tmp_path):
    zoo, split = tmp_path / "zoo", (0.75, 0.0, 0.25)
    zoo.mkdir()
    for r in range(40):
        torch.manual_seed(r)
        sd = Net().state_dict()
        if split_of(f"run{r:02d}", "weightvae", split) == "test":  # the layer varies in test runs only
            sd["frozen"] = sd["frozen"] + 0.1 * torch.randn(5)
        torch.save(sd, zoo / f"run{r:02d}.pt")
    ingest(IngestParams(zoo_dir=str(zoo), split=split, workers=1), tmp_path / "shards", log=lambda *_: None)
    frozen = next(iter(json.loads((tmp_path / "shards" / "stats.json").read_text()).values()))["tensors"]["frozen"]
    assert frozen["std"] < 1e-6 and frozen["mean"] == pytest.approx(0.7)  # constant over the train split
    test = ZooDataset(tmp_path / "shards", "test")
    assert len(test) > 0
    for i in range(len(test)):
        x = test[i]["weight"][:5]  # the frozen layer: a module's own parameters come first in its state_dict
        # raw deviation ~0.1 over a scale of 1 % of 0.7: ~15 standard units, not ~1e7 as with a 1e-8 floor
        assert 0.5 < x.abs().max() < 100
    _, scale = test.normalization(test[0]["model_properties"]["layout_id"])
    assert scale[:5].tolist() == pytest.approx([REL_FLOOR * 0.7] * 5, rel=1e-4)
