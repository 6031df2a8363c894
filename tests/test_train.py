"""The train stage: the identity round trip of `reconstruct_to_model_weights`, the outputs of a tiny
run, the best-epoch export, seeded determinism, DDP on two CPU processes, resume, and params checks."""

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from weightvae import FORMAT_VERSION, canonical
from weightvae.data import SPLITS, ZooDataModule, ZooDataset
from weightvae.encode import EncodeParams, encode
from weightvae.ingest import IngestParams, ingest
from weightvae.latents import read_latents
from weightvae.model import VAE
from weightvae.params import ParamsError, load_section, run_command
from weightvae.reconstruct import ReconstructParams, reconstruct
from weightvae.train import TrainParams, build_module, run, train

REPO = Path(__file__).resolve().parents[1]
TINY = {"codec": "linear", "channels": [4, 8], "latent_dim": 8, "max_epochs": 2, "batch_size": 4, "accelerator": "cpu",
        "learning_rate": 1e-4, "lr_schedule": "constant", "behaviour_weight": 1.0, "behaviour_batch": 0}


@pytest.fixture(scope="module")
def shards(tiny_zoo, tmp_path_factory):
    """The session's tiny zoo ingested: train holds 4 checkpoints (2 cnn, 2 mlp), val 2 cnn, test 2 + 2."""
    out = tmp_path_factory.mktemp("train") / "shards"
    ingest(IngestParams(zoo_dir=str(tiny_zoo[0]), workers=1), out, log=lambda *_: None)
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert (counts["train"], counts["val"], counts["layouts"]) == (4, 2, 2)  # the DDP test splits train evenly
    return out


@pytest.fixture(autouse=True)
def _outside_the_repo(tmp_path, monkeypatch):
    """Run in a temporary folder: DVCLive looks for a DVC repo in the working directory."""
    monkeypatch.chdir(tmp_path)


def tiny(**overrides) -> TrainParams:
    cfg = {**TINY, **overrides}
    return TrainParams(**{**cfg, "channels": tuple(cfg["channels"])})


def fit(p: TrainParams, shards: Path, root: Path, callbacks=None) -> tuple[Path, Path, Path, dict]:
    """One `train` call into `root`; returns (export, ckpt_dir, live_dir, metrics)."""
    out, ckpt, live = root / "vae.ckpt", root / "lightning", root / "live"
    metrics = train(p, shards, out, ckpt, live, callbacks=callbacks)
    return out, ckpt, live, metrics


def tsv(path: Path) -> list[float]:
    """The values column of a DVCLive plot file, in logging order."""
    return [float(line.split("\t")[1]) for line in path.read_text().splitlines()[1:]]


def val_loss(model: VAE, shards: Path, batch_size: int) -> float:
    """The val loss as the stage logs it: posterior mean, eval mode, batch-size-weighted mean over val batches."""
    ds = ZooDataset(shards, "val", normalize=model.normalize, max_len=model.cfg.max_len)
    model.eval()
    total = 0.0
    with torch.no_grad():
        for batch in ZooDataModule.loader(ds, batch_size=batch_size):
            total += float(model.loss_terms(batch, sample_posterior=False)["loss"]) * len(batch["weight"])
    return total / len(ds)


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- callbacks (module level: picklable)


class SpoilLastValidation(L.Callback):
    """Adds unit noise to every parameter just before the last epoch's validation, so the last epoch is
    (by far) the worst and the best epoch is an earlier one."""

    def on_validation_start(self, trainer, module):
        if trainer.sanity_checking or trainer.current_epoch != trainer.max_epochs - 1:
            return
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in module.parameters():
                p.add_(torch.randn(p.shape, generator=g).to(p))


class RecordTrainIds(L.Callback):
    """Appends `epoch<TAB>model id` of every training sample to `<folder>/rank<global_rank>.tsv`."""

    def __init__(self, folder: Path):
        self.folder = str(folder)

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        with open(Path(self.folder) / f"rank{trainer.global_rank}.tsv", "a") as f:
            f.writelines(f"{trainer.current_epoch}\t{p['id']}\n" for p in batch["model_properties"])


