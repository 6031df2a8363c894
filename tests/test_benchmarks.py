"""Every script in benchmarks/ runs, at a tiny size, and prints the JSON it promises; no timing is
asserted (the machines are noisy): this keeps the scripts from rotting. What a benchmark measures that no stage
does is checked against the stages here too."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SMOKE = {
    "ingest.py": ["--sizes", "20", "--workers", "1", "2", "--loader-seconds", "0.2"],
    "frontier.py": ["--out", "{tmp}/frontier"],  # collects the repository's experiments only; runs none
    "zoo.py": ["--loop-runs", "1", "--group", "2", "--epochs", "1", "--skip-build"],
    "train.py": ["--shards", "no-such-folder", "--batch", "2", "--steps", "1", "--warmup", "0"],
    "large.py": ["--print"],  # the command only: the run itself takes ~half an hour
    "scale.py": ["--sizes", "1.7k,17k", "--models", "10", "--steps", "2", "--batch", "2"],
    "probe_features.py": ["--tiny", "--probes", "16", "--mlp-epochs", "2"],
    "function_code.py": ["--tiny"],
    "forward.py": ["--networks", "4", "--probes", "8", "--repeats", "1", "--shards", "no-such-folder"],
    "user_zoos.py": ["--tiny"],
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


@pytest.mark.slow
def test_probe_features_decoded_accuracy_is_the_reconstructions_accuracy(tmp_path):
    """The benchmark's `decoded_train_acc` (latent -> decoder -> batched forward on every training input) equals
    the training accuracy of the networks the reconstruct stage writes, each loaded into its `nn.Module`."""
    import importlib.util

    from weightvae.archs import build_model, evaluate_model
    from weightvae.encode import EncodeParams, encode
    from weightvae.layout import Layout
    from weightvae.reconstruct import ReconstructParams, reconstruct
    from weightvae.tasks import get_task
    from weightvae.train import TrainParams, train

    spec = importlib.util.spec_from_file_location("probe_features", ROOT / "benchmarks" / "probe_features.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    shards = bench.tiny_shards(tmp_path)
    model, latents = tmp_path / "vae.ckpt", tmp_path / "latents.parquet"
    train(TrainParams(latent_dim=20, max_epochs=1, accelerator="cpu"), shards, model, tmp_path / "lightning",
          tmp_path / "live")
    encode(EncodeParams(refine_steps=2, probe_count=8), shards, model, latents)
    reconstruct(ReconstructParams(splits=("test",), n_samples=0), shards, model, latents, tmp_path / "recon")

    layout = Layout.from_dict(next(iter(json.loads((shards / "layouts.json").read_text()).values())))
    data = get_task("digits")
    want = {}
    for f in sorted((tmp_path / "recon" / "test").glob("*.pt")):
        rec = torch.load(f, map_location="cpu", weights_only=True)
        net = build_model("cnn", rec["model_properties"]["architecture"]["kwargs"])
        net.load_state_dict(rec["state_dict"])
        want[rec["model_properties"]["source_id"]] = evaluate_model(net, data.x_train, data.y_train)["acc"]
    assert len(want) >= 2
    got = bench.decoded_train_acc(model, latents, list(want), "digits", "cnn", layout, batch=3)
    assert got.shape == (len(want), 1)
    # the batched forward and the module's may round differently: an input or two may flip
    np.testing.assert_allclose(got[:, 0], list(want.values()), rtol=0, atol=2.5 / len(data.x_train))
    assert len(set(want.values())) > 1  # different networks, so a mix-up of rows would show
