"""evaluate on a hand-built zoo whose every number is computed by hand below.

The networks are 1-D linear classifiers `nn.Linear(1, 2)` with row 0 fixed at zero, so a network
(w, b) predicts class 1 exactly where `w * x + b > 0` (a threshold at -b / w). The task's test
inputs are x = -2, -1, 1, 2 (labels 0, 0, 1, 1); its training inputs -3, -0.5, 0.5, 1.7, 3 are
where the oracle substitute is chosen. A second group, an architecture evaluate cannot run,
gets weight-space metrics only and checks how groups are combined.
"""

import json
import sys

import pandas as pd
import pytest
import torch

from weightvae.archs import ARCHITECTURES
from weightvae.evaluate import EvaluateParams, evaluate
from weightvae.ingest import IngestParams, ingest, split_of
from weightvae.records import file_name
from weightvae.registry import register
from weightvae.tasks import TASKS, get_task

TOY_MODULE = '''
import torch
from torch import nn

from weightvae.tasks import TaskData


def build_line():
    return nn.Linear(1, 2)


def load_line():
    x = lambda v: torch.tensor(v, dtype=torch.float32)[:, None]
    return TaskData("line", x([-3.0, -0.5, 0.5, 1.7, 3.0]), torch.tensor([0, 0, 1, 1, 1]),
                    x([-2.0, -1.0, 1.0, 2.0]), torch.tensor([0, 0, 1, 1]), 2)
'''
SPLIT, SALT = (0.5, 0.0, 0.5), "exact"

# (w, b) of each network, by role
TRAIN = {"A": (1.0, 0.0), "Q": (1.0, -0.75), "P": (1.0, -1.75), "C": (-1.0, 0.0)}  # thresholds 0, .75, 1.75, (x < 0)
TEST = {"T1": (1.0, -1.5), "T2": (2.0, 0.75)}  # thresholds 1.5 and -0.375
RECON = {"T1": (1.0, -0.5), "T2": (2.0, 0.75)}  # T1 moved to threshold 0.5; T2 exact
OTHER_TRAIN = {"U1": [1.0, 0.0, 0.0], "U2": [0.0, 1.0, 0.0]}  # the unregistered architecture: one tensor of 3
OTHER_TEST, OTHER_RECON = [1.0, 1.0, 0.0], [1.0, 0.5, 0.0]


def _run_id(split: str, role: str) -> str:
    """A run id that the salted hash puts in `split` (splits are by run and not chosen by hand)."""
    return next(f"{role}-{k}" for k in range(1000) if split_of(f"{role}-{k}", SALT, SPLIT) == split)


def _line(w: float, b: float) -> dict[str, torch.Tensor]:
    return {"weight": torch.tensor([[0.0], [w]]), "bias": torch.tensor([0.0, b])}


def _save(path, run_id, task, arch, sd):
    torch.save({"state_dict": sd, "model_properties": {
        "format_version": 1, "run_id": run_id, "task": task, "epoch": 1, "seed": 0,
        "architecture": {"name": arch, "kwargs": {}}, "hyperparameters": {}, "metrics": {"test_acc": None}}},
        path / f"{run_id}.pt")


