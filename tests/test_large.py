"""The large-zoo journey (README "Networks of any size", `benchmarks/large.py`) at a size CI can afford:
the same preset of `-S` overrides, the same `dvc exp run --temp --force ... evaluate`, on 24 runs of a
3,010-weight MLP instead of 64 of a 1,000,060-weight one, in a git + DVC copy of this tree."""

import io
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from test_pipeline import copy_repo

from weightvae.tasks import get_task

pytestmark = pytest.mark.slow


def test_the_large_preset_runs_as_one_experiment_with_the_chunk_codec(tmp_path):
    repo = copy_repo(tmp_path / "repo", {})
    out = tmp_path / "large.json"
    res = subprocess.run([sys.executable, "benchmarks/large.py", "--runs", "24", "--hidden", "40", "--name", "small",
                          "--out", str(out)], cwd=repo, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got == json.loads(res.stdout[res.stdout.index("{"):])
    # 75 * 40 + 10 weights in chunks of 64: fc1.weight 2,560 -> 40 chunks, fc1.bias 40 -> 1, fc2.weight 400 -> 7,
    # fc2.bias 10 -> 1: 49 chunks of 16 latent values
    assert (got["runs"], got["weights"], got["latent_size"]) == (24, 3010, 49 * 16)
    assert got["compression"] == pytest.approx(3010 / 784)
    assert got["test_models"] >= 2 and got["wall_s"] > 0 and got["peak_rss_mib"] > 0
    # each agreement it reports is the mean over the test models of the experiment's own per-model table (committed
    # in the experiment: cache: false; written to 6 significant digits), and each per-model agreement counts whole
    # test inputs of the digits task
    exp = subprocess.run(["git", "for-each-ref", "--format=%(objectname)", "refs/exps"], cwd=repo, capture_output=True,
                         text=True, check=True).stdout.split()
    assert len(exp) == 1
    table = pd.read_csv(io.StringIO(subprocess.run(["git", "show", f"{exp[0]}:metrics/eval_models.csv"], cwd=repo,
                                                   capture_output=True, text=True, check=True).stdout))
    n_inputs = len(get_task("digits").y_test)
    for method in ("vae", "pca", "oracle_train", "random_train", "nearest_train"):
        agreement = table[table.method == method].agreement.to_numpy()
        assert len(agreement) == got["test_models"], method
        assert got[method]["agreement"] == pytest.approx(agreement.mean(), rel=1e-5), method
        np.testing.assert_allclose(agreement * n_inputs, np.round(agreement * n_inputs), rtol=0, atol=1e-3)
    pca, oracle = got["pca"]["agreement"], got["oracle_train"]["agreement"]
    assert got["pca_fidelity_gain_vs_oracle_of_means"] == pytest.approx(1 - (1 - pca) / (1 - oracle))
    # the experiment ran the preset: its params are in DVC's record of it
    shown = subprocess.run(["dvc", "exp", "show", "--json"], cwd=repo, capture_output=True, text=True, check=True)
    text = shown.stdout
    assert '"codec": "chunk"' in text and '"window": 256' in text and '"mlp": 24' in text
