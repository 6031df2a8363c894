"""Bring your own networks and data: a really trained zoo of an architecture and a task weightvae does not build
in, registered from a module inside the repository (`tests/user_nets.py`) and declared in the stages' deps as the
README says, through the README's `dvc repro --downstream ingest` (every stage from ingest on). The behavioural
term and refinement run on it (its KL falls), the code's size follows the network (`latent_dim: auto`), evaluate
scores it as a network on the task's own test split, and generation and the probes work on it."""

import json
import math

import pyarrow.parquet as pq
import pytest
import yaml
from test_pipeline import _sh, copy_repo
from user_nets import train_zoo

from weightvae.registry import RegistryParams, undeclared_deps

REGISTRY = {"architectures": {"gelu_cnn": "tests.user_nets:build_gelu_cnn", "tab_mlp": "tests.user_nets:build_tab_mlp",
                              "bn_mlp": "tests.user_nets:build_bn_mlp",
                              "res_ln_mlp": "tests.user_nets:build_res_ln_mlp"},
            "tasks": {"digits_own": "tests.user_nets:load_digits_own", "wine": "tests.user_nets:load_wine",
                      "breast_cancer": "tests.user_nets:load_breast_cancer"}}
COMPRESSION = 20.0


@pytest.mark.slow
@pytest.mark.parametrize("arch, task, weights, runs", [("gelu_cnn", "digits_own", 590, 12),
                                                       ("tab_mlp", "wine", 275, 16), ("bn_mlp", "wine", 339, 16),
                                                       ("res_ln_mlp", "breast_cancer", 1419, 16)])
def test_a_registered_architecture_and_task_get_refinement_and_functional_metrics(arch, task, weights, runs,
                                                                                  tmp_path):
    zoo = tmp_path / "their_zoo"
    records = train_zoo(arch, zoo, runs=runs, epochs=2)
    repo = copy_repo(tmp_path / "repo", {"ingest": {"zoo_dir": str(zoo), "split": [0.5, 0.25, 0.25]},
                                         "train": {"latent_dim": "auto", "compression": COMPRESSION},
                                         "registry": REGISTRY})
    # as the README says: the user's module goes into the deps of every stage that reads `registry`
    dvc = yaml.safe_load((repo / "dvc.yaml").read_text())
    for stage in dvc["stages"].values():
        if "registry" in stage.get("params", []):
            stage["deps"].append("tests/user_nets.py")
    (repo / "dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))
    assert undeclared_deps(dvc["stages"], RegistryParams(**REGISTRY), repo) == []

    out = _sh(["dvc", "repro", "--downstream", "ingest"], repo)  # the README's journey: every stage after ingest
    assert "Running stage 'zoo'" not in out
    groups = {"gelu_cnn": "2 groups", "tab_mlp": "1 group", "bn_mlp": "1 group", "res_ln_mlp": "1 group"}[arch]
    assert f"ingest: {task}/{arch}: {groups} of hidden units sorted, traced from its forward" in out  # test_canonical
    latent = math.floor(weights / COMPRESSION)
    assert (f"train: latent_dim auto: {latent} latent values for the longest layout's {weights:,} learned weights "
            f"(train.compression 20: {weights / latent:.2f}x)") in out
    assert "off for" not in out and "not registered" not in out and "cannot be vmapped" not in out, out

    enc = json.loads((repo / "metrics/encode.json").read_text())
    assert enc["latent_size"] == latent
    for split, s in enc["splits"].items():
        assert s["refined"] == s["models"] > 0, split
    for split in ("val", "test"):  # held out: the encoder's code is off, refinement brings the function back
        s = enc["splits"][split]
        assert s["behaviour_kl_mean"] < 0.5 * s["behaviour_kl_encoder_mean"], (split, enc)

    head = json.loads((repo / "metrics/eval.json").read_text())
    g = head["groups"][f"{task}/{arch}"]
    assert not head.get("skipped"), head.get("skipped")
    vae = g["methods"]["vae"]
    assert {"acc", "retention", "agreement", "r2"} <= set(vae) and 0 < vae["agreement"] <= 1
    assert g["compression_ratio"] == pytest.approx(weights / latent)
    # its units' permutations are known (traced at ingest): a permuted training network is judged a copy
    assert g["samples"]["permuted_copies"]["functional_novelty_ratio"] == 0
    # the originals' accuracy is the one the user's own code measured on the user's own test split
    rows = pq.read_table(repo / "model_data/shards/models.parquet", columns=["run_id", "epoch", "split"]).to_pylist()
    test = {(r["run_id"], r["epoch"]) for r in rows if r["split"] == "test"}
    accs = [r["metrics"]["test_acc"] for r in records if (r["run_id"], r["epoch"]) in test]
    assert g["original_acc"] == pytest.approx(sum(accs) / len(accs), abs=1e-6)

    # the generator's networks are judged on the user's task, the latent probed for the user's runs
    gen = json.loads((repo / "metrics/generate.json").read_text())["groups"]
    (name, judged), = gen.items()
    assert name.startswith(f"{task}/{arch}/") and judged["fresh"]["runs"] == len(test) // 2  # final checkpoints
    assert 0 < judged["methods"]["flow"]["acc_mean"] <= 1
    probe = json.loads((repo / "metrics/probe.json").read_text())["groups"][f"{task}/{arch}"]
    assert "test_acc" in probe["targets"]
    assert "up to date" in _sh(["dvc", "status", "--with-deps", "evaluate", "generation", "probe"], repo)