@pytest.fixture
def toy(tmp_path, monkeypatch):
    (tmp_path / "wvae_toy.py").write_text(TOY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    archs, tasks = dict(ARCHITECTURES), dict(TASKS)
    register({"line": "wvae_toy:build_line"}, {"line": "wvae_toy:load_line"})
    yield tmp_path
    ARCHITECTURES.clear()
    ARCHITECTURES.update(archs)
    TASKS.clear()
    TASKS.update(tasks)
    get_task.cache_clear()
    sys.modules.pop("wvae_toy", None)


def _zoo_and_reconstructions(root):
    zoo, recon = root / "zoo", root / "recon"
    zoo.mkdir()
    (recon / "test").mkdir(parents=True)
    ids, latents = {}, []
    for role, (w, b) in TRAIN.items():
        _save(zoo, _run_id("train", role), "line", "line", _line(w, b))
    for role, sd in OTHER_TRAIN.items():
        _save(zoo, _run_id("train", role), "line", "mystery", {"w": torch.tensor(sd)})
    for role, (w, b) in TEST.items():
        ids[role] = f"{_run_id('test', role)}/e001"
        _save(zoo, _run_id("test", role), "line", "line", _line(w, b))
        torch.save({"state_dict": _line(*RECON[role])}, recon / "test" / file_name(ids[role]))
        latents.append({"id": ids[role], "latent": [0.0, 0.0]})  # 2 values for 4 weights
    ids["V"] = f"{_run_id('test', 'V')}/e001"
    _save(zoo, _run_id("test", "V"), "line", "mystery", {"w": torch.tensor(OTHER_TEST)})
    torch.save({"state_dict": {"w": torch.tensor(OTHER_RECON)}}, recon / "test" / file_name(ids["V"]))
    latents.append({"id": ids["V"], "latent": [0.0, 0.0, 0.0]})  # 3 values for 3 weights
    pd.DataFrame(latents).to_parquet(root / "latents.parquet")
    ingest(IngestParams(zoo_dir=str(zoo), split=SPLIT, split_salt=SALT, workers=1), root / "shards",
           log=lambda *_: None)
    return ids


def test_every_headline_number_matches_the_hand_computation(toy):
    ids = _zoo_and_reconstructions(toy)
    head, df, _ = evaluate(EvaluateParams(), toy / "shards", toy / "recon", toy / "latents.parquet")
    g = head["groups"]["line/line"]
    m = g["methods"]

    # originals: T1 predicts 0,0,0,1 (acc 0.75), T2 0,0,1,1 (acc 1); mean 0.875
    assert g["original_acc"] == 0.875
    # vae: R1 (threshold 0.5) predicts 0,0,1,1: acc 1, agreement 3/4 with T1; R2 is T2
    assert m["vae"]["acc"] == 1.0 and m["vae"]["agreement"] == 0.875
    assert m["vae"]["retention"] == pytest.approx(1 / 0.875)  # ratio of means, not mean of ratios
    assert m["vae"]["retention_median"] == pytest.approx((1 / 0.75 + 1) / 2)
    # oracle, chosen on the training inputs: T1 (0,0,0,1,1 there) agrees 5/5 with Q (threshold 0.75)
    # and only 4/5 with P (1.75), though P would agree 4/4 on the test inputs and Q only 3/4
    oracle = df[df.method == "oracle_train"].set_index("id")
    assert oracle.loc[ids["T1"], "agreement"] == 0.75 and oracle.loc[ids["T2"], "agreement"] == 1.0  # T2 -> A
    assert m["oracle_train"]["agreement"] == 0.875
    # nearest in standardised weights: P for T1 (agrees everywhere), A for T2 (agrees everywhere)
    assert m["nearest_train"]["agreement"] == 1.0
    # fidelity gain: T1 1 - (1 - 3/4) / max(0, 1/4) = 0; T2 1 - 0 / (1/4) = 1
    assert g["fidelity_gain"] == 0.5 and g["fidelity_gain_median"] == 0.5
    # vs the oracle: T1 1 - (1/4) / (1/4) = 0; T2 1
    assert g["fidelity_gain_vs_oracle"] == 0.5
    # mean model: train mean (w, b) = (0.5, -0.625), threshold 1.25: predicts 0,0,0,1
    assert m["mean"]["acc"] == 0.75 and m["mean"]["agreement"] == 0.875

    # R^2 against the train-mean vector (0, 0.5, 0, -0.625): only R1's bias is off, by 1.0
    # weight layer: err 0, var (1 - .5)^2 + (2 - .5)^2 = 2.5; bias: err 1, var .875^2 + 1.375^2 = 2.65625
    assert m["vae"]["r2"] == pytest.approx(1 - 1 / 5.15625, abs=1e-12)
    assert m["vae"]["r2_layer_mean"] == pytest.approx((1 + (1 - 1 / 2.65625)) / 2, abs=1e-12)
    # PCA with k = 2 (the latent size): the training models span the (w, b) plane, so it is exact
    assert m["pca"]["r2"] == pytest.approx(1.0, abs=1e-12) and m["pca"]["agreement"] == 1.0
    assert (g["latent_size"], g["compression_ratio"]) == (2, 2.0)
    assert g["vae_agreement_by_epoch"] == {"1": 0.875}

    # the unregistered architecture: weight space only; mean (0.5, 0.5, 0), error 0.25 of variance 0.5
    other = head["groups"]["line/mystery"]
    assert other["methods"]["vae"]["r2"] == pytest.approx(0.5) and "acc" not in other["methods"]["vae"]
    assert (other["latent_size"], other["compression_ratio"]) == (3, 1.0)
    assert "fidelity_gain" not in other

    # overall: per-model quantities over the models that have them; R^2 weighted by models (2 and 1)
    assert head["vae"]["agreement"] == 0.875 and head["vae"]["retention"] == pytest.approx(1 / 0.875)
    assert head["vae"]["r2"] == pytest.approx((2 * (1 - 1 / 5.15625) + 1 * 0.5) / 3, abs=1e-12)
    assert head["compression_ratio"] == pytest.approx((2 * 4 + 1 * 3) / (2 * 2 + 1 * 3))
    assert head["latent_size"] == pytest.approx(7 / 3) and head["models"] == 3
    assert head["fidelity_gain"] == 0.5  # only the functional group has one
    assert json.loads(json.dumps(head)) == head  # JSON-ready


def test_an_architecture_in_two_widths_gets_a_group_per_layout(tmp_path):
    """Two widths of one architecture are two layouts: each its own group (`task/arch/layout`), never one
    overwriting the other. Weight space: each test network's error against its own layout's training mean."""
    zoo, recon = tmp_path / "zoo", tmp_path / "recon"
    zoo.mkdir()
    (recon / "test").mkdir(parents=True)
    nets = {3: ([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [[1.0, 1.0, 0.0]], [[1.0, 0.5, 0.0]]),  # as line/mystery above
            4: ([[2.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]], [[2.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]],
                [[2.0, 2.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])}  # recon: exact, then the train mean
    for width, (train, test, rec) in nets.items():
        for k, w in enumerate(train):
            _save(zoo, _run_id("train", f"W{width}-{k}"), "line", "mystery", {"w": torch.tensor(w)})
        for k, (w, r) in enumerate(zip(test, rec, strict=True)):
            run = _run_id("test", f"W{width}-t{k}")
            _save(zoo, run, "line", "mystery", {"w": torch.tensor(w)})
            torch.save({"state_dict": {"w": torch.tensor(r)}}, recon / "test" / file_name(f"{run}/e001"))
    ingest(IngestParams(zoo_dir=str(zoo), split=SPLIT, split_salt=SALT, workers=1), tmp_path / "shards",
           log=lambda *_: None)
    layouts = json.loads((tmp_path / "shards" / "layouts.json").read_text())
    by_width = {v["length"]: k for k, v in layouts.items()}
    head, df, _ = evaluate(EvaluateParams(), tmp_path / "shards", recon, None)
    assert set(head["groups"]) == {f"line/mystery/{by_width[3]}", f"line/mystery/{by_width[4]}"}
    narrow, wide = head["groups"][f"line/mystery/{by_width[3]}"], head["groups"][f"line/mystery/{by_width[4]}"]
    assert (narrow["models"], wide["models"]) == (1, 2) and head["models"] == 3
    assert narrow["methods"]["vae"]["r2"] == pytest.approx(0.5)
    # wide: train mean (1, 1, 0, 0); errors 0 and 2 against the originals' squared distances 2 and 2 from it
    assert wide["methods"]["vae"]["r2"] == pytest.approx(1 - 2 / 4)
    assert sorted(df.group.unique()) == sorted(head["groups"])