class StopAtStart(L.Callback):
    """Stops the run before its first checkpoint is written."""

    def on_train_start(self, trainer, module):
        raise RuntimeError("stopped before any checkpoint")


class RecordEpochs(L.Callback):
    """The training epochs that ran, and the weights the first of them started from."""

    def __init__(self):
        self.epochs, self.start = [], None

    def on_train_epoch_start(self, trainer, module):
        self.epochs.append(trainer.current_epoch)
        if self.start is None:
            self.start = {k: v.detach().clone() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("normalize", [True, False])
def test_identity_decoder_gives_back_the_original_state_dicts(tiny_zoo, shards, normalize):
    """Feed each batch's own (normalised, padded) input as the 'reconstruction': the model's stored
    normalisation and every model's layout must return the zoo file's state_dict, for both layouts (in the
    canonical unit order ingest stores by default: the same function, the same values, sorted units)."""
    layouts = json.loads((shards / "layouts.json").read_text())
    layout_ids = sorted(layouts)
    n_layers = max(sum(e["learned"] for e in lay["entries"]) for lay in layouts.values())
    stats = ZooDataset(shards, "train", normalize=normalize)
    model = build_module(tiny(normalize=normalize), stats.max_len, layout_ids, n_layers)
    if normalize:
        model.set_normalization({lid: stats.normalization(lid) for lid in layout_ids})
    lengths, checked, mixed = {lay["length"] for lay in layouts.values()}, set(), False
    assert len(lengths) == 2 and max(lengths) == stats.max_len  # the shorter layout is padded
    for split in SPLITS:
        ds = ZooDataset(shards, split, normalize=normalize)
        for batch in ZooDataModule.loader(ds, batch_size=len(ds)):
            props = batch["model_properties"]
            mixed |= len({p["layout_id"] for p in props}) == 2
            for sd, p in zip(model.reconstruct_to_model_weights(batch["weight"], props), props):
                original = torch.load(tiny_zoo[0] / p["source_path"], weights_only=True)["state_dict"]
                original = canonical.canonicalize(p["architecture"], original)
                assert list(sd) == list(original), p["id"]
                for k, v in original.items():
                    assert sd[k].dtype == v.dtype and sd[k].shape == v.shape, (p["id"], k)
                    if normalize:  # standardised and back: float32 rounding only
                        torch.testing.assert_close(sd[k], v, rtol=1e-6, atol=1e-7, msg=f"{p['id']} {k}")
                    else:
                        assert torch.equal(sd[k], v), (p["id"], k)
                checked.add((p["architecture"], p["id"]))
    assert mixed and {a for a, _ in checked} == {"cnn", "mlp"} and len(checked) == 10


def test_train_writes_its_outputs_and_exports_the_best_epoch(shards, tmp_path):
    """The last epoch is spoiled on purpose, so 'best' and 'last' differ: the export must be the best."""
    p = tiny()
    out, ckpt, live, metrics = fit(p, shards, tmp_path, callbacks=[SpoilLastValidation()])

    model = VAE.from_export(str(out))
    blob = torch.load(out, weights_only=True)
    assert blob["format_version"] == FORMAT_VERSION and not model.training
    assert model.cfg.channels == (4, 8) and model.cfg.latent_dim == 8 and model.layout_ids == sorted(
        json.loads((shards / "layouts.json").read_text()))

    summary = json.loads((live / "metrics.json").read_text())
    assert set(summary["train"]) >= {"loss", "recon", "kl", "mse"} and set(summary["val"]) >= {"loss", "recon"}
    assert summary["val"]["loss"] == pytest.approx(metrics["val/loss"])
    val_curve = tsv(live / "plots" / "metrics" / "val" / "loss.tsv")
    assert len(val_curve) == p.max_epochs and len(tsv(live / "plots" / "metrics" / "train" / "loss.tsv")) == 2
    assert val_curve[-1] > 2 * val_curve[0]  # the spoiling worked: epoch 0 is the best

    last = torch.load(ckpt / "last.ckpt", weights_only=True)
    best = torch.load(ckpt / "best.ckpt", weights_only=True)
    assert last["epoch"] == 1 and best["epoch"] == 0
    assert states_equal(blob["state_dict"], best["state_dict"])
    assert not states_equal(blob["state_dict"], last["state_dict"])
    # recomputed from the export alone, its val loss is the best logged one (and not the last)
    assert val_loss(model, shards, p.batch_size) == pytest.approx(min(val_curve), rel=1e-5)


def test_an_empty_val_split_keeps_the_last_epoch_and_says_so(tiny_zoo, tmp_path, capsys):
    """A small zoo can send no run to val (ingest's hash split): train keeps the last epoch, with one line."""
    no_val = tmp_path / "shards"
    ingest(IngestParams(zoo_dir=str(tiny_zoo[0]), split=(0.6, 0.0, 0.4), workers=1), no_val, log=lambda *_: None)
    counts = json.loads((no_val / "manifest.json").read_text())["counts"]
    assert counts["val"] == 0 and counts["test"] > 0
    out, ckpt, _, _ = fit(tiny(), no_val, tmp_path / "run")
    assert "train: the val split holds no networks" in capsys.readouterr().out
    last = torch.load(ckpt / "last.ckpt", weights_only=True)
    assert last["epoch"] == 1 and states_equal(torch.load(out, weights_only=True)["state_dict"], last["state_dict"])
    # and the stages after it: nothing of val to encode or decode, the rest as usual
    encode(EncodeParams(refine_steps=0), no_val, out, tmp_path / "latents.parquet")
    written = reconstruct(ReconstructParams(n_samples=2, sampler="kde"), no_val, out, tmp_path / "latents.parquet",
                          tmp_path / "recon")
    assert written["val"] == 0 and written["test"] == counts["test"] and written["samples"] > 0


def test_same_seed_same_bytes_other_seed_other_bytes(shards, tmp_path):
    a = fit(tiny(), shards, tmp_path / "a")[0].read_bytes()
    b = fit(tiny(), shards, tmp_path / "b")[0].read_bytes()
    c = fit(tiny(seed=1), shards, tmp_path / "c")[0].read_bytes()
    assert a == b
    assert a != c


def test_resume_runs_only_the_remaining_epochs_from_last_ckpt(shards, tmp_path):
    first = RecordEpochs()
    _, ckpt, live1, _ = fit(tiny(max_epochs=1, resume=True), shards, tmp_path / "a", [first])
    assert first.epochs == [0]  # resume with no last.ckpt yet starts from scratch
    assert json.loads((live1 / "metrics.json").read_text())["epoch"] == 0
    saved = torch.load(ckpt / "last.ckpt", weights_only=True)

    second = RecordEpochs()
    out = tmp_path / "b" / "vae.ckpt"
    train(tiny(max_epochs=2, resume=True), shards, out, ckpt, tmp_path / "b" / "live", callbacks=[second])
    assert second.epochs == [1]
    assert states_equal(second.start, saved["state_dict"])  # continued from last.ckpt's weights
    resumed = torch.load(ckpt / "last.ckpt", weights_only=True)
    assert resumed["epoch"] == 1 and resumed["global_step"] == 2 * saved["global_step"]
    assert json.loads((tmp_path / "b" / "live" / "metrics.json").read_text())["epoch"] == 1
    assert len(tsv(tmp_path / "b" / "live" / "plots" / "metrics" / "train" / "loss.tsv")) == 1
    assert out.exists()


@pytest.mark.slow
def test_ddp_spawn_ranks_see_disjoint_halves_of_the_train_split(shards, tmp_path):
    ids = tmp_path / "ids"
    ids.mkdir()
    p = tiny(strategy="ddp_spawn", devices=2)
    out = fit(p, shards, tmp_path / "run", callbacks=[RecordTrainIds(ids)])[0]
    assert VAE.from_export(str(out)).cfg.max_len == json.loads((shards / "manifest.json").read_text())["max_len"]
    train_ids = {r["id"] for r in ZooDataset(shards, "train").rows}
    per_rank = [[line.split("\t") for line in (ids / f"rank{r}.tsv").read_text().splitlines()] for r in (0, 1)]
    for epoch in range(p.max_epochs):
        seen = [[i for e, i in rows if int(e) == epoch] for rows in per_rank]
        assert len(seen[0]) == len(seen[1]) == len(train_ids) // 2  # 4 models: no padding repeats
        assert not set(seen[0]) & set(seen[1]) and set(seen[0]) | set(seen[1]) == train_ids


@pytest.mark.slow
def test_stage_script_runs_two_process_cpu_ddp(shards, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": {**TINY, "max_epochs": 1, "strategy": "ddp", "devices": 2}}))
    out = tmp_path / "models" / "vae.ckpt"
    cmd = [sys.executable, str(REPO / "stages" / "train.py"), "--params", str(params), "--shards", str(shards),
           "--out", str(out), "--ckpt-dir", str(tmp_path / "lightning"), "--live-dir", str(tmp_path / "live")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    log = res.stdout + res.stderr
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in log and "GLOBAL_RANK: 1, MEMBER: 2/2" in log  # two processes ran
    assert "litlogger" not in log and "LeafSpec" not in log  # Lightning's noise, in every process
    model = VAE.from_export(str(out))
    assert model.cfg.channels == (4, 8) and (tmp_path / "lightning" / "last.ckpt").exists()
    # the logged val loss (synced over both ranks) is the exported model's val loss over the whole val split
    logged = json.loads((tmp_path / "live" / "metrics.json").read_text())["val"]["loss"]
    assert val_loss(model, shards, TINY["batch_size"]) == pytest.approx(logged, rel=1e-5)


def test_params_are_checked_before_anything_runs(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  codec: conv\n  preset: d2nwg\n  channels: [8, 16]\n  kl_weight: 1e-6\n")
    # each key given is read as written (a list as a tuple, YAML's string 1e-6 as a number); the rest are defaults
    assert load_section(params, "train", TrainParams) == TrainParams(codec="conv", preset="d2nwg", channels=(8, 16),
                                                                     kl_weight=1e-6)
    params.write_text("train:\n  batch_sise: 8\n")
    with pytest.raises(ParamsError, match=r"^train\.batch_sise: unknown key; allowed keys are .*'batch_size'"):
        load_section(params, "train", TrainParams)
    params.write_text("train:\n  learning_rate: 0\n")
    with pytest.raises(ParamsError, match=r"^train\.learning_rate: 0(\.0)? is not allowed; need > 0$"):
        load_section(params, "train", TrainParams)
    params.write_text("train:\n  channels: 16\n")
    with pytest.raises(ParamsError, match=r"^train\.channels: 16 is not allowed; expected a list"):
        load_section(params, "train", TrainParams)
    # through the stage's entry point: one line, exit code 2, nothing written
    args = argparse.Namespace(params=str(params), shards=str(tmp_path / "missing"), out=str(tmp_path / "vae.ckpt"),
                              ckpt_dir=str(tmp_path / "lightning"), live_dir=str(tmp_path / "live"))
    capsys.readouterr()
    assert run_command("train", run, args) == 2
    err = capsys.readouterr().err
    assert err.startswith("weightvae train: bad params: train.channels: 16 is not allowed") and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


@pytest.mark.slow
def test_the_conv_codec_trains_and_exports_too(shards, tmp_path):
    out = fit(tiny(codec="conv", channels=[4], latent="spatial", max_epochs=1), shards, tmp_path)[0]
    model = VAE.from_export(str(out))
    assert model.cfg.codec == "conv" and model.net.latent_shape == (1, 49, 50)  # 2,410 weights as a 49x50 image
    # the latents table stores codes flat: encode -> reconstruct (decoding them and sampling around them) works
    encode(EncodeParams(refine_steps=2, probe_count=8), shards, out, tmp_path / "latents.parquet")
    reconstruct(ReconstructParams(n_samples=2, sampler="kde"), shards, out, tmp_path / "latents.parquet",
                tmp_path / "recon")
    rows, z = read_latents(tmp_path / "latents.parquet", "test")
    assert z.shape == (len(rows), 49 * 50)
    ds = ZooDataset(shards, "test")
    props = {item["model_properties"]["id"]: item["model_properties"] for item in (ds[i] for i in range(len(ds)))}
    for r, code in zip(rows, z):
        rec = torch.load(tmp_path / "recon" / "test" / (r["id"].replace("/", "__") + ".pt"), weights_only=True)
        want = model.reconstruct_to_model_weights(model.decode(code.view(1, 1, 49, 50)), [props[r["id"]]])[0]
        for k, v in want.items():  # decoded alone vs in reconstruct's batch: float rounding only
            torch.testing.assert_close(rec["state_dict"][k], v, rtol=1e-5, atol=1e-6, msg=f"{r['id']} {k}")
    assert len(list((tmp_path / "recon" / "samples").glob("*.pt"))) >= 2
    with pytest.raises(ParamsError, match="train.preset: 'd2nwg' is not allowed; the d2nwg preset is a conv codec"):
        tiny(preset="d2nwg")


def test_a_half_written_dvclive_summary_is_rebuilt_from_its_plots(tmp_path):
    """What a run killed while DVCLive rewrote metrics.json leaves, and what resume then reads."""
    from weightvae.train import repair_live_summary

    plots = tmp_path / "plots" / "metrics"
    (plots / "train").mkdir(parents=True)
    (plots / "epoch.tsv").write_text("step\tepoch\n7\t0\n15\t1\n")
    (plots / "train" / "loss.tsv").write_text("step\tloss\n7\t0.5\n15\t0.25\n23\t0.1")  # last line cut: no newline
    (tmp_path / "metrics.json").write_text('{"train": {"loss": 0.2')
    lines = []
    assert repair_live_summary(tmp_path, log=lines.append)
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"epoch": 1, "train": {"loss": 0.25}, "step": 15}
    assert lines == [f"train: {tmp_path / 'metrics.json'} was half-written (a killed run); rebuilt from {plots} "
                     "to resume"]
    whole = (tmp_path / "metrics.json").read_bytes()
    assert not repair_live_summary(tmp_path, log=lines.append) and len(lines) == 1  # a sound summary is left alone
    assert (tmp_path / "metrics.json").read_bytes() == whole


@pytest.mark.parametrize("by", ["tensor", "unit"])
def test_tensor_scales_code_each_groups_own_scale_and_run_end_to_end(tiny_zoo, tmp_path, by):
    """`train.tensor_scales` on a one-layout zoo (the tiny zoo's CNNs): the encoder's code starts with each
    tensor's (`scale_groups: unit`: each output unit's) log-std and mean of the standardised weights (computed by
    hand from the dataset), refinement keeps them, encode -> reconstruct run on it, and what it cannot do
    (several layouts, other codecs, too small a latent) is one error."""
    import shutil

    from weightvae.layout import Layout
    from weightvae.train import tensor_sizes

    cnn = tmp_path / "cnn_zoo"
    shutil.copytree(tiny_zoo[0], cnn, ignore=lambda d, names: [n for n in names if "mlp" in n])
    shards = tmp_path / "shards"
    ingest(IngestParams(zoo_dir=str(cnn), workers=1), shards, log=lambda *_: None)
    layouts = json.loads((shards / "layouts.json").read_text())
    assert len(layouts) == 1
    layout = Layout.from_dict(next(iter(layouts.values())))
    groups = []  # by hand: a unit is one row of a weight (its first dimension), a bias one group
    for e in layout.learned:
        rows = e.shape[0] if by == "unit" and len(e.shape) >= 2 else 1
        groups += [slice(e.offset + r * e.numel // rows, e.offset + (r + 1) * e.numel // rows) for r in range(rows)]
    t = len(groups)
    assert t == (8 if by == "tensor" else 8 + 1 + 8 + 1 + 24 + 1 + 10 + 1)  # conv1, conv2, fc1, fc2 and biases
    p = tiny(tensor_scales=True, scale_groups=by, latent_dim=2 * t + 4, max_epochs=1)
    out = fit(p, shards, tmp_path / "run")[0]
    model = VAE.from_export(str(out))
    assert model.cfg.tensor_scales and model.net.n_stats == 2 * t and model.cfg.latent_dim == 2 * t + 4
    encode(EncodeParams(refine_steps=0), shards, out, tmp_path / "latents.parquet")
    rows, z = read_latents(tmp_path / "latents.parquet", "test")
    ds = ZooDataset(shards, "test", normalize=True, max_len=model.cfg.max_len)
    by_id = {ds[i]["model_properties"]["id"]: ds.vector(i).double() for i in range(len(ds))}
    for r, code in zip(rows, z, strict=True):
        x = by_id[r["id"]]
        std = torch.stack([x[sl].std(unbiased=False) for sl in groups])
        mean = torch.stack([x[sl].mean() for sl in groups])
        torch.testing.assert_close(code[:t].double(), (std + 1e-6).log(), atol=1e-5, rtol=0, msg=r["id"])
        torch.testing.assert_close(code[t:2 * t].double(), mean, atol=1e-5, rtol=0, msg=r["id"])
    # refinement moves the code and keeps the measured statistics exactly
    encode(EncodeParams(refine_steps=3, probe_count=8), shards, out, tmp_path / "refined.parquet")
    rows_r, zr = read_latents(tmp_path / "refined.parquet", "test")
    assert [r["id"] for r in rows_r] == [r["id"] for r in rows]
    assert torch.equal(zr[:, :2 * t], z[:, :2 * t]) and not torch.allclose(zr[:, 2 * t:], z[:, 2 * t:])
    reconstruct(ReconstructParams(n_samples=2, sampler="kde"), shards, out, tmp_path / "refined.parquet",
                tmp_path / "recon")
    assert len(list((tmp_path / "recon" / "test").glob("*.pt"))) == len(rows)
    if by == "unit":
        with pytest.raises(ParamsError, match=r"train.latent_dim: 108 is not allowed; with train.tensor_scales the "
                                              r"latent holds 2 values for each of the 54 units and 1-D tensors "
                                              r"\(train.scale_groups: unit\) plus the code: need > 108"):
            tensor_sizes(layouts, tiny(tensor_scales=True, scale_groups="unit", latent_dim=108))
        with pytest.raises(ParamsError, match="train.scale_groups: 'unit' is not allowed; per-unit scales are a "
                                              "kind of tensor_scales: set train.tensor_scales: true with it"):
            tiny(scale_groups="unit")
        with pytest.raises(ParamsError, match="train.scale_groups: 'layer' is not allowed; choose tensor or unit"):
            tiny(tensor_scales=True, scale_groups="layer")
        return

    with pytest.raises(ParamsError, match="train.tensor_scales: True is not allowed; per-tensor scales in the latent "
                                          "are a linear-codec feature"):
        tiny(codec="conv", tensor_scales=True)
    with pytest.raises(ParamsError, match=r"train.latent_dim: 8 is not allowed; with train.tensor_scales the latent "
                                          rf"holds 2 values for each of the {t} learned tensors plus the code: "
                                          rf"need > {2 * t}"):
        tensor_sizes(layouts, tiny(tensor_scales=True))
    two = {**layouts, "other": next(iter(layouts.values()))}
    with pytest.raises(ParamsError, match="train.tensor_scales: True is not allowed; these shards hold 2 layouts"):
        tensor_sizes(two, tiny(tensor_scales=True))


@pytest.mark.parametrize("scales", [False, True])
def test_function_code_codes_the_predicted_classes_and_runs_end_to_end(tiny_zoo, tmp_path, scales):
    """`train.function_code` on a one-layout zoo (the tiny zoo's CNNs, 2 in train): the code's leading values are
    the whitened principal components of the one-hot classes each network predicts on the probe inputs, here
    computed by hand from the networks run as `nn.Module`s (2 train networks: one direction, the rest 0);
    `tensor_scales` follow them; refinement keeps both; encode -> reconstruct run on it; and what it cannot do
    is one error each."""
    import shutil

    from weightvae.archs import build_model
    from weightvae.behaviour import probe_inputs
    from weightvae.layout import Layout

    cnn = tmp_path / "cnn_zoo"
    shutil.copytree(tiny_zoo[0], cnn, ignore=lambda d, names: [n for n in names if "mlp" in n])
    shards = tmp_path / "shards"
    ingest(IngestParams(zoo_dir=str(cnn), workers=1), shards, log=lambda *_: None)
    k, n_stats = 3, 2 * 8 if scales else 0
    p = tiny(function_code=k, tensor_scales=scales, probe_count=16, latent_dim=k + n_stats + 4, max_epochs=1)
    out = fit(p, shards, tmp_path / "run")[0]
    model = VAE.from_export(str(out))
    assert model.net.n_func == k and model.measured_latent == k + n_stats and model.cfg.function_dim == 16 * 10
    assert model.hparams["vae"]["function_code"] == k
    # off, the fields are left out of the export: a default model's bytes stay those dvc.lock records
    assert "function_code" not in build_module(tiny(), 20, ["a"], 1).hparams["vae"]
    encode(EncodeParams(refine_steps=0), shards, out, tmp_path / "latents.parquet")
    probes = probe_inputs("digits", 16)

    def signatures(split: str) -> tuple[list[str], torch.Tensor]:
        """Each network's one-hot predictions on the probes, flat, from its state_dict in an `nn.Module`."""
        ds = ZooDataset(shards, split, normalize=False)
        ids, rows = [], []
        for i in range(len(ds)):
            props = ds[i]["model_properties"]
            net = build_model(props["architecture"], json.loads(props["arch_kwargs"] or "{}"))
            layout = Layout.from_dict(props["layout"])
            net.load_state_dict(layout.unflatten(ds.vector(i, pad=False), props.get("buffers") or {}))
            with torch.no_grad():
                pred = net.eval()(probes).argmax(-1)
            ids.append(props["id"])
            rows.append(torch.nn.functional.one_hot(pred, 10).flatten().double())
        return ids, torch.stack(rows)

    train_ids, s_train = signatures("train")
    assert len(train_ids) == 2
    v = s_train[0] - s_train[1]
    assert v.abs().sum() > 0  # the two train networks predict differently on some probe
    # two centred rows +-v/2: one direction v/|v|, std |v|/sqrt(2) (n - 1 = 1)
    hand = {}
    for split in ("train", "test"):
        ids, s = signatures(split)
        hand.update(zip(ids, ((s - s_train.mean(0)) @ v / v.norm() / (v.norm() / 2 ** 0.5)).tolist()))
    codes = {}
    for split in ("train", "test"):
        rows, z = read_latents(tmp_path / "latents.parquet", split)
        codes.update({r["id"]: c for r, c in zip(rows, z, strict=True)})
    sign = 1.0 if codes[train_ids[0]][0] * hand[train_ids[0]] > 0 else -1.0  # a direction's sign is arbitrary
    for i, h in hand.items():
        assert codes[i][0].item() == pytest.approx(sign * h, abs=1e-5), i
        assert torch.equal(codes[i][1:k], torch.zeros(k - 1)), i  # beyond the signatures' rank: 0
    assert sum(hand[i] ** 2 for i in train_ids) / (2 - 1) == pytest.approx(1.0)  # whitened: unit variance on train
    # refinement moves the code and keeps the measured values exactly
    encode(EncodeParams(refine_steps=3, probe_count=8), shards, out, tmp_path / "refined.parquet")
    _, z = read_latents(tmp_path / "latents.parquet", "test")
    _, zr = read_latents(tmp_path / "refined.parquet", "test")
    m = k + n_stats
    assert torch.equal(zr[:, :m], z[:, :m]) and not torch.allclose(zr[:, m:], z[:, m:])
    reconstruct(ReconstructParams(n_samples=2, sampler="kde"), shards, out, tmp_path / "refined.parquet",
                tmp_path / "recon")
    assert len(list((tmp_path / "recon" / "test").glob("*.pt"))) == len(z)
    if scales:
        return

    with pytest.raises(ParamsError, match="train.function_code: 3 is not allowed; the function code is a "
                                          "linear-codec feature"):
        tiny(codec="conv", function_code=3)
    with pytest.raises(ParamsError, match="train.function_code: 3 is not allowed; the function code and "
                                          "train.encoder_probes both give the encoder"):
        tiny(function_code=3, encoder_probes=True)
    with pytest.raises(ParamsError, match=r"train.latent_dim: 8 is not allowed; the latent holds the 8 values of "
                                          r"train.function_code plus the code: need > 8"):
        tiny(function_code=8)
    with pytest.raises(ParamsError, match="train.function_code: -1 is not allowed; need >= 0"):
        tiny(function_code=-1)


def test_function_code_refuses_a_zoo_of_two_layouts(shards, tmp_path):
    """The tiny zoo holds CNNs and MLPs: two layouts, so no one signature; the error says so before training."""
    with pytest.raises(ParamsError, match=r"train.function_code: 2 is not allowed; the function code needs one "
                                          r"layout .* these shards hold 2 layout\(s\) and 2 runnable"):
        fit(tiny(function_code=2), shards, tmp_path / "run")
    assert not (tmp_path / "run" / "vae.ckpt").exists()


def test_a_fresh_run_removes_its_own_checkpoints_and_nothing_else(shards, tmp_path):
    """`--ckpt-dir .` (the working directory, here tmp_path, holding the user's files): a fresh run removes stale
    best/last checkpoints, even one that stops before writing new ones, and leaves every other file alone."""
    mine = {"notes.txt": b"mine", "data/x.pt": b"mine too", "best.ckpt.bak": b"a copy"}
    for name, data in mine.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    for name in ("best.ckpt", "last.ckpt"):
        (tmp_path / name).write_bytes(b"stale: another config's")
    with pytest.raises(RuntimeError, match="stopped before any checkpoint"):
        train(tiny(max_epochs=1), shards, "vae.ckpt", ".", "live", callbacks=[StopAtStart()])
    assert not (tmp_path / "best.ckpt").exists() and not (tmp_path / "last.ckpt").exists()
    assert {name: (tmp_path / name).read_bytes() for name in mine} == mine
    train(tiny(max_epochs=1), shards, "vae.ckpt", ".", "live")
    assert torch.load(tmp_path / "best.ckpt", weights_only=True)["epoch"] == 0
    assert {name: (tmp_path / name).read_bytes() for name in mine} == mine


def test_checkpoints_do_not_depend_on_the_folder_and_resume_in_another(shards, tmp_path, monkeypatch):
    """The pipeline's journey in two clones: relative paths from each clone's root give checkpoints of the same
    bytes, naming neither folder. A run resumed in a third folder (a copy) keeps the best score it saved: the
    spoiled epoch 1 is worse, so best.ckpt stays epoch 0 (Lightning's own would forget the score and overwrite)."""
    for clone in ("a", "b/deeper"):
        shutil.copytree(shards, tmp_path / clone / "shards")
        monkeypatch.chdir(tmp_path / clone)
        train(tiny(max_epochs=1, resume=True), "shards", "vae.ckpt", "lightning", "live")
    for name in ("best.ckpt", "last.ckpt"):
        a, b = ((tmp_path / clone / "lightning" / name).read_bytes() for clone in ("a", "b/deeper"))
        assert a == b, name
        assert os.path.realpath(tmp_path).encode() not in a and str(tmp_path).encode() not in a, name

    shutil.copytree(tmp_path / "a", tmp_path / "c")
    monkeypatch.chdir(tmp_path / "c")
    epochs = RecordEpochs()
    train(tiny(max_epochs=2, resume=True), "shards", "vae.ckpt", "lightning", "live",
          callbacks=[SpoilLastValidation(), epochs])
    assert epochs.epochs == [1]  # resumed from the copied last.ckpt
    assert torch.load(Path("lightning/last.ckpt"), weights_only=True)["epoch"] == 1
    assert torch.load(Path("lightning/best.ckpt"), weights_only=True)["epoch"] == 0


def test_the_train_log_has_no_litlogger_tip_nor_leafspec_warning(shards, tmp_path, caplog, recwarn):
    """Lightning's tip to install litlogger and torch's LeafSpec deprecation (from Lightning's code) are out of the
    log; Lightning's other lines stay (the stage's own log: `test_stage_script_runs_two_process_cpu_ddp`)."""
    lightning_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    lightning_log.addHandler(caplog.handler)
    try:
        fit(tiny(max_epochs=1), shards, tmp_path)
    finally:
        lightning_log.removeHandler(caplog.handler)
    assert "`Trainer.fit` stopped: `max_epochs=1` reached." in caplog.text
    assert "litlogger" not in caplog.text
    assert not [w for w in recwarn if "LeafSpec" in str(w.message)]
