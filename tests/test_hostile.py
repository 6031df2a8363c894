"""Hostile input: files that try to run code, lie about their architecture, have odd names, point elsewhere,
hide in big zoos; and bad params for every stage.

Already covered in tests/test_ingest.py (not repeated here): a pickle that would run code on load, as a torch
zip and as a raw pickle, refused with the side effect not happened (test_malicious_pickle_is_refused_and_never_run,
test_pickles_the_safe_loader_cannot_read_are_refused_too); zero-byte, truncated, non-torch and truncated
safetensors files, NaN/Inf weights, a `.pt` holding a list, a non-tensor value, bad model_properties and a
symlink pointing outside the zoo, each stopping ingest naming the file or skipped and reported
(BAD_FILES / test_bad_files_stop_ingest_naming_the_file_or_are_skipped_and_reported); a model longer than
max_len (refused, never truncated); a second copy of a checkpoint.
"""

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from weightvae.archs import build_model
from weightvae.data import ZooDataset
from weightvae.evaluate import EvaluateParams
from weightvae.ingest import IngestError, IngestParams, ingest
from weightvae.layout import Layout
from weightvae.params import ParamsError, load_section, run_command
from weightvae.reconstruct import ReconstructParams
from weightvae.shards import open_shard
from weightvae.train import TrainParams
from weightvae.zoo import ZooParams

ROOT = Path(__file__).resolve().parents[1]
quiet = {"log": lambda *_: None}


def _ingest(zoo, out, **kw):
    return ingest(IngestParams(zoo_dir=str(zoo), **{"workers": 1, **kw}), out, **quiet)


def _rows(out):
    return {r["source_path"]: r for r in pq.read_table(out / "models.parquet").to_pylist()}


def _cnn_record(tiny_zoo):
    return torch.load(tiny_zoo[0] / "digits-cnn-0000_e001.pt", weights_only=True)


# ----------------------------------------------------------------------------- code on load, new path


class Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_code_in_a_model_zoos_checkpoint_is_refused_and_never_run(tmp_path):
    """The Model Zoos `checkpoints` file (no suffix) goes through the same safe loader."""
    run = tmp_path / "zoo" / "run-a"
    (run / "checkpoint_000001").mkdir(parents=True)
    (run / "params.json").write_text("{}")
    marker = tmp_path / "pwned.txt"
    torch.save({"fc.weight": torch.zeros(2), "note": Evil(marker)}, run / "checkpoint_000001" / "checkpoints")
    with pytest.raises(IngestError, match=r"run-a/checkpoint_000001/checkpoints: needs arbitrary pickle code"):
        _ingest(tmp_path / "zoo", tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- a file that lies about its network


def _claims_cnn(tiny_zoo, zoo, change, kwargs=None):
    rec = _cnn_record(tiny_zoo)
    change(rec["state_dict"])
    if kwargs is not None:
        rec["model_properties"]["architecture"]["kwargs"] = kwargs
    zoo.mkdir(exist_ok=True)
    torch.save(rec, zoo / "liar.pt")


_FIT = r"does not fit its architecture 'cnn' \(kwargs \{\}\), so it could not be rebuilt: "
LIARS = {
    "wrong-shape": (lambda sd: sd.update({"conv1.weight": torch.zeros(8, 1, 5, 5)}), None,
                    _FIT + r"'conv1\.weight' has shape \[8, 1, 5, 5\], the architecture's is \[8, 1, 3, 3\]"),
    "missing-tensor": (lambda sd: sd.pop("fc2.bias"), None, _FIT + r"'fc2\.bias' is missing"),
    "extra-tensor": (lambda sd: sd.update({"fc3.weight": torch.zeros(3, 3)}), None,
                     _FIT + r"'fc3\.weight' is not in the architecture"),
    "kwargs-do-not-build": (lambda sd: None, {"chanels": [8, 8]},
                            r"architecture 'cnn' cannot be built from kwargs \{\"chanels\": \[8, 8\]\}: TypeError"),
    "kwargs-give-other-shapes": (lambda sd: None, {"hidden": 16},
                                 r"does not fit its architecture 'cnn' \(kwargs \{\"hidden\": 16\}\), "
                                 r".*'fc1\.weight' has shape \[24, 32\], the architecture's is \[16, 32\]"),
}


@pytest.mark.parametrize("case", list(LIARS))
def test_a_file_that_does_not_fit_its_known_architecture_is_refused_naming_the_tensor(tiny_zoo, tmp_path, case):
    """evaluate rebuilds a network from its stored architecture: a file that would not load into it is refused."""
    change, kwargs, reason = LIARS[case]
    _claims_cnn(tiny_zoo, tmp_path / "zoo", change, kwargs)
    with pytest.raises(IngestError, match=rf"zoo/liar\.pt: {reason}"):
        _ingest(tmp_path / "zoo", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_architecture_check_uses_the_stored_kwargs_and_ignores_dtypes(tiny_zoo, tmp_path):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    rec = _cnn_record(tiny_zoo)
    torch.manual_seed(0)
    wide = build_model("cnn", {"hidden": 16}).state_dict()
    rng = torch.get_rng_state()
    torch.save({**rec, "state_dict": wide, "model_properties": {**rec["model_properties"], "run_id": "wide",
                "architecture": {"name": "cnn", "kwargs": {"hidden": 16}}}}, zoo / "wide.pt")
    torch.save({**rec, "state_dict": {k: v.double() for k, v in rec["state_dict"].items()}}, zoo / "double.pt")
    m = _ingest(zoo, tmp_path / "out", split=(1.0, 0.0, 0.0))
    assert m["models"] == 2 and m["rejected"] == []
    assert torch.equal(torch.get_rng_state(), rng)  # building the reference network leaves the caller's RNG alone


# ----------------------------------------------------------------------------- names and links


def test_names_with_spaces_and_non_ascii_characters_are_ingested_and_recorded_exactly(tiny_zoo, tmp_path):
    zoo = tmp_path / "zoo ü"
    (zoo / "Läufe 2024 ✓").mkdir(parents=True)
    rec = _cnn_record(tiny_zoo)
    names = {"run é 1.pt": rec, "Läufe 2024 ✓/net 中文 #2.pt": rec["state_dict"],
             "  leading space.pth": rec["state_dict"]}
    for name, obj in names.items():
        torch.save(obj, zoo / name)
    m = _ingest(zoo, tmp_path / "out ß", split=(1.0, 0.0, 0.0), canonicalize=False)  # the vectors as saved
    assert m["models"] == 3 and m["rejected"] == []
    rows = _rows(tmp_path / "out ß")
    assert sorted(rows) == sorted(names)
    assert rows["Läufe 2024 ✓/net 中文 #2.pt"]["id"] == "Läufe 2024 ✓/net 中文 #2"
    assert rows["run é 1.pt"]["id"] == "digits-cnn-0000/e001"  # zoo schema: the id comes from its properties
    for name, r in rows.items():
        sd = torch.load(zoo / r["source_path"], weights_only=True)
        sd = sd.get("state_dict", sd)
        stored = open_shard(tmp_path / "out ß", "train", r["layout_id"])[r["row"]]
        assert np.array_equal(stored, Layout.from_state_dict(sd).flatten(sd).numpy()), name
    # the stage prints and writes the same through a subprocess (UTF-8 paths on the command line and in JSON)
    bad = zoo / "kaputt ☠.pt"
    bad.write_bytes(b"")
    params = tmp_path / "params.yaml"
    params.write_text("ingest:\n  on_error: skip\n  workers: 1\n")
    proc = subprocess.run([sys.executable, "stages/ingest.py", "--params", str(params), "--zoo-dir", str(zoo), "--out",
                           str(tmp_path / "out ß"), "--metrics", str(tmp_path / "métriques.json")],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rejected = json.loads((tmp_path / "métriques.json").read_text(encoding="utf-8"))["rejected"]
    assert rejected == [{"path": "kaputt ☠.pt", "reason": "is an empty file (0 bytes)"}]


def test_symlinked_folders_outside_the_zoo_and_symlink_loops_are_refused(tiny_zoo, tmp_path):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    shutil.copy(tiny_zoo[0] / "digits-cnn-0000_e001.pt", zoo)
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(tiny_zoo[0] / "digits-cnn-0000_e002.pt", tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", zoo / "linked")
    os.symlink(zoo / "loop.pt", zoo / "loop.pt")
    os.symlink(zoo / "digits-cnn-0000_e001.pt", zoo / "inside.pt")  # inside the zoo: followed, a second copy
    m = _ingest(zoo, tmp_path / "out", on_error="skip")
    assert m["models"] == 1
    reasons = {r["path"]: r["reason"] for r in m["rejected"]}
    assert reasons["linked"].startswith(f"is a symlink pointing outside the zoo folder (to {tmp_path / 'elsewhere'})")
    assert reasons["loop.pt"] == "is a broken symlink"
    assert reasons["inside.pt"].startswith("is a second copy of checkpoint 'digits-cnn-0000/e001'")


# ----------------------------------------------------------------------------- scale


@pytest.mark.slow
def test_a_10000_file_zoo_with_one_bad_file_ingests_9999_and_reports_the_one(tmp_path):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(10_000, 5, 8, generator=g), torch.randn(10_000, 10, generator=g)
    for i in range(10_000):
        buf = io.BytesIO()
        torch.save({"w": w[i].clone(), "b": b[i].clone()}, buf)  # 50 parameters, plain state_dict format
        (zoo / f"m{i:05d}.pt").write_bytes(buf.getvalue()[:100] if i == 6789 else buf.getvalue())
    m = ingest(IngestParams(zoo_dir=str(zoo), on_error="skip", workers=2), tmp_path / "out", **quiet)
    assert m["models"] == 9999 and m["files"] == 10_000 and m["rejected_count"] == 1
    assert m["rejected"][0]["path"] == "m06789.pt" and "truncated or corrupt" in m["rejected"][0]["reason"]
    rows = pq.read_table(tmp_path / "out" / "models.parquet", columns=["id", "split", "row", "layout_id"]).to_pylist()
    assert len(rows) == 9999 and "m06789" not in {r["id"] for r in rows}
    shards = {s: open_shard(tmp_path / "out", s, rows[0]["layout_id"]) for s in ("train", "val", "test")}
    assert sum(len(a) for a in shards.values()) == 9999  # one layout
    for r in rows[::997]:  # a sample, end to end
        i = int(r["id"][1:])
        assert np.array_equal(shards[r["split"]][r["row"]], torch.cat([w[i].flatten(), b[i]]).numpy())


# ----------------------------------------------------------------------------- any small state_dict round-trips


_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.uint8, torch.bool]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.lists(st.integers(0, 4), max_size=3), st.sampled_from(_DTYPES), st.integers(0, 2**31)),
                min_size=1, max_size=5),
       st.sampled_from([".pt", ".safetensors"]))
