"""Ingest reads the Model Zoos layout (Schürholt et al.) directly: one folder per model with params.json,
result.json (one JSON object per line, per epoch) and checkpoint_<epoch>/checkpoints (a torch-saved state_dict)."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from weightvae import canonical
from weightvae.archs import build_model
from weightvae.ingest import IngestError, IngestParams, ingest, split_of
from weightvae.layout import Layout
from weightvae.shards import open_shard

quiet = {"log": lambda *_: None}


def _ingest(zoo, out, **kw):
    return ingest(IngestParams(zoo_dir=str(zoo), **{"workers": 1, **kw}), out, **quiet)


def _rows(out):
    return {r["id"]: r for r in pq.read_table(out / "models.parquet").to_pylist()}


def _vector(out, row):
    return open_shard(out, row["split"], row["layout_id"])[row["row"]]


def _metrics(acc, it=None):
    line = {"train_acc": round(acc + 0.01, 6), "test_acc": acc, "test_loss": round(2.5 - acc, 6),
            "time_this_iter_s": 0.1}
    return line if it is None else {**line, "training_iteration": it}


def _write_run(folder, params, checkpoints, result_lines):
    """checkpoints: {folder name: state_dict}; result_lines: JSON-able objects, or raw strings."""
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps(params))
    (folder / "result.json").write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n"
                                                for x in result_lines))
    (folder / "progress.csv").write_text("training_iteration,test_acc\n")
    for name, sd in checkpoints.items():
        (folder / name).mkdir()
        torch.save(sd, folder / name / "checkpoints")
        torch.save({"state": {}, "param_groups": []}, folder / name / "optimizer")  # Ray Tune's; not a model


@pytest.fixture(scope="module")
def modelzoo(tiny_zoo, tmp_path_factory):
    """The tiny zoo's real digits networks (3 CNN and 2 MLP runs, epochs 1 and 2) re-saved in the Model Zoos
    layout. CNN runs name weightvae's architecture and task in params.json; MLP runs only carry the Model
    Zoos' own keys (-> unknown). Epoch 1 is spelled checkpoint_000001, epoch 2 checkpoint_2; the first run
    also has checkpoint_000000 (its initialisation, training_iteration 0)."""
    root = tmp_path_factory.mktemp("modelzoo") / "zoo"
    expected = {}
    runs = {}
    for f in sorted(tiny_zoo[0].glob("*.pt")):
        rec = torch.load(f, weights_only=True)
        runs.setdefault(rec["model_properties"]["run_id"], []).append(rec)
    for i, (run_id, recs) in enumerate(sorted(runs.items())):
        mp = recs[0]["model_properties"]
        folder = f"NN_tune_trainable_{i:05d}_{i}_seed={mp['seed']}"
        params = {"model::type": mp["architecture"]["name"].upper(), "optim::lr": mp["hyperparameters"]["lr"],
                  "seed": mp["seed"], "training::epochs_train": 2}
        if mp["architecture"]["name"] == "cnn":
            params.update(architecture={"name": "cnn", "kwargs": {}}, task="digits")
        checkpoints = {}
        lines = []
        if i == 0:
            torch.manual_seed(i)
            checkpoints["checkpoint_000000"] = build_model(mp["architecture"]["name"]).state_dict()
            lines.append(_metrics(0.1, it=0))
            expected[f"{folder}/e000"] = (checkpoints["checkpoint_000000"], 0.1, params)
        for rec in recs:
            e = rec["model_properties"]["epoch"]
            name = "checkpoint_000001" if e == 1 else f"checkpoint_{e}"
            checkpoints[name] = rec["state_dict"]
            acc = rec["model_properties"]["metrics"]["test_acc"]
            lines.append(_metrics(acc, it=e))
            expected[f"{folder}/e{e:03d}"] = (rec["state_dict"], acc, params)
        _write_run(root / folder, params, checkpoints, lines)
    return root, expected


def test_model_zoos_layout_is_ingested_with_epochs_metrics_and_run_splits(modelzoo, tmp_path):
    root, expected = modelzoo
    m = _ingest(root, tmp_path / "auto", workers=2, chunk_size=2)
    assert m["models"] == len(expected) == 11 and m["runs"] == 5 and m["rejected"] == []
    # params.json, result.json and progress.csv of 5 runs, and the optimizer file of each checkpoint
    assert m["ignored_files"] == 3 * 5 + 11
    assert m["tasks"]["digits"] == {s: sum(r["task"] == "digits" for r in _rows(tmp_path / "auto").values()
                                           if r["split"] == s) for s in ("train", "val", "test")}
    rows = _rows(tmp_path / "auto")
    assert sorted(rows) == sorted(expected)
    for mid, (sd, acc, params) in expected.items():
        r = rows[mid]
        folder, epoch = mid.split("/e")
        assert r["run_id"] == folder and r["epoch"] == int(epoch) and r["seed"] == params["seed"]
        assert r["test_acc"] == acc and r["train_acc"] == round(acc + 0.01, 6) and r["test_loss"] == round(2.5 - acc, 6)
        assert json.loads(r["hyperparameters"]) == params
        assert r["split"] == split_of(folder, "weightvae", (0.8, 0.1, 0.1))  # by run: a run never straddles splits
        assert r["source_path"].startswith(f"{folder}/checkpoint_") and r["source_path"].endswith("/checkpoints")
        known = "architecture" in params
        assert (r["architecture"], r["task"]) == (("cnn", "digits") if known else ("unknown", "unknown"))
        canon = canonical.canonicalize("cnn", sd) if known else sd  # ingest.canonicalize: known architectures
        assert np.array_equal(_vector(tmp_path / "auto", r), Layout.from_state_dict(sd).flatten(canon).numpy())
    # format: modelzoo reads the same files the same way
    _ingest(root, tmp_path / "mz", format="modelzoo")
    files = {p.relative_to(tmp_path / "auto") for p in (tmp_path / "auto").rglob("*.npy")}
    assert files and files == {p.relative_to(tmp_path / "mz") for p in (tmp_path / "mz").rglob("*.npy")}
    for name in ("models.parquet", "layouts.json", "stats.json", *files):
        assert (tmp_path / "auto" / name).read_bytes() == (tmp_path / "mz" / name).read_bytes(), name


def test_result_json_without_training_iteration_is_read_by_position(tiny_zoo, tmp_path):
    recs = [torch.load(f, weights_only=True) for f in sorted(tiny_zoo[0].glob("digits-cnn-0000_*.pt"))]
    sds = {"checkpoint_000000": build_model("cnn").state_dict(), "checkpoint_000001": recs[0]["state_dict"],
           "checkpoint_000002": recs[1]["state_dict"]}
    # line i is epoch i + 1; a run killed mid-write leaves a truncated last line, which has no metrics
    _write_run(tmp_path / "zoo" / "run-a", {"seed": 3}, sds, [_metrics(0.5), '{"test_acc": 0.7, "tra'])
    m = _ingest(tmp_path / "zoo", tmp_path / "out", split=(1.0, 0.0, 0.0))
    rows = _rows(tmp_path / "out")
    assert m["models"] == 3 and {k: r["test_acc"] for k, r in rows.items()} == {
        "run-a/e000": None, "run-a/e001": 0.5, "run-a/e002": None}
    assert {r["task"] for r in rows.values()} == {"unknown"} and rows["run-a/e001"]["seed"] == 3


def _run_with(tmp_path, params=None, sd=None, name="checkpoint_000001", result=True):
    folder = tmp_path / "zoo" / "run-a"
    folder.mkdir(parents=True)
    if params is not None:
        (folder / "params.json").write_text(params if isinstance(params, str) else json.dumps(params))
    if result:
        (folder / "result.json").write_text(json.dumps(_metrics(0.5, it=1)) + "\n")
    (folder / name).mkdir()
    torch.save(build_model("cnn").state_dict() if sd is None else sd, folder / name / "checkpoints")
    return tmp_path / "zoo"


BAD_RUNS = {
    "no-params-json": ({}, r"has no params\.json in its model folder 'run-a'"),
    "params-json-not-json": ({"params": "{'lr': 0.1"},
                             r"its model folder.s params\.json cannot be read: JSONDecodeError"),
    "params-json-a-list": ({"params": "[1, 2]"},
                           r"its model folder.s params\.json holds a list, expected a JSON object"),
    "architecture-not-a-name": ({"params": {"architecture": 3}}, r"params\.json\['architecture'\] is 3"),
    "shapes-do-not-fit": ({"params": {"architecture": "cnn"}, "sd": build_model("mlp").state_dict()},
                          r"does not fit its architecture 'cnn' .*'conv1\.weight' is missing"),
    "metric-not-a-number": ({"params": {}, "result": '{"training_iteration": 1, "test_acc": "high"}'},
                            r"result\.json's 'test_acc' of epoch 1 is 'high', expected a number"),
}


@pytest.mark.parametrize("case", list(BAD_RUNS))
def test_bad_model_folders_are_refused_naming_the_checkpoint(tmp_path, case):
    kw, reason = BAD_RUNS[case]
    zoo = _run_with(tmp_path, kw.get("params"), kw.get("sd"), result="result" not in kw)
    if "result" in kw:
        (zoo / "run-a" / "result.json").write_text(kw["result"] + "\n")
    with pytest.raises(IngestError, match=rf"zoo/run-a/checkpoint_000001/checkpoints: {reason}"):
        _ingest(zoo, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_formats_select_their_files_and_two_spellings_of_one_epoch_are_one_checkpoint(tiny_zoo, tmp_path):
    zoo = _run_with(tmp_path, {"task": "digits"})
    (zoo / "run-a" / "checkpoint_1").mkdir()
    (zoo / "run-a" / "checkpoint_1" / "checkpoints").write_bytes(
        (zoo / "run-a" / "checkpoint_000001" / "checkpoints").read_bytes())
    with pytest.raises(IngestError, match=r"run-a/checkpoint_1/checkpoints: is a second copy of checkpoint "
                                          r"'run-a/e001' \(first in run-a/checkpoint_000001/checkpoints\)"):
        _ingest(zoo, tmp_path / "out")
    (zoo / "run-a" / "checkpoint_1" / "checkpoints").unlink()
    extra = next(tiny_zoo[0].glob("*.pt"))
    (zoo / extra.name).write_bytes(extra.read_bytes())  # a weightvae-schema file next to the model folders
    assert _ingest(zoo, tmp_path / "out")["models"] == 2  # auto: both
    m = _ingest(zoo, tmp_path / "out", format="modelzoo")
    assert m["models"] == 1 and m["ignored_files"] == 3  # the .pt file, params.json, result.json
    assert _ingest(zoo, tmp_path / "out", format="weightvae")["models"] == 1  # only the .pt file
    (zoo / extra.name).unlink()
    with pytest.raises(IngestError, match=r"zoo: no \.pt, \.pth or \.safetensors files found"):
        _ingest(zoo, tmp_path / "out", format="state_dict")
    (zoo / "run-a" / "checkpoint_000001" / "checkpoints").unlink()
    with pytest.raises(IngestError, match=r"zoo: no Model Zoos checkpoints \(<model>/checkpoint_<epoch>/checkpoints\)"):
        _ingest(zoo, tmp_path / "out", format="modelzoo")
