import argparse
import itertools
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from weightvae import FORMAT_VERSION, canonical
from weightvae import shards as shards_module
from weightvae.ingest import SPLITS, IngestError, IngestParams, ingest, split_of
from weightvae.layout import Layout
from weightvae.params import ParamsError, build

ROOT = Path(__file__).resolve().parents[1]
quiet = {"log": lambda *_: None}


def _ingest(zoo, out, **kw):
    return ingest(IngestParams(zoo_dir=str(zoo), **{"workers": 1, **kw}), out, **quiet)


@pytest.fixture(scope="module")
def shards(tiny_zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("ingest") / "shards"
    metrics = _ingest(tiny_zoo[0], out)
    return out, metrics


def _table(out):
    return pq.read_table(out / "models.parquet").to_pylist()


def _files(folder):
    """Every file under `folder`, as paths relative to it."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def _mini_zoo(tiny_zoo, path, n=2):
    """A folder with the first n files of the tiny zoo (digits-cnn-0000, epochs 1 and 2)."""
    path.mkdir()
    for f in sorted(tiny_zoo[0].glob("*.pt"))[:n]:
        shutil.copy(f, path / f.name)
    return path


def test_outputs_hold_every_checkpoint_once_with_its_exact_vector(tiny_zoo, shards):
    out, metrics = shards
    assert sorted(p.name for p in out.iterdir()) == ["layouts.json", "manifest.json", "models.parquet", "stats.json",
                                                     "test", "train", "val"]
    rows = _table(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION and manifest["max_len"] == 2410  # the longest (mlp)
    assert manifest["shard_format"] == shards_module.VERSION
    assert len(rows) == metrics["models"] == 10 and len({r["id"] for r in rows}) == 10
    assert metrics["rejected"] == [] and metrics["splits"] == {s: sum(r["split"] == s for r in rows) for s in SPLITS}
    order = [(SPLITS.index(r["split"]), r["id"]) for r in rows]
    assert order == sorted(order)
    layouts = {k: Layout.from_dict(v) for k, v in json.loads((out / "layouts.json").read_text()).items()}
    assert {r["architecture"]: r["layout_id"] for r in rows} == {"cnn": "8368dcb6efaeaf34",
                                                                 "mlp": layouts["5fc5166322bf187e"].layout_id}
    stored = 0
    for split, lid in itertools.product(SPLITS, layouts):
        part = [r for r in rows if r["split"] == split and r["layout_id"] == lid]
        path = out / split / f"{lid}.npy"
        if not part:  # no empty arrays
            assert not path.exists()
            continue
        arr = np.load(path, mmap_mode="r")
        assert arr.dtype == np.float32 and arr.shape == (len(part), layouts[lid].length)  # its own length
        assert [r["row"] for r in part] == list(range(len(part)))
        stored += os.path.getsize(path) - arr.offset
        for r in part:
            rec = torch.load(tiny_zoo[0] / r["source_path"], weights_only=True)
            mp = rec["model_properties"]
            assert r["id"] == f"{mp['run_id']}/e{mp['epoch']:03d}" and r["test_acc"] == mp["metrics"]["test_acc"]
            assert json.loads(r["arch_kwargs"]) == mp["architecture"]["kwargs"] and r["task"] == "digits"
            # ingest.canonicalize (the default) sorts a known architecture's hidden units: the same function
            canon = canonical.canonicalize(mp["architecture"]["name"], rec["state_dict"])
            vec = layouts[r["layout_id"]].flatten(canon).numpy()
            assert r["length"] == len(vec) and np.array_equal(arr[r["row"]], vec)
    assert stored == 4 * sum(r["length"] for r in rows) < 4 * 2410 * len(rows)  # a cnn is not padded to the mlp


def test_stats_are_the_train_split_mean_and_std_of_each_tensor(shards):
    out, _ = shards
    rows = [r for r in _table(out) if r["split"] == "train"]
    stats = json.loads((out / "stats.json").read_text())
    for lid, d in json.loads((out / "layouts.json").read_text()).items():
        mine = np.load(out / "train" / f"{lid}.npy").astype(np.float64)
        assert len(mine) == sum(r["layout_id"] == lid for r in rows)
        assert stats[lid]["train_count"] == len(mine) > 0
        for e in Layout.from_dict(d).learned:
            x = mine[:, e.offset:e.offset + e.numel]
            s = stats[lid]["tensors"][e.name]
            assert s["mean"] == pytest.approx(x.mean(), rel=1e-9, abs=1e-12)
            assert s["std"] == pytest.approx(x.std(), rel=1e-9)


def test_splits_are_by_run_stable_and_unmoved_by_new_runs(tiny_zoo, shards, tmp_path):
    out, _ = shards
    rows = _table(out)
    by_run = {}
    for r in rows:
        by_run.setdefault(r["run_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_run.values())  # no run in two splits
    assert len({s for v in by_run.values() for s in v}) == 3  # this tiny zoo happens to fill all three
    # a smaller zoo (some runs removed) keeps each remaining run where it was
    small = _mini_zoo(tiny_zoo, tmp_path / "small", n=6)
    again = {r["run_id"]: r["split"] for r in _table(_ingest_to(small, tmp_path / "s"))}
    assert again == {run: next(iter(s)) for run, s in by_run.items() if run in again} and len(again) == 3
    # the rule itself: a pure function of (run_id, salt), near the asked fractions
    ids = [f"run-{i}" for i in range(4000)]
    got = [split_of(i, "weightvae", (0.8, 0.1, 0.1)) for i in ids]
    assert got == [split_of(i, "weightvae", (0.8, 0.1, 0.1)) for i in ids]
    for name, frac in zip(SPLITS, (0.8, 0.1, 0.1)):
        assert abs(got.count(name) / len(ids) - frac) < 0.02
    assert {split_of(i, "weightvae", (1.0, 0.0, 0.0)) for i in ids} == {"train"}
    assert {split_of(i, "weightvae", (0.5, 0.5, 0.0)) for i in ids} == {"train", "val"}
    assert got != [split_of(i, "other-salt", (0.8, 0.1, 0.1)) for i in ids]


def _ingest_to(zoo, out, **kw):
    _ingest(zoo, out, **kw)
    return out


def test_outputs_are_byte_identical_across_runs_and_worker_counts(tiny_zoo, shards, tmp_path):
    out, _ = shards
    again = _ingest_to(tiny_zoo[0], tmp_path / "w2", workers=2, chunk_size=1)  # 10 chunks through 2 processes
    names = _files(out)
    assert names == _files(again) and len(names) > 4
    for n in names:
        assert (out / n).read_bytes() == (again / n).read_bytes(), n


def test_long_models_are_written_in_smaller_blocks_with_the_same_shards(tiny_zoo, shards, tmp_path, monkeypatch):
    """Blocks hold at most `BLOCK_VALUES` values (a block per model here): the shards are byte-identical, the
    statistics equal up to the order of float64 sums, and the manifest unchanged."""
    out, _ = shards
    monkeypatch.setattr(shards_module, "BLOCK_VALUES", 1)
    small = _ingest_to(tiny_zoo[0], tmp_path / "small")
    assert _files(out) == _files(small)
    for name in _files(out) - {"stats.json"}:
        assert (out / name).read_bytes() == (small / name).read_bytes(), name
    a, b = (json.loads((d / "stats.json").read_text()) for d in (out, small))
    assert a.keys() == b.keys()
    for lid in a:
        assert a[lid]["train_count"] == b[lid]["train_count"]
        for name, t in a[lid]["tensors"].items():
            assert b[lid]["tensors"][name]["mean"] == pytest.approx(t["mean"], rel=1e-12, abs=1e-15)
            assert b[lid]["tensors"][name]["std"] == pytest.approx(t["std"], rel=1e-9)


# ----------------------------------------------------------------------------- bad files


class Evil:
    """Unpickling this would run `open(marker, 'w')`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _evil_zip(path, marker):
    torch.save({"state_dict": {"w": torch.zeros(2)}, "model_properties": Evil(marker)}, path)


def _evil_raw(path, marker):
    with open(path, "wb") as f:
        pickle.dump({"state_dict": Evil(marker)}, f, protocol=2)


@pytest.mark.parametrize("write", [_evil_zip, _evil_raw], ids=["torch-zip", "raw-pickle"])
def test_malicious_pickle_is_refused_and_never_run(tiny_zoo, tmp_path, write):
    zoo = _mini_zoo(tiny_zoo, tmp_path / "zoo")
    marker = tmp_path / "pwned.txt"
    write(zoo / "evil.pt", marker)
    with pytest.raises(IngestError, match=r"zoo/evil\.pt: needs arbitrary pickle code .*refused") as e:
        _ingest(zoo, tmp_path / "out", workers=2, chunk_size=1)  # the error stops the worker pool too
    assert "exec" in str(e.value) and "ingest.on_error: skip" in str(e.value)
    assert not (tmp_path / "out").exists() and not marker.exists()
    m = _ingest(zoo, tmp_path / "out", on_error="skip")
    assert m["models"] == 2 and [r["path"] for r in m["rejected"]] == ["evil.pt"]
    assert not marker.exists()


def test_pickles_the_safe_loader_cannot_read_are_refused_too(tiny_zoo, tmp_path):
    zoo = _mini_zoo(tiny_zoo, tmp_path / "zoo")
    marker = tmp_path / "pwned.txt"
    with open(zoo / "evil.pt", "wb") as f:
        pickle.dump({"state_dict": Evil(marker)}, f)  # protocol 4+: opcodes weights_only does not accept
    with pytest.raises(IngestError, match=r"zoo/evil\.pt: uses pickle instructions that safe loading .*refused"):
        _ingest(zoo, tmp_path / "out")
    assert not marker.exists()


def _nan_weights(zoo):
    rec = torch.load(next(zoo.glob("*.pt")), weights_only=True)
    rec["state_dict"]["fc1.weight"][0, :3] = float("nan")
    rec["state_dict"]["fc2.bias"][1] = float("inf")
    torch.save(rec, zoo / "bad.pt")


def _symlink_outside(zoo):
    outside = zoo.parent / "elsewhere.pt"
    shutil.copy(next(zoo.glob("*.pt")), outside)
    os.symlink(outside, zoo / "bad.pt")


BAD_FILES = {
    "zero-byte": (lambda zoo: (zoo / "bad.pt").write_bytes(b""), "empty file"),
    "truncated": (lambda zoo: (zoo / "bad.pt").write_bytes(next(zoo.glob("*.pt")).read_bytes()[:3000]),
                  "truncated or corrupt"),
    "not-torch": (lambda zoo: (zoo / "bad.pth").write_text("hello"), "truncated or corrupt"),
    "truncated-safetensors": (lambda zoo: (zoo / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{"),
                              "cannot be read as safetensors"),
    "nan-inf": (_nan_weights, r"non-finite weights .*'fc1.weight' \(3 NaN, 0 Inf\), 'fc2.bias' \(0 NaN, 1 Inf\)"),
    "not-a-dict": (lambda zoo: torch.save([torch.zeros(3)], zoo / "bad.pt"), "holds a list, expected a dict"),
    "non-tensor-value": (lambda zoo: torch.save({"w": torch.zeros(3), "note": "hi"}, zoo / "bad.pt"),
                         r"state_dict\['note'\] is a str, not a tensor"),
    "bad-properties": (lambda zoo: torch.save({"state_dict": {"w": torch.zeros(3)}, "model_properties": {"task": "t"}},
                                              zoo / "bad.pt"), r"model_properties\['run_id'\]"),
    "symlink-outside": (_symlink_outside, "symlink pointing outside the zoo folder"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_stop_ingest_naming_the_file_or_are_skipped_and_reported(tiny_zoo, tmp_path, case):
    make, reason = BAD_FILES[case]
    zoo = _mini_zoo(tiny_zoo, tmp_path / "zoo")
    make(zoo)
    name = next(p.name for p in zoo.iterdir() if p.stem == "bad")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("previous output")
    with pytest.raises(IngestError, match=rf"zoo/{name}: .*{reason}"):
        _ingest(zoo, tmp_path / "out")
    # a failed ingest leaves the previous output as it was, and no temporary folder behind
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["zoo", "out"] + (["elsewhere.pt"] if "symlink" in case
                                                                                  else []))
    m = _ingest(zoo, tmp_path / "out", on_error="skip")
    assert m["models"] == 2 and m["rejected_count"] == 1 and m["rejected"][0]["path"] == name
    assert re.search(reason, m["rejected"][0]["reason"])
    assert (tmp_path / "out" / "models.parquet").exists() and not (tmp_path / "out" / "old.txt").exists()


def test_a_bad_file_is_one_line_and_weightvae_debug_shows_its_cause(tiny_zoo, tmp_path, monkeypatch, capsys):
    """Through the stage's entry point: a truncated file is one line naming it; `WEIGHTVAE_DEBUG=1` prints the
    traceback before that line, the loader's own error chained as the cause of the rejection."""
    from weightvae import ingest as stage
    from weightvae.params import run_command

    zoo = _mini_zoo(tiny_zoo, tmp_path / "zoo")
    (zoo / "bad.pt").write_bytes(next(zoo.glob("*.pt")).read_bytes()[:3000])
    (tmp_path / "params.yaml").write_text(f"ingest:\n  zoo_dir: {zoo}\n  workers: 1\n")
    args = argparse.Namespace(params=str(tmp_path / "params.yaml"), zoo_dir=None, out=str(tmp_path / "out"),
                              metrics=str(tmp_path / "ingest.json"))
    assert run_command("ingest", stage.run, args) == 1
    line = capsys.readouterr().err
    assert re.fullmatch(rf"weightvae ingest: {zoo}/bad\.pt: cannot be read as a torch file \(truncated or corrupt\?\): "
                        r"RuntimeError: PytorchStreamReader failed reading zip archive: failed finding central "
                        r"directory\.[^\n]*\. Fix or remove the file, or set `ingest\.on_error: skip`[^\n]*\n", line)
    monkeypatch.setenv("WEIGHTVAE_DEBUG", "1")
    assert run_command("ingest", stage.run, args) == 1
    err = capsys.readouterr().err
    cause, rejection = err.split("The above exception was the direct cause of the following exception:")
    assert cause.startswith("Traceback (most recent call last)") and "in load_torch" in cause
    assert "RuntimeError: PytorchStreamReader failed reading zip archive: failed finding central directory" in cause
    assert "weightvae.ingest.loaders.BadFile: cannot be read as a torch file (truncated or corrupt?)" in rejection
    assert err.endswith(line) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("error", [MemoryError("out of memory"), ZeroDivisionError("a bug")])
def test_an_unexpected_error_while_loading_is_not_called_the_files_fault(tiny_zoo, tmp_path, monkeypatch, suffix,
                                                                          error):
    """Only what a bad file raises makes it "truncated or corrupt?": any other error (memory, a bug) propagates
    as itself, with its traceback, even with `ingest.on_error: skip`, and nothing is written."""
    from weightvae.ingest import loaders

    def fail(*args, **kwargs):
        raise error

    zoo = _mini_zoo(tiny_zoo, tmp_path / "zoo", n=1)
    if suffix == ".safetensors":
        sd = torch.load(next(zoo.glob("*.pt")), weights_only=True)["state_dict"]
        save_file(sd, zoo / "a.safetensors")
        for f in zoo.glob("*.pt"):
            f.unlink()
    monkeypatch.setattr(loaders.torch, "load", fail)
    monkeypatch.setattr(loaders.tensorfile, "load", fail)
    for on_error in ("fail", "skip"):
        with pytest.raises(type(error), match=str(error)):
            _ingest(zoo, tmp_path / "out", on_error=on_error)
    assert not (tmp_path / "out").exists()


def test_empty_or_missing_folder_and_all_bad_files_give_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.md").write_text("not a checkpoint")
    with pytest.raises(IngestError, match=r"empty: no \.pt, \.pth or \.safetensors files found"):
        _ingest(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(IngestError, match="missing: zoo folder not found"):
        _ingest(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty" / "a.pt").write_bytes(b"")
    with pytest.raises(IngestError, match=r"none of the 1 checkpoint files could be used \(first: a\.pt: is an empty"):
        _ingest(tmp_path / "empty", tmp_path / "out", on_error="skip")
    assert not (tmp_path / "out").exists()


def test_a_model_longer_than_max_len_is_refused_never_truncated(tiny_zoo, tmp_path):
    with pytest.raises(IngestError, match=r"digits-mlp-0000_e001\.pt: holds 2410 weights, more than "
                                          r"ingest\.max_len = 2000 .*not truncated"):
        _ingest(tiny_zoo[0], tmp_path / "out", max_len=2000)
    m = _ingest(tiny_zoo[0], tmp_path / "out", max_len=2000, on_error="skip")
    assert m["models"] == 6 and m["max_len"] == 2000
    assert sorted(r["path"] for r in m["rejected"]) == sorted(p.name for p in tiny_zoo[0].glob("*mlp*"))
    assert [p.name for p in (tmp_path / "out" / "train").iterdir()] == ["8368dcb6efaeaf34.npy"]  # cnns alone
    m = _ingest(tiny_zoo[0], tmp_path / "out", max_len=3000, split=(1.0, 0.0, 0.0))
    assert m["max_len"] == 3000 and m["splits"] == {"train": 10, "val": 0, "test": 0}
    assert not (tmp_path / "out" / "val").exists()  # a split without models has no arrays
    assert shards_module.open_shard(tmp_path / "out", "val", "8368dcb6efaeaf34").shape == (0, 0)


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.head = nn.Linear(2, 2).half()


def test_plain_state_dicts_and_safetensors_are_accepted(tmp_path):
    zoo = tmp_path / "zoo"
    (zoo / "sub").mkdir(parents=True)
    torch.manual_seed(1)
    sds = {}
    for name in ("sub/net-a.pt", "net-b.pth"):
        m = BNNet()
        m.bn.num_batches_tracked += 7
        sds[name] = m.state_dict()
        torch.save(sds[name], zoo / name)
    sds["net-c.safetensors"] = {k: v.contiguous() for k, v in BNNet().state_dict().items()}
    save_file(sds["net-c.safetensors"], zoo / "net-c.safetensors")
    m = _ingest(zoo, tmp_path / "out", split=(1.0, 0.0, 0.0))
    # safetensors stores tensors sorted, not in module order: the same net there is a second layout
    assert m["models"] == 3 and m["layouts"] == 2 and m["tasks"] == {"unknown": {"train": 3, "val": 0, "test": 0}}
    rows = {r["source_path"]: r for r in _table(tmp_path / "out")}
    # run ids (ingest.run_id_from: auto): the sub-folder for a file in one, else the file's stem
    assert {r["id"]: r["run_id"] for r in rows.values()} == {"sub/net-a": "sub", "net-b": "net-b", "net-c": "net-c"}
    for name, sd in sds.items():
        r = rows[name]
        assert r["task"] == "unknown" and r["architecture"] == "unknown" and r["epoch"] is None
        assert r["test_acc"] is None and json.loads(r["arch_kwargs"]) == {}
        layout = Layout.from_dict(json.loads((tmp_path / "out" / "layouts.json").read_text())[r["layout_id"]])
        stored = shards_module.open_shard(tmp_path / "out", "train", r["layout_id"])[r["row"]]
        back = layout.unflatten(torch.from_numpy(stored.copy()), json.loads(r["buffers"]))
        assert all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in sd.items())
    # format: weightvae insists on the zoo schema
    with pytest.raises(IngestError, match="is not in the zoo schema"):
        _ingest(zoo, tmp_path / "out", format="weightvae")


def _per_run_folders(zoo: Path, runs: int = 12, ckpts: int = 3) -> None:
    """Bare state_dicts `run-<r>/step-<c>.pt`: the checkpoints of a run share a folder, not a name."""
    for r in range(runs):
        (zoo / f"run-{r:02d}").mkdir(parents=True)
        for c in range(ckpts):
            torch.save(nn.Linear(3, 2).state_dict(), zoo / f"run-{r:02d}" / f"step-{c}.pt")


@pytest.mark.parametrize("rule, runs", [("auto", 12), ("parent", 12), (r"(run-\d+)/", 12), ("stem", 3)])
def test_bare_state_dicts_are_grouped_into_runs_by_run_id_from(tmp_path, rule, runs):
    _per_run_folders(tmp_path / "zoo")
    m = _ingest(tmp_path / "zoo", tmp_path / "out", split=(0.5, 0.25, 0.25), run_id_from=rule)
    rows = _table(tmp_path / "out")
    assert m["models"] == 36 and m["runs"] == runs == len({r["run_id"] for r in rows})
    for r in rows:
        folder, stem = r["source_path"].split("/")[0], Path(r["source_path"]).stem
        assert r["run_id"] == (stem if rule == "stem" else folder)
        assert r["split"] == split_of(r["run_id"], "weightvae", (0.5, 0.25, 0.25))  # the run decides the split
    if rule != "stem":  # every checkpoint of a run in one split, and more than one split used
        by_run = {}
        for r in rows:
            by_run.setdefault(r["run_id"], set()).add(r["split"])
        assert all(len(v) == 1 for v in by_run.values()) and len({r["split"] for r in rows}) > 1


def test_run_id_from_that_does_not_apply_names_the_file(tmp_path):
    _per_run_folders(tmp_path / "zoo", runs=2)
    with pytest.raises(IngestError, match=r"run-00/step-0\.pt: does not match ingest\.run_id_from 'trial_\(\\d\+\)'"):
        _ingest(tmp_path / "zoo", tmp_path / "out", run_id_from=r"trial_(\d+)")
    torch.save(nn.Linear(3, 2).state_dict(), tmp_path / "zoo" / "loose.pt")
    with pytest.raises(IngestError, match="loose.pt: sits at the top of the zoo folder, so it has no parent folder"):
        _ingest(tmp_path / "zoo", tmp_path / "out", run_id_from="parent")
    with pytest.raises(ParamsError, match=r"ingest\.run_id_from: 'run\(' is not allowed; choose one of"):
        build(IngestParams, {"run_id_from": "run("}, "ingest")


def test_a_second_copy_of_a_checkpoint_is_refused(tiny_zoo, tmp_path):
    zoo = _mini_zoo(tiny_zoo, tmp_path / "zoo")
    first = sorted(zoo.iterdir())[0]
    shutil.copy(first, zoo / "copy.pt")
    with pytest.raises(IngestError, match=rf"zoo/{first.name}: is a second copy of checkpoint "
                                          r"'digits-cnn-0000/e001' \(first in copy\.pt\)"):
        _ingest(zoo, tmp_path / "out")


def test_params_are_checked():
    for bad, match in [({"split": [0.8, 0.1, 0.2]}, "ingest.split"), ({"max_len": 0}, "ingest.max_len"),
                       ({"workers": 0}, "ingest.workers"), ({"on_error": "ignore"}, "ingest.on_error"),
                       ({"split": [1.2, -0.1, -0.1]}, "ingest.split"), ({"zoo": "x"}, "ingest.zoo: unknown key")]:
        with pytest.raises(ParamsError, match=match):
            build(IngestParams, bad, "ingest")


@pytest.mark.slow
def test_a_split_no_run_landed_in_is_said_in_one_line(tiny_zoo, tmp_path, capsys):
    """A small zoo can leave a split with a share empty (the hash split): allowed, and said; a share of 0 is not."""
    from weightvae import ingest as stage

    for split, said in (([0.5, 0.01, 0.49], True), ([0.6, 0.0, 0.4], False)):
        (tmp_path / "params.yaml").write_text(f"ingest:\n  zoo_dir: {tiny_zoo[0]}\n  workers: 1\n  split: {split}\n")
        stage.run(argparse.Namespace(params=str(tmp_path / "params.yaml"), zoo_dir=None, out=str(tmp_path / "out"),
                                     metrics=str(tmp_path / "ingest.json")))
        out = capsys.readouterr().out
        assert json.loads((tmp_path / "ingest.json").read_text())["splits"]["val"] == 0
        line = (f"ingest: no run landed in the val split of 5 runs (ingest.split {split} sends each run by a salted "
                "hash of its run id): add runs, raise that share, or set another ingest.split_salt")
        assert (line in out) == said, out


def test_stage_runs_end_to_end_and_fails_with_one_line(tiny_zoo, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(f"ingest:\n  zoo_dir: {tmp_path / 'nowhere'}\n  workers: 2\n")
    cmd = [sys.executable, "stages/ingest.py", "--params", str(params), "--out", str(tmp_path / "shards"),
           "--metrics", str(tmp_path / "metrics" / "ingest.json")]
    proc = subprocess.run(cmd + ["--zoo-dir", str(tiny_zoo[0])], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "ingest: 10 models (5 runs, 2 layouts, max_len 2410)" in proc.stdout
    metrics = json.loads((tmp_path / "metrics" / "ingest.json").read_text())
    assert metrics["models"] == 10 and metrics["models_per_s"] > 0 and metrics["tasks"]["digits"]["train"] > 0
    assert (tmp_path / "shards" / "train").is_dir()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)  # zoo_dir from params: missing
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"weightvae ingest: {tmp_path / 'nowhere'}: zoo folder not found. "
                                                "Build the zoo (`dvc repro zoo`) or point `ingest.zoo_dir` at a "
                                                "folder of .pt/.pth/.safetensors checkpoints."]