def test_ingest_then_dataset_then_unflatten_returns_any_small_state_dict_exactly(specs, suffix):
    sd = {}
    for i, (shape, dtype, seed) in enumerate(specs):
        t = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 100
        sd[f"layer{i}.t"] = t.to(dtype) if dtype.is_floating_point else t.to(torch.int64).to(dtype)
    assume(any(v.is_floating_point() and v.numel() > 0 for v in sd.values()))
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "zoo").mkdir()
        if suffix == ".pt":
            torch.save(sd, Path(d) / "zoo" / "net.pt")
        else:
            save_file(sd, Path(d) / "zoo" / "net.safetensors")
        _ingest(Path(d) / "zoo", Path(d) / "out", split=(1.0, 0.0, 0.0))
        ds = ZooDataset(Path(d) / "out", "train", normalize=False)
        item = ds[0]
        props = item["model_properties"]
        layout = Layout.from_dict(props["layout"])
        assert not item["weight"][layout.length:].any()  # zero padding
        back = layout.unflatten(item["weight"][:layout.length], props["buffers"])
    assert sorted(back) == sorted(sd) and (suffix == ".safetensors" or list(back) == list(sd))
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v), k


# ----------------------------------------------------------------------------- bad params, every stage

SECTIONS = {"zoo": ZooParams, "ingest": IngestParams, "train": TrainParams, "reconstruct": ReconstructParams,
            "evaluate": EvaluateParams}

