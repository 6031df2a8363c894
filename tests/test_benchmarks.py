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
import yaml

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
    "refine_steps.py": ["--tiny"],
    "refine_lr.py": ["--tiny"],
    "encode_batch.py": ["--tiny"],
    "codec_variants.py": ["--tiny"],
    "encoder_refit.py": ["--tiny"],
}




def _frontier(out):
    """Every experiment of the default ratios is a point or missing; a point's latent is 1,706 weights / its ratio
    and its PCA fidelity gain is 1 - (1 - PCA's agreement) / (1 - the oracle's)."""
    codec = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]["codec"]
    names = {f"frontier-{codec}-{r}x" for r in (4, 8, 16, 32, 64)}
    points = {p["experiment"]: p for p in out["points"]}
    assert set(points) | set(out["missing"]) == names and not set(points) & set(out["missing"])
    for name, p in points.items():
        assert p["latent_size"] == round(1706 / int(name.split("-")[-1][:-1]))
        assert p["compression"] == pytest.approx(1706 / p["latent_size"])
        gain = 1 - (1 - p["pca"]["agreement"]) / (1 - p["oracle_train"]["agreement"])
        assert p["pca_fidelity_gain_vs_oracle_of_means"] == pytest.approx(gain)


def _scale(out):
    """The MLP at hidden 23 and 227 (75 * hidden + 10 weights), 10 models each, in chunks of 64 coded by 16
    values: 1,472 + 23 + 230 + 10 weights are 23 + 1 + 4 + 1 chunks; 14,528 + 227 + 2,270 + 10 are 227 + 4 + 36 + 1."""
    assert {k: (r["hidden"], r["weights"], r["models"], r["latent_values"]) for k, r in out["sizes"].items()} == {
        "1.7k": (23, 1735, 10, 29 * 16), "17k": (227, 17035, 10, 268 * 16)}
    for r in out["sizes"].values():
        assert r["compression"] == round(r["weights"] / r["latent_values"], 3)
    speeds = [r["train_weights_per_s"] for r in out["sizes"].values()]
    assert out["train_speed_max_over_min"] == round(max(speeds) / min(speeds), 3)


def _train(out):
    """The built zoo (64 CNN runs x 3 checkpoints), the protocol asked for, D2NWG's 4x16x16 latent."""
    assert (out["models"]["runs"], out["models"]["models"], out["models"]["layouts"], out["max_len"]) == \
        (64, 192, 1, 1706)
    assert out["protocol"].startswith("0 warm-up + 1 timed AdamW steps at batch 2 ")
    assert [(r["steps"], r["warmup"], r["batch_size"]) for r in (out["default"], out["d2nwg"])] == [(1, 0, 2)] * 2
    assert out["d2nwg"]["latent_shape"] == [4, 16, 16]
    assert out["parameter_ratio"] == round(out["d2nwg"]["parameters"] / out["default"]["parameters"], 1)
    assert out["speedup_same_batch"] == pytest.approx(
        out["default"]["samples_per_s"] / out["d2nwg"]["samples_per_s"], rel=0.05, abs=0.1)


def _probe_features(out):
    """The tiny zoo: 20 CNN runs x 2 checkpoints; per network 8 learned tensors, 7 statistics each, and the
    predicted classes (10) on 16 probes."""
    assert out["group"] == "digits/cnn" and sum(out["models"].values()) == 40 and out["probe_inputs"] == 16
    f = out["features"]
    assert (f["log_std"], f["sW"], f["sW+log_std"], f["outputs"]) == (8, 7 * 8, 8 * 8, 16 * 10)


#: what each smoke run must print, computed by hand from its arguments (no timing is asserted)
def _forward(out: dict) -> bool:
    """Both built-ins, at the sizes asked for; the generic forward gives the hand-written one's logits; each
    ratio is generic / hand-written networks per second."""
    for arch in ("cnn", "mlp"):
        r = out["results"][arch]
        assert (r["networks"], r["probes"]) == (4, 8) and r["max_abs_logit_diff"] < 1e-5
        for kind in ("forward", "forward_backward"):
            ratio = r["generic"][f"{kind}_networks_per_s"] / r["hand_written"][f"{kind}_networks_per_s"]
            assert r[f"ratio_{kind}"] == pytest.approx(ratio, rel=0.01, abs=0.002)
    return out["encode"].startswith("skipped")


def _user_zoos(out: dict) -> bool:
    """Every user zoo (architectures weightvae does not build in) went through the pipeline: their figures, each
    pass the figure against its bar, and `all_pass` their conjunction."""
    assert out["tiny"] is True and sorted(out["results"]) == ["bn_mlp", "gelu_cnn", "res_ln_mlp", "tab_mlp"]
    for r in out["results"].values():
        f = r["figures"]
        assert f["compression_ratio"] == pytest.approx(f["learned_weights"] / f["latent_size"])
        assert r["passes"]["compression >= 4"] == (f["compression_ratio"] >= 4)
        assert r["passes"]["agreement >= pca + 0.3"] == (f["agreement"] >= f["pca_agreement"] + 0.3)
        assert all(0 <= f[f"{m}_agreement"] <= 1 for m in ("vae_encoder", "pca_refined", "random_refined"))
        assert r["all_pass"] == all(r["passes"].values())
    return True


def _refine_steps(out: dict) -> bool:
    """Two step counts, the codec, both controls and the ceiling, agreements in [0, 1]; the ceiling starts where
    the codec starts (the network its encoder's code decodes to), so with no step the two agree alike."""
    assert out["steps"] == [0, 2] and out["models"] == 4 and set(out["agreement"]) == {"vae", "pca_refined",
                                                                                          "random_refined",
                                                                                          "full_refined"}
    assert out["agreement"]["full_refined"][0] == pytest.approx(out["agreement"]["vae"][0], abs=1e-6)
    return all(len(v) == 2 and all(0 <= a <= 1 for a in v) for v in out["agreement"].values())


