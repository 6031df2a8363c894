"""safetensors out and back in: reconstruct writes every network also as `.safetensors` (deterministic bytes,
metadata as strings), `weightvae export` writes one network by id, and exported folders ingest back to the
same vectors. Also the progress lines of reconstruct and evaluate when not on a terminal."""

import contextlib
import hashlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from weightvae import canonical, tensorfile
from weightvae.archs import build_model
from weightvae.cli import main as cli
from weightvae.encode import EncodeParams, encode
from weightvae.evaluate import EvaluateParams, evaluate
from weightvae.ingest import IngestParams, ingest
from weightvae.layout import Layout
from weightvae.reconstruct import ReconstructParams, reconstruct
from weightvae.shards import open_shard
from weightvae.train import TrainParams, train
from weightvae.zoo import ZooParams, build_zoo

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small zoo (10 cnn and 6 mlp runs: evaluate needs two training runs per architecture) through ingest,
    a one-epoch VAE and reconstruct (2 samples per task/architecture), with the progress lines that
    reconstruct and evaluate print when not on a terminal."""
    base = tmp_path_factory.mktemp("export")
    cwd = os.getcwd()
    os.chdir(base)  # DVCLive must not find this repository's dvc.yaml
    try:
        build_zoo(ZooParams(architectures={"cnn": 10, "mlp": 6}, epochs=1, save_epochs=(1,), group_size=10),
                  base / "zoo", log=lambda *_: None)
        shards = base / "shards"
        ingest(IngestParams(zoo_dir=str(base / "zoo"), workers=1), shards, log=lambda *_: None)
        train(TrainParams(channels=(4,), max_epochs=1, batch_size=4, accelerator="cpu", probe_count=8), shards,
              base / "vae.ckpt", base / "ckpt", base / "live")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            encode(EncodeParams(refine_steps=2, probe_count=8), shards, base / "vae.ckpt", base / "latents.parquet")
            reconstruct(ReconstructParams(n_samples=2, sampler="kde"), shards, base / "vae.ckpt",
                        base / "latents.parquet",
                        base / "recon")
            evaluate(EvaluateParams(), shards, base / "recon", base / "latents.parquet")
    finally:
        os.chdir(cwd)
    return {"base": base, "shards": shards, "recon": base / "recon", "zoo": base / "zoo", "log": out.getvalue(),
            "table": pd.read_parquet(shards / "models.parquet")}


def _networks(recon: Path) -> list[Path]:
    return sorted(p for d in ("val", "test", "samples", "encoder/val", "encoder/test") for p in (recon / d).glob("*.pt"))


def test_reconstruct_writes_every_network_also_as_safetensors(run):
    pts = _networks(run["recon"])
    held_out = int(run["table"].split.isin(["val", "test"]).sum())
    # each held-out network twice (from its refined code and from the encoder's), 2 samples x (cnn, mlp)
    assert len(pts) == len(list(run["recon"].rglob("*.safetensors"))) == 2 * held_out + 2 * 2
    for pt in pts:
        rec = torch.load(pt, weights_only=True)
        props = rec["model_properties"]
        st = pt.with_suffix(".safetensors")
        tensors = load_file(st)
        net = build_model(props["architecture"]["name"], props["architecture"]["kwargs"])
        net.load_state_dict(tensors, strict=True)  # code without weightvae: safetensors + the architecture
        assert tensors.keys() == rec["state_dict"].keys()
        assert all(torch.equal(tensors[k], v) and tensors[k].dtype == v.dtype for k, v in rec["state_dict"].items())
        with safe_open(st, "pt") as f:
            meta = f.metadata()
        assert meta["architecture"] == props["architecture"]["name"]
        assert json.loads(meta["arch_kwargs"]) == props["architecture"]["kwargs"]
        assert meta["task"] == props["task"] and meta["layout_id"] == props["layout_id"]
        assert json.loads(meta["model_properties"]) == props
        assert json.loads(meta["state_dict_order"]) == list(rec["state_dict"])
        if pt.parent.name == "samples":
            assert meta["sampler"] == "kde" and meta["anchor_id"] == props["anchor_id"] and "source_id" not in meta
        else:
            assert meta["source_id"] == props["source_id"] == pt.stem.replace("__", "/")
            assert "sampler" not in meta


def test_safetensors_bytes_are_the_same_in_every_process(run):
    """The safetensors library's own writer orders its metadata differently from process to process;
    ours does not: a second reconstruct and another interpreter give the same bytes."""
    again = run["base"] / "recon-again"
    with contextlib.redirect_stdout(io.StringIO()):
        reconstruct(ReconstructParams(n_samples=2, sampler="kde"), run["shards"], run["base"] / "vae.ckpt",
                    run["base"] / "latents.parquet", again)
    first = {p.relative_to(run["recon"]): p.read_bytes() for p in run["recon"].rglob("*.safetensors")}
    assert first == {p.relative_to(again): p.read_bytes() for p in again.rglob("*.safetensors")}
    pt = _networks(run["recon"])[-1]
    code = ("import hashlib, sys, torch; from weightvae import tensorfile; "
            "print(hashlib.sha256(tensorfile.record_bytes(torch.load(sys.argv[1], weights_only=True))).hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", code, str(pt)], capture_output=True, text=True,
                              check=True).stdout.strip() for _ in range(2)}
    assert digests == {hashlib.sha256(pt.with_suffix(".safetensors").read_bytes()).hexdigest()}


def test_tensorfile_keeps_order_and_dtypes_and_reads_foreign_files_in_name_order(tmp_path):
    sd = {"z.weight": torch.randn(3, 2, dtype=torch.float64), "a.half": torch.randn(4).half(),
          "m.bf16": torch.randn(2, 2).bfloat16(), "b.count": torch.tensor(7), "c.mask": torch.tensor([True, False]),
          "d.empty": torch.zeros(0, 3), "e.byte": torch.arange(5, dtype=torch.uint8)}
    data = tensorfile.to_bytes(sd, {"k": "v"})
    back, meta = tensorfile.load(data)
    assert list(back) == list(sd) and meta["k"] == "v"
    assert all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in sd.items())
    (tmp_path / "ours.safetensors").write_bytes(data)
    lib = load_file(tmp_path / "ours.safetensors")  # the library reads our bytes
    assert all(torch.equal(lib[k], v) for k, v in sd.items())
    # a file written by other code records no order: read in name order, whatever order the library returns
    save_file({"fc2.bias": torch.ones(2), "fc1.weight": torch.ones(2, 2), "n": torch.tensor([1])},
              tmp_path / "foreign.safetensors")
    tensors, _ = tensorfile.load((tmp_path / "foreign.safetensors").read_bytes())
    assert list(tensors) == ["fc1.weight", "fc2.bias", "n"]
    save_file({"a": torch.ones(1)}, tmp_path / "lying.safetensors", metadata={"state_dict_order": '["b"]'})
    with pytest.raises(ValueError, match="does not list exactly the file's tensors"):
        tensorfile.load((tmp_path / "lying.safetensors").read_bytes())


def _cli(*args: str) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli(list(args)) == 0


def test_export_by_id_writes_originals_reconstructions_and_samples(run, tmp_path):
    table = pd.read_parquet(run["shards"] / "models.parquet")
    row = table[(table.split == "test") & (table.architecture == "cnn")].iloc[0]
    where = ["--shards", str(run["shards"]), "--recon", str(run["recon"])]
    # the original: the zoo's file as ingest stored it (hidden units in canonical order, ingest.canonicalize),
    # which code without weightvae loads into the architecture's module
    _cli("export", row.id, "--out", str(tmp_path / "orig.safetensors"), *where)
    zoo = torch.load(run["zoo"] / row.source_path, weights_only=True)
    tensors = load_file(tmp_path / "orig.safetensors")
    assert list(tensorfile.load((tmp_path / "orig.safetensors").read_bytes())[0]) == list(zoo["state_dict"])
    assert all(torch.equal(tensors[k], v) for k, v in canonical.canonicalize("cnn", zoo["state_dict"]).items())
    net = build_model("cnn")
    net.load_state_dict(tensors, strict=True)
    with safe_open(tmp_path / "orig.safetensors", "pt") as f:
        meta = f.metadata()
    assert (meta["run_id"], meta["epoch"], meta["task"], meta["architecture"]) == (
        zoo["model_properties"]["run_id"], str(zoo["model_properties"]["epoch"]), "digits", "cnn")
    assert json.loads(meta["model_properties"])["metrics"] == zoo["model_properties"]["metrics"]
    # the reconstruction of the same id, as .pt (from the suffix), is reconstruct's file
    _cli("export", row.id, "--kind", "reconstruction", "--out", str(tmp_path / "recon.pt"), *where)
    rec = torch.load(run["recon"] / "test" / (row.id.replace("/", "__") + ".pt"), weights_only=True)
    got = torch.load(tmp_path / "recon.pt", weights_only=True)
    assert got["model_properties"] == rec["model_properties"]
    assert all(torch.equal(got["state_dict"][k], v) for k, v in rec["state_dict"].items())
    # a sample is found by its id alone; --format wins over the suffix
    sample = min((run["recon"] / "samples").glob("*.pt"))
    _cli("export", sample.stem, "--format", "safetensors", "--out", str(tmp_path / "sample.bin"), *where)
    assert (tmp_path / "sample.bin").read_bytes() == sample.with_suffix(".safetensors").read_bytes()


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_an_exported_folder_ingests_back_to_the_same_vectors(run, tmp_path, suffix):
    shards = run["shards"]
    table = pd.read_parquet(shards / "models.parquet")
    out = tmp_path / "exported"
    for mid in table.id:
        _cli("export", mid, "--out", str(out / (mid.replace("/", "__") + suffix)), "--shards", str(shards),
             "--recon", str(run["recon"]))
    m = ingest(IngestParams(zoo_dir=str(out), format="auto", workers=1,
                            split=(1.0, 0.0, 0.0)), tmp_path / "back", log=lambda *_: None)
    assert m["models"] == len(table) and m["rejected_count"] == 0
    back = pd.read_parquet(tmp_path / "back" / "models.parquet").set_index("id")
    layouts = json.loads((shards / "layouts.json").read_text())
    assert json.loads((tmp_path / "back" / "layouts.json").read_text()) == layouts  # same layouts, same order
    for r in table.itertuples():
        b = back.loc[r.id]
        assert (b.run_id, b.task, b.architecture, b.layout_id, b.epoch, b.test_acc, b.buffers) == (
            r.run_id, r.task, r.architecture, r.layout_id, r.epoch, r.test_acc, r.buffers)
        assert np.array_equal(open_shard(tmp_path / "back", "train", b.layout_id)[b.row],
                              open_shard(shards, r.split, r.layout_id)[r.row])  # bit for bit


def test_reconstructions_ingest_back_to_their_vectors(run, tmp_path):
    folder = tmp_path / "recons"
    folder.mkdir()
    for st in (run["recon"] / "test").glob("*.safetensors"):
        (folder / st.name).write_bytes(st.read_bytes())
    ingest(IngestParams(zoo_dir=str(folder), workers=1, split=(1.0, 0.0, 0.0)), tmp_path / "back", log=print)
    back = pd.read_parquet(tmp_path / "back" / "models.parquet")
    layouts = json.loads((tmp_path / "back" / "layouts.json").read_text())
    assert sorted(back.id) == sorted(run["table"].id[run["table"].split == "test"])
    for r in back.itertuples():
        rec = torch.load(run["recon"] / "test" / (r.id.replace("/", "__") + ".pt"), weights_only=True)
        sd = canonical.canonicalize(r.architecture, rec["state_dict"])  # ingest's default: units sorted again
        flat = Layout.from_dict(layouts[r.layout_id]).flatten(sd)  # also checks the layout
        assert np.array_equal(open_shard(tmp_path / "back", "train", r.layout_id)[r.row], flat.numpy())


@pytest.mark.slow
def test_export_errors_are_one_line_and_write_nothing(run, tmp_path, capsys):
    base = [sys.executable, "-m", "weightvae.cli", "export"]
    where = ["--shards", str(run["shards"]), "--recon", str(run["recon"])]
    table = pd.read_parquet(run["shards"] / "models.parquet")
    typo = table.id.iloc[0][:-1] + "9"
    cases = [([typo, "--out", str(tmp_path / "a.pt"), *where], (rf"^weightvae export: '{re.escape(typo)}': no such "
              rf"model in .*models\.parquet; did you mean '{re.escape(table.id.iloc[0])}'")),
             (["x", "--kind", "sample", "--out", str(tmp_path / "b.pt"), *where], (r"^weightvae export: 'x': no sample "
              r"of that id in .*recon \(4 models there, e\.g\. 'sample-digits-cnn-")),
             (["x", "--out", str(tmp_path / "c.pt"), "--shards", str(tmp_path / "none"), "--recon", str(tmp_path)],
              r"^weightvae export: .*none: no models\.parquet; run ingest")]
    args, pattern = cases[0]  # the command as a user runs it: exit code 1, one line on stderr
    proc = subprocess.run(base + args, check=False, capture_output=True, text=True, cwd=ROOT)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and re.match(pattern, lines[0]), proc.stderr
    for args, pattern in cases[1:]:  # the same `main`, in-process (each interpreter start costs seconds)
        code = cli(["export", *args])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(lines) == 1 and re.match(pattern, lines[0]), lines
    assert list(tmp_path.iterdir()) == []


def test_reconstruct_and_evaluate_print_one_progress_line_each_off_a_terminal(run):
    table, lines = run["table"], run["log"].splitlines()
    n = 2 * int(table.split.isin(["val", "test"]).sum()) + 2 * 2  # refined and encoder codes, samples
    assert [line for line in lines if line.startswith("reconstruct: ")] == [
        next(line for line in lines if re.fullmatch(rf"reconstruct: {n}/{n} networks in [\d.]+s \([\d.]+ networks/s\)",
                                                    line))]
    # each test model x 9 methods (vae, vae_encoder, pca, mean, noise_0.1, noise_0.5, random_train, nearest_train,
    # oracle_train)
    n = 9 * int((table.split == "test").sum())
    assert [line for line in lines if line.startswith("evaluate: ")] == [
        next(line for line in lines if re.fullmatch(rf"evaluate: {n}/{n} networks in [\d.]+s \([\d.]+ networks/s\)",
                                                    line))]