# (section, bad section body, what the one message must say: key, bad value, what is allowed)
BAD_PARAMS = [
    ("zoo", {"epoch": 3}, ["zoo.epoch: unknown key", "allowed keys are", "'epochs'"]),
    ("zoo", {"epochs": "ten"}, ["zoo.epochs", "'ten' is not allowed", "expected int"]),
    ("zoo", {"epochs": 0}, ["zoo.epochs", "0 is not allowed", "need >= 1"]),
    ("ingest", {"zoo_dri": "x"}, ["ingest.zoo_dri: unknown key", "allowed keys are", "'zoo_dir'"]),
    ("ingest", {"format": "onnx"}, ["ingest.format", "'onnx' is not allowed",
                                    "['auto', 'weightvae', 'modelzoo', 'state_dict']"]),
    ("ingest", {"max_len": 0}, ["ingest.max_len", "0 is not allowed", "need null or >= 1"]),
    ("train", {"learning_rat": 0.1}, ["train.learning_rat: unknown key", "allowed keys are", "'learning_rate'"]),
    ("train", {"batch_size": "big"}, ["train.batch_size", "'big' is not allowed", "expected int"]),
    ("train", {"learning_rate": 0}, ["train.learning_rate", "0.0 is not allowed", "need > 0"]),
    ("train", {"precision": "32"}, ["train.precision", "'32' is not allowed", "'32-true'", "'bf16-mixed'"]),
    ("train", {"accelerator": "xpu"}, ["train.accelerator", "'xpu' is not allowed", "'cpu'", "'gpu'"]),
    ("train", {"strategy": "dp"}, ["train.strategy", "'dp' is not allowed", "'ddp'"]),
    ("train", {"devices": 0}, ["train.devices", "0 is not allowed", "need a count >= 1, -1 (every device) or 'auto'"]),
    ("train", {"limit_train_batches": 1.5}, ["train.limit_train_batches", "1.5 is not allowed",
                                             "a fraction in (0, 1]"]),
    ("reconstruct", {"n_sample": 3}, ["reconstruct.n_sample: unknown key", "allowed keys are", "'n_samples'"]),
    ("reconstruct", {"n_samples": 1.5}, ["reconstruct.n_samples", "1.5 is not allowed", "expected int"]),
    ("reconstruct", {"splits": ["train", "holdout"]}, ["reconstruct.splits", "['train', 'holdout'] is not allowed",
                                                        "choose from train, val, test"]),
    ("reconstruct", {"sampler": "gan"}, ["reconstruct.sampler", "'gan' is not allowed", "['flow', 'kde', 'prior']"]),
    ("reconstruct", {"kde_top": 0}, ["reconstruct.kde_top", "0.0 is not allowed", "need a fraction in (0, 1]"]),
    ("reconstruct", {"kde_bandwidth": -1}, ["reconstruct.kde_bandwidth", "-1.0 is not allowed", "need >= 0"]),
    ("evaluate", {"splt": "test"}, ["evaluate.splt: unknown key", "allowed keys are", "'split'"]),
    ("evaluate", {"seed": "x"}, ["evaluate.seed", "'x' is not allowed", "expected int"]),
    ("evaluate", {"noise_amplitudes": [0.1, -0.5]}, ["evaluate.noise_amplitudes", "[0.1, -0.5] is not allowed",
                                                      "amplitudes must be > 0"]),
]


def _params_file(folder, section, body):
    path = folder / "params.yaml"
    path.write_text(json.dumps({section: body}))  # JSON is YAML
    return path


