"""Bring your own zoo, as a new user would: a Model Zoos-layout folder of a CNN that weightvae cannot
run (no registered builder), through `dvc repro` from ingest to evaluate, then probe. Every output
dvc.yaml declares must exist, with weight-space metrics and plots that say why functional ones are missing."""

import json

import matplotlib.image
import pytest
import torch
from test_pipeline import _sh, copy_repo
from torch import nn


def _zoo_cnn() -> nn.Module:
    """The Model Zoos CNN (Schürholt et al.) on one channel: 2,464 weights."""
    return nn.Sequential(nn.Conv2d(1, 8, 5), nn.Tanh(), nn.MaxPool2d(2), nn.Conv2d(8, 6, 5), nn.Tanh(),
                         nn.MaxPool2d(2), nn.Conv2d(6, 4, 2), nn.Tanh(), nn.Flatten(), nn.Linear(36, 20), nn.Tanh(),
                         nn.Linear(20, 10))


def _model_zoos_folder(root, runs: int = 16, epochs=(1, 2)):
    for r in range(runs):
        run = root / f"NN_tune_trainable_{r:05d}_seed={r}"
        run.mkdir(parents=True)
        (run / "params.json").write_text(json.dumps({"seed": r, "optim::lr": 1e-3 * (1 + r % 4)}))
        lines = []
        torch.manual_seed(r)
        net = _zoo_cnn()
        for e in epochs:
            with torch.no_grad():
                for p in net.parameters():
                    p.mul_(0.9).add_(0.01 * torch.randn_like(p))  # a "training" trajectory
            (run / f"checkpoint_{e:06d}").mkdir()
            torch.save(net.state_dict(), run / f"checkpoint_{e:06d}" / "checkpoints")
            lines.append(json.dumps({"training_iteration": e, "test_acc": 0.1 * e, "train_acc": 0.1 * e}))
        (run / "result.json").write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_a_zoo_of_an_unknown_architecture_goes_through_the_whole_pipeline(tmp_path):
    zoo = tmp_path / "their_zoo"
    _model_zoos_folder(zoo)
    # weightvae cannot run these networks, so the function codec cannot train on them: the linear codec can
    repo = copy_repo(tmp_path / "repo", {"ingest": {"zoo_dir": str(zoo), "split": [0.5, 0.25, 0.25]},
                                         "train": {"codec": "linear"}})
    out = _sh(["dvc", "repro", "evaluate"], repo)  # ingest -> evaluate; the default zoo is not needed
    assert "Running stage 'zoo'" not in out and "Running stage 'evaluate'" in out
    assert "functional metrics (accuracy, retention, agreement) skipped for unknown/unknown" in out
    assert ("encode: unknown/unknown: not refined, their architecture or task is not registered (registry: in "
            "params.yaml; train said which); these networks keep the encoder's code") in out
    assert "train: behavioural term, function-aware encoder and latent refinement off for unknown/unknown" in out
    for path in ["metrics/eval.json", "metrics/eval_models.csv", "metrics/plots/accuracy_scatter.png",
                 "metrics/plots/layer_r2.png", "metrics/plots/accuracy_histograms.png",
                 "metrics/plots/training_curves.png"]:
        assert (repo / path).exists(), path
    head = json.loads((repo / "metrics/eval.json").read_text())
    g = head["groups"]["unknown/unknown"]
    assert g["learned_weights"] == 2464 and g["models"] == head["models"] > 0
    assert {"vae", "pca", "mean", "nearest_train"} <= set(g["methods"])
    assert "acc" not in g["methods"]["vae"] and "r2" in g["methods"]["vae"]
    assert g["compression_ratio"] == pytest.approx(2464 / g["latent_size"])
    assert matplotlib.image.imread(repo / "metrics/plots/accuracy_scatter.png").shape[0] > 100
    assert "up to date" in _sh(["dvc", "status", "evaluate"], repo)

    # the probes: result.json's accuracies (0.1 x epoch, so no generalisation gap) and params.json's numbers
    out = _sh(["dvc", "repro", "probe"], repo)
    assert "Running stage 'probe'" in out and "Running stage 'train'" not in out
    assert "probe: unknown/unknown: seed: skipped, a random seed: there is no property to read off" in out
    assert "probe: unknown/unknown: gen_gap: skipped, constant (0) on the training split" in out
    for path in ["metrics/probe.json", "metrics/probe_models.csv", "metrics/plots/probe_r2.png"]:
        assert (repo / path).exists(), path
    probe = json.loads((repo / "metrics/probe.json").read_text())["groups"]["unknown/unknown"]
    assert sorted(probe["targets"]) == ["epoch", "optim::lr", "test_acc", "train_acc"]
    assert probe["features"] == {"latent": g["latent_size"], "W": 2464, "sW": 5 * 2 * 7, "pca": g["latent_size"]}
    assert "up to date" in _sh(["dvc", "status", "probe"], repo)
