"""`weightvae check-repro` on a tiny pipeline: it finds a planted difference (a changed output hash in
dvc.lock, a changed committed metric) and reports a match where there is none.

Two tiny pipeline runs in all: one makes the locked repo (this working tree with tiny params, `dvc repro`,
committed), one is `check-repro` itself on a clone with a planted hash; the other checks compare that same
reproduced scratch folder against the true lock and a planted metric.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from weightvae import checkrepro

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
STAGES = ["zoo", "ingest", "train", "encode", "controls", "generator", "generation", "reconstruct", "evaluate", "probe"]
TINY = {
    "zoo": {"architectures": {"cnn": 24}, "epochs": 1, "save_epochs": [1], "group_size": 24},
    "train": {"latent_dim": 8, "max_epochs": 1, "batch_size": 16, "probe_count": 16},
    "encode": {"refine_steps": 5, "probe_count": 32},
    "reconstruct": {"n_samples": 2},
    "probe": {"gbt_max_iter": 10},
}


def _env() -> dict[str, str]:
    return {**os.environ, "DVC_NO_ANALYTICS": "1",
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}


def _sh(cmd: list[str], cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, check=False)
    if ok:
        assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def _git(repo: Path, *args: str) -> None:
    _sh(["git", "-c", "user.email=ci@weightvae", "-c", "user.name=ci", *args], repo)


@pytest.fixture(scope="module")
def locked(tmp_path_factory) -> Path:
    """This working tree with tiny params, reproduced once and committed with its dvc.lock and metrics."""
    repo = tmp_path_factory.mktemp("checkrepro") / "repo"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file() and not f.startswith(("model_data/", "metrics/")) and f != "dvc.lock":
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, repo / f)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, over in TINY.items():
        params[section].update(over)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "tiny params")  # DVCLive (train) needs a commit to start from
    _sh([sys.executable, "-m", "dvc", "repro"], repo)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "locked")
    return repo


@pytest.fixture(scope="module")
def planted(locked, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, str]:
    """`weightvae check-repro` on a clone of `locked` whose dvc.lock has one output hash changed (uncommitted,
    as a user's edit): (its result, its scratch folder, the planted hash). The zoo's metrics get another wall
    time (and their lock hash another value), so that they differ in a wall time only, whatever the repro takes."""
    clone = tmp_path_factory.mktemp("planted") / "clone"
    shutil.copytree(locked, clone, ignore=lambda d, names: ["cache", "tmp"] if Path(d).name == ".dvc" else [])
    lock = (clone / "dvc.lock").read_text()
    stages = yaml.safe_load(lock)["stages"]
    recon = stages["reconstruct"]["outs"][0]
    assert recon["path"] == "model_data/reconstructions"
    fake = "f" * 32 + ".dir"
    zoo_metrics = next(o for o in stages["zoo"]["outs"] if o["path"] == "metrics/zoo.json")
    (clone / "dvc.lock").write_text(lock.replace(recon["md5"], fake).replace(zoo_metrics["md5"], "e" * 32))
    zoo = json.loads((clone / "metrics/zoo.json").read_text())
    zoo["build_seconds"] += 1000.0
    (clone / "metrics/zoo.json").write_text(json.dumps(zoo, indent=2))
    scratch = clone.parent / "scratch"
    out = _sh([sys.executable, "-m", "weightvae.cli", "check-repro", "--repo", str(clone), "--scratch", str(scratch)],
              clone, ok=False)
    return out, scratch, fake


def test_a_changed_hash_in_the_lock_is_reported_and_fails(planted):
    out, _, fake = planted
    assert out.returncode == 1, out.stdout + out.stderr
    row = next(line for line in out.stdout.splitlines() if "model_data/reconstructions" in line)
    assert row.split()[:3] == ["reconstruct", "model_data/reconstructions", fake[:8]] and row.endswith("DIFFERS")
    assert "reconstruct: DIFFERS" in out.stdout
    for stage in ("zoo", "ingest", "train", "evaluate"):
        assert f"{stage}: match" in out.stdout
    assert "1 of 10 stages differ from dvc.lock" in out.stdout
    # wall times differ from run to run (planted here) and are reported apart, never as a mismatch
    assert "match (wall times differ only)" in next(line for line in out.stdout.splitlines() if "zoo.json" in line)
    assert "changed since dvc.lock" not in out.stdout  # same code and params: a real difference, not an expected one


def test_against_the_true_lock_every_stage_matches(planted, locked):
    _, scratch, _ = planted
    report = checkrepro.Report(checkrepro.compare(scratch, yaml.safe_load((locked / "dvc.lock").read_text())), scratch)
    assert [(s.name, s.matches) for s in report.stages] == [(s, True) for s in STAGES]
    text = checkrepro.format_report(report)
    assert "DIFFERS" not in text
    assert text.endswith("check-repro: every cached output and metric matches dvc.lock")


def test_a_changed_committed_metric_is_reported_with_its_difference(planted, locked, tmp_path):
    scratch = tmp_path / "scratch"
    shutil.copytree(planted[1], scratch, symlinks=True)
    committed = json.loads((scratch / "metrics/eval.json").read_text())
    changed = json.loads(json.dumps(committed))
    changed["vae"]["agreement"] = committed["vae"]["agreement"] - 0.25
    (scratch / "metrics/eval.json").write_text(json.dumps(changed))
    _git(scratch, "commit", "-qm", "a committed metric the repro does not give", "--", "metrics/eval.json")
    (scratch / "metrics/eval.json").write_text(json.dumps(committed))  # the reproduced workspace again
    stages = {s.name: s for s in checkrepro.compare(scratch, yaml.safe_load((locked / "dvc.lock").read_text()))}
    assert [n for n, s in stages.items() if not s.matches] == ["evaluate"]
    (diff,) = stages["evaluate"].metrics
    assert (diff.path, diff.key) == ("metrics/eval.json", "vae.agreement")
    assert diff.change == pytest.approx(0.25)
    text = checkrepro.format_report(checkrepro.Report(list(stages.values()), scratch))
    assert "metrics/eval.json vae.agreement:" in text and "(+0.25)" in text
    assert "1 of 10 stages differ from dvc.lock" in text


def test_refuses_a_clone_without_a_lock_and_a_busy_scratch(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "dvc.yaml").write_text("stages: {}\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "no lock")
    with pytest.raises(FileNotFoundError, match="dvc.lock"):
        checkrepro.check(repo, tmp_path / "scratch")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        checkrepro.check(repo, busy)
    assert (busy / "x").read_text() == "keep me"
