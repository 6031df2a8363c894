"""Every script in benchmarks/ runs, at a tiny size, and prints the JSON it promises; no timing is
asserted (the machines are noisy): this only keeps the scripts from rotting."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = {
    "ingest.py": ["--sizes", "20", "--workers", "1", "2", "--loader-seconds", "0.2"],
    "frontier.py": ["--out", "{tmp}/frontier"],  # collects the repository's experiments only; runs none
    "zoo.py": ["--loop-runs", "1", "--group", "2", "--epochs", "1", "--skip-build"],
    "train.py": ["--shards", "no-such-folder", "--batch", "2", "--steps", "1", "--warmup", "0"],
    "large.py": ["--print"],  # the command only: the run itself takes ~half an hour
    "scale.py": ["--sizes", "1.7k,17k", "--models", "10", "--steps", "2", "--batch", "2"],
    "probe_features.py": ["--tiny", "--probes", "16"],
}


def test_every_benchmark_has_a_smoke_run():
    assert sorted(SMOKE) == sorted(p.name for p in (ROOT / "benchmarks").glob("*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SMOKE))
def test_benchmark_runs_and_prints_json(script, tmp_path):
    args = [a.replace("{tmp}", str(tmp_path)) for a in SMOKE[script]]
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout[res.stdout.index("{"):])  # the last thing printed is one JSON document
    assert isinstance(out, dict) and out
