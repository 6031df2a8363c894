"""The whole DVC pipeline on a CI-sized config: it runs, it reproduces, and it caches exactly.

Reproduction: `dvc repro` from scratch twice (the second with `--force`) must give identical
hashes for every cached output and identical metrics. Metrics keys that measure wall time
(`*seconds*`, `*per_s*`) are the only ones excluded: they are timings, not results. No other
tolerance is allowed: on the same machine, with the same threads, every stage is bit-exact.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["zoo", "ingest", "train", "encode", "controls", "generator", "generation", "reconstruct", "evaluate", "probe"]


def _sh(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1"}
    out = subprocess.run(cmd, check=False, cwd=cwd, capture_output=True, text=True, env=env)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout + out.stderr


def _merge(base: dict, over: dict) -> dict:
    for k, v in over.items():
        base[k] = _merge(base.get(k, {}), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return base


def _without_timings(obj):
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items() if "seconds" not in k and "per_s" not in k}
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


def _results(repo: Path) -> tuple[dict, dict]:
    """(hash of every cached output per stage, metrics without timings)."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    hashes = {f"{s}:{o['path']}": o["md5"] for s, st in lock.items() for o in st.get("outs", [])
              if not o["path"].startswith("metrics/")}
    metrics = {p: _without_timings(json.loads((repo / p).read_text()))
               for p in ["metrics/zoo.json", "metrics/ingest.json", "metrics/eval.json", "metrics/train/metrics.json",
                         "metrics/encode.json", "metrics/controls.json", "metrics/probe.json",
                         "metrics/generator.json", "metrics/generate.json", "metrics/autodecode.json"]}
    for p in ("metrics/eval_models.csv", "metrics/probe_models.csv"):
        metrics[p] = (repo / p).read_text()
    return hashes, metrics