@pytest.mark.parametrize("section, body, says", BAD_PARAMS, ids=[f"{s}-{next(iter(b))}" for s, b, _ in BAD_PARAMS])
def test_bad_params_stop_with_one_message_naming_key_value_and_what_is_allowed(tmp_path, section, body, says):
    with pytest.raises(ParamsError) as e:
        load_section(_params_file(tmp_path, section, body), section, SECTIONS[section])
    msg = str(e.value)
    assert "\n" not in msg and all(s in msg for s in says), msg


def _stage_command(section, params, out):
    args = {
        "zoo": ["--out", out / "weights", "--metrics", out / "zoo.json"],
        "ingest": ["--zoo-dir", out / "weights", "--out", out / "shards", "--metrics", out / "ingest.json"],
        "train": ["--shards", out / "shards", "--out", out / "vae.ckpt", "--ckpt-dir", out / "lightning",
                  "--live-dir", out / "live"],
        "reconstruct": ["--shards", out / "shards", "--model", out / "vae.ckpt", "--out", out / "recon"],
        "evaluate": ["--shards", out / "shards", "--recon", out / "recon", "--metrics", out / "eval.json",
                     "--table", out / "eval.csv", "--plots", out / "plots", "--live-dir", out / "live"],
    }[section]
    return [sys.executable, f"stages/{section}.py", "--params", str(params), *map(str, args)]


@pytest.mark.slow
def test_each_stage_script_exits_2_with_one_line_on_stderr_and_writes_nothing(tmp_path):
    """One bad value per stage, through the real stage scripts (run side by side: each imports torch)."""
    cases = {s: next((b, says) for sec, b, says in BAD_PARAMS if sec == s and not any("unknown key" in x for x in says))
             for s in SECTIONS}
    procs = {}
    for section, (body, _) in cases.items():
        (tmp_path / section).mkdir()
        params = _params_file(tmp_path / section, section, body)
        procs[section] = subprocess.Popen(_stage_command(section, params, tmp_path / section / "out"), cwd=ROOT,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for section, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        lines = stderr.strip().splitlines()
        assert proc.returncode == 2, (section, stderr)
        assert len(lines) == 1 and lines[0].startswith(f"weightvae {section}: bad params: "), (section, stderr)
        assert all(s in lines[0] for s in cases[section][1]), lines[0]
        assert stdout == ""
        assert sorted(p.name for p in (tmp_path / section).iterdir()) == ["params.yaml"]  # no output, no temporary


def test_unknown_dataset_and_an_evaluate_split_reconstruct_never_wrote_get_one_line(tiny_zoo, tmp_path, capsys):
    import argparse

    from weightvae import evaluate as E
    from weightvae import train as T
    from weightvae.ingest import ingest

    ingest(IngestParams(zoo_dir=str(tiny_zoo[0]), workers=1), tmp_path / "shards", log=lambda *_: None)
    params = _params_file(tmp_path, "train", {"dataset": "cifar10", "accelerator": "cpu"})
    args = argparse.Namespace(params=str(params), shards=str(tmp_path / "shards"), out=str(tmp_path / "vae.ckpt"),
                              ckpt_dir=str(tmp_path / "ckpt"), live_dir=str(tmp_path / "live"))
    assert run_command("train", T.run, args) == 2
    err = capsys.readouterr().err
    assert err == ("weightvae train: bad params: train.dataset: 'cifar10' is not allowed; choose 'joint' (every task) "
                   "or one of the shards' tasks ['digits']\n")
    (tmp_path / "recon" / "test").mkdir(parents=True)  # reconstruct wrote test only
    params = _params_file(tmp_path, "evaluate", {"split": "val"})
    args = argparse.Namespace(params=str(params), shards=str(tmp_path / "shards"), recon=str(tmp_path / "recon"),
                              latents=None, metrics=str(tmp_path / "eval.json"), table=str(tmp_path / "eval.csv"),
                              plots=str(tmp_path / "plots"), live_dir=None)
    assert run_command("evaluate", E.run, args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no reconstructions of the 'val' split; add 'val' to reconstruct.splits" in err[0]
    assert not (tmp_path / "eval.json").exists()