def _refine_lr(out: dict) -> bool:
    """Both rates of the smoke run on the val split, agreements in [0, 1], the best the one that agrees most."""
    assert (out["split"], out["lrs"], out["models"], out["refine_steps"]) == ("val", [0.1, 0.2], 4, 2)
    assert out["best"] == out["lrs"][max(range(2), key=out["agreement"].__getitem__)]
    return all(0 <= a <= 1 for a in out["agreement"])


def _encode_batch(out: dict) -> bool:
    """Both sizes of the smoke run encoded every network of the split; speeds are over the first size's, the
    first size's codes differ from themselves by 0, and another size's mean behavioural KL is the same to 0.1 %."""
    first, second = out["sizes"]
    assert (first["batch_size"], second["batch_size"], out["refine_steps"]) == (2, 4, 2)
    assert first["networks"] == second["networks"] > 0 and first["speed_vs_first"] == 1.0
    assert second["speed_vs_first"] == pytest.approx(second["networks_per_s"] / first["networks_per_s"], rel=1e-2)
    assert first["max_code_difference_vs_first"] == first["mean_code_difference_vs_first"] == 0.0
    assert second["mean_code_difference_vs_first"] <= second["max_code_difference_vs_first"]
    return second["behaviour_kl_mean"] == pytest.approx(first["behaviour_kl_mean"], rel=1e-3)


def _codec_variants(out: dict) -> bool:
    """The two variants of the smoke run, each judged from its encoder and after refinement, the controls once;
    the best is the one whose refined agreement is highest, and its margins over the controls are differences."""
    assert out["models"] == 4 and out["refine_steps"] == 2 and list(out["variants"]) == ["default", "input_noise_0.1"]
    assert out["variants"]["input_noise_0.1"]["overrides"] == {"input_noise": 0.1}
    assert out["best"] == max(out["variants"], key=lambda v: out["variants"][v]["refined"])
    for c, a in out["controls"].items():
        assert out["best_over_controls"][c] == pytest.approx(out["variants"][out["best"]]["refined"] - a)
    return all(0 <= v[k] <= 1 for v in out["variants"].values() for k in ("encoder", "refined"))


def _encoder_refit(out: dict) -> bool:
    """The encoder as trained and both refits, each judged on the training and the val networks; a refit of one
    epoch or two leaves agreements in [0, 1]."""
    assert list(out["variants"]) == ["as_trained", "refit_codes", "refit_function"]
    assert (out["variants"]["refit_codes"]["epochs"], out["variants"]["refit_function"]["epochs"]) == (2, 1)
    assert out["train_networks"] > 0 and out["val_networks"] > 0
    return all(0 <= v[s] <= 1 for v in out["variants"].values() for s in ("train", "val")) and \
        0 <= out["fitted_codes_train"] <= 1


CHECKS = {
    "ingest.py": lambda out: [(e["workers_1"]["models"], e["workers_2"]["models"], e["loader"]["batch_size"])
                              for e in out["sizes"].values()] == [(20, 20, 64)],
    "frontier.py": _frontier,
    "zoo.py": lambda out: out["epochs"] == 1 and "default_zoo" not in out and out["speedup"] == pytest.approx(
        out["vectorised_models_per_s"] / out["loop_models_per_s"], rel=0.02),
    "train.py": _train,
    "large.py": lambda out: out["command"].startswith(
        "dvc exp run --temp --force -n large-mlp evaluate -S ~zoo.architectures -S '+zoo.architectures={mlp: 64}' "
        "-S +zoo.arch_kwargs.mlp.hidden=13334 -S zoo.epochs=8 -S 'zoo.save_epochs=[2,8]' "),
    "scale.py": _scale,
    "probe_features.py": _probe_features,
    "function_code.py": lambda out: (out["split"], out["function_code"], out["measured_statistics"]) == ("test", 4, 0),
    "forward.py": _forward,
    "user_zoos.py": _user_zoos,
    "refine_steps.py": _refine_steps,
    "refine_lr.py": _refine_lr,
    "encode_batch.py": _encode_batch,
    "codec_variants.py": _codec_variants,
    "encoder_refit.py": _encoder_refit,
}


def test_every_benchmark_has_a_smoke_run_and_a_check():
    """Every script in benchmarks/ has a smoke run and a check of its output."""
    assert sorted(SMOKE) == sorted(CHECKS) == sorted(p.name for p in (ROOT / "benchmarks").glob("*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SMOKE))
def test_benchmark_runs_and_prints_json(script, tmp_path):
    args = [a.replace("{tmp}", str(tmp_path)) for a in SMOKE[script]]
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout[res.stdout.index("{"):])  # the last thing printed is one JSON document
    assert CHECKS[script](out) is not False, out


@pytest.mark.slow
def test_refine_steps_on_the_training_split_starts_from_the_fitted_codes_too():
    """`--split train`: the training networks refined from their encoder's code and from the code auto-decoding
    fitted them (the tiny codec's train stage ran it); with no step the fitted code is the better one."""
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "refine_steps.py"), "--tiny", "--split", "train",
                          "--no-controls"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout[res.stdout.index("{"):])
    assert out["split"] == "train" and out["steps"] == [0, 2] and set(out["agreement"]) == {"vae", "vae_fitted"}
    assert out["behaviour_kl"]["vae_fitted"][0] < out["behaviour_kl"]["vae"][0]
    assert all(len(v) == 2 and min(v) >= 0 for v in out["refine_seconds"].values())


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