def copy_repo(repo: Path, overrides: dict) -> Path:
    """A git + DVC copy of this working tree (code and config, no data, no dvc.lock) at `repo`, with the
    CI-sized params and then `overrides` merged into params.yaml, committed."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file() and not f.startswith(("model_data/", "metrics/")):
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, repo / f)
    (repo / "dvc.lock").unlink(missing_ok=True)
    params = _merge(yaml.safe_load((repo / "params.yaml").read_text()),
                    yaml.safe_load((ROOT / "tests" / "ci_params.yaml").read_text()))
    (repo / "params.yaml").write_text(yaml.safe_dump(_merge(params, overrides), sort_keys=False))
    _sh(["git", "init", "-q"], repo)
    _sh(["git", "-c", "user.email=ci@weightvae", "-c", "user.name=ci", "add", "-A"], repo)
    _sh(["git", "-c", "user.email=ci@weightvae", "-c", "user.name=ci", "commit", "-qm", "ci"], repo)
    return repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """The copy after one `dvc repro`."""
    repo = copy_repo(tmp_path_factory.mktemp("pipeline") / "repo", {})
    out = _sh(["dvc", "repro"], repo)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in out
    return repo


def test_pipeline_runs_and_writes_every_output(repo):
    for path in ["model_data/weights", "model_data/shards/models.parquet", "model_data/models/vae.ckpt",
                 "model_data/latents.parquet", "metrics/encode.json", "model_data/controls/pca_refined.pt",
                 "model_data/controls/random_refined.pt", "metrics/controls.json", "metrics/eval.json",
                 "metrics/eval_models.csv",
                 "metrics/plots/accuracy_scatter.png", "metrics/plots/layer_r2.png",
                 "metrics/plots/accuracy_histograms.png", "metrics/plots/training_curves.png",
                 "metrics/probe.json", "metrics/probe_models.csv", "metrics/plots/probe_r2.png",
                 "model_data/models/generator.pt", "metrics/generator.json", "metrics/generate.json",
                 "metrics/plots/generation.png"]:
        assert (repo / path).exists(), path
    probe = json.loads((repo / "metrics/probe.json").read_text())["groups"]["digits/cnn"]
    assert {"test_acc", "train_acc", "gen_gap", "epoch", "lr", "weight_decay", "dropout", "label_noise"} \
        <= set(probe["targets"])
    assert set(probe["targets"]["test_acc"]["latent"]) == {"ridge", "gbt"}
    assert {"batch_size: skipped, constant (32) on the training split",
            "epochs: skipped, constant (2) on the training split"} <= set(probe["skipped"])
    head = json.loads((repo / "metrics/eval.json").read_text())
    for method in ("vae", "vae_encoder", "pca_refined", "random_refined", "mean", "nearest_train", "oracle_train",
                   "random_train", "noise_0.1"):
        assert {"retention", "agreement", "r2"} <= set(head[method]), method
    assert "fidelity_gain" in head and "samples" in head
    ad = json.loads((repo / "metrics/autodecode.json").read_text())  # tests/ci_params.yaml: 4 epochs
    assert ad["epochs"] == 4 and ad["networks"] > 0 and ad["behaviour_kl"] < ad["behaviour_kl_encoder_codes"]
    gen = json.loads((repo / "metrics/generate.json").read_text())["groups"]
    (name, g), = gen.items()
    assert name.startswith("digits/cnn/")
    assert set(g["unconditional"]) == {"acc_ratio_vs_fresh", "weight_novelty_vs_fresh", "functional_novelty_vs_fresh",
                                       "temperature"}
    c = g["conditioned"]
    assert {"prompt_r2", "prompt_mae", "above_best", "curve"} <= set(c)
    assert c["select_from"] == 16 and set(c["by_select_from"]) == {"1", "2"}  # tests/ci_params.yaml's curve
    assert c["curve"][-1][1] > c["curve"][0][1]  # the prompt moves the achieved accuracy where it asks
    # each prompt's mean miss is at most its networks' mean miss, so their mean is at most the MAE
    assert np.mean([abs(a - p) for p, a in c["curve"]]) <= c["prompt_mae"] + 1e-9
    methods = {"flow", "flow_t1.5", "flow_unprompted", "kde_0.5", "noise_0.25", "average_4", "gaussian_codes"}
    assert methods == set(g["methods"])
    out = _sh(["dvc", "status"], repo)
    assert "up to date" in out


def test_second_repro_does_nothing_and_forced_rerun_reproduces_exactly(repo):
    first = _results(repo)
    out = _sh(["dvc", "repro"], repo)
    assert "Running stage" not in out
    _sh(["dvc", "repro", "--force"], repo)
    second = _results(repo)
    assert second[0] == first[0]  # every cached output, byte for byte
    assert second[1] == first[1]  # every metric, exactly


def test_changing_a_train_param_reruns_exactly_the_downstream_stages(repo):
    """A codec change reruns what depends on the codec; the controls (shards and refinement only) stay."""
    out = _sh(["dvc", "exp", "run", "-S", "train.batch_size=8"], repo)
    ran = {s for s in STAGES if f"Running stage '{s}'" in out}
    assert ran == {"train", "encode", "generator", "generation", "reconstruct", "evaluate", "probe"}, out[-2000:]
    shown = json.loads(subprocess.run(["dvc", "exp", "show", "--json"], cwd=repo, capture_output=True, text=True,
                                      check=True).stdout)
    base = [rev for rev in shown if rev.get("rev") != "workspace"]  # the commit the experiment is based on
    exps = list(_experiments(shown))
    assert [_params(rev)["train"]["batch_size"] for rev in base] == [16]  # tests/ci_params.yaml
    assert [_params(rev)["train"]["batch_size"] for rev in exps] == [8]
    assert "vae" in _metrics(exps[0])["metrics/eval.json"]["data"]  # its metrics, from its own evaluate


def _experiments(node, inside: bool = False):
    """The revision records (dicts with "rev" and "data") under an "experiments" key of `dvc exp show --json`."""
    if isinstance(node, dict):
        if inside and "rev" in node and isinstance(node.get("data"), dict):
            yield node
        for k, v in node.items():
            yield from _experiments(v, inside or k == "experiments")
    elif isinstance(node, list):
        for v in node:
            yield from _experiments(v, inside)


def _params(rev) -> dict:
    return rev["data"]["params"]["params.yaml"]["data"]


def _metrics(rev) -> dict:
    return rev["data"]["metrics"]
