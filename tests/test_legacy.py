"""Zoo files of the seed's code (a list of (model_properties, nn.Module) pairs, pickled whole) through
`import-legacy` -> ingest -> a model round trip; the seed's `layer_info` and `reconstruct_weights`;
`--trust`, the separate loading process, and hostile or broken inputs (one line each, nothing written)."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from weightvae.archs import build_model
from weightvae.cli import main as cli
from weightvae.data import ZooDataModule, ZooDataset
from weightvae.ingest import IngestParams, ingest
from weightvae.layout import Layout, reconstruct_weights
from weightvae.legacy import LegacyError, import_legacy

ROOT = Path(__file__).resolve().parents[1]
CODE = Path(__file__).resolve().parent / "legacy_code"  # the user's own code, as `--path` points at it
quiet = {"log": lambda *_: None}


@pytest.fixture
def seed(monkeypatch):
    """The user's model classes, importable here (to build the files) as they are in the user's environment."""
    monkeypatch.syspath_prepend(str(CODE))
    return importlib.import_module("seed_models")


def _net(cls, seed_: int):
    torch.manual_seed(seed_)
    return cls()


def _seed_zoo(seed, root: Path) -> dict[str, list]:
    """Two files the way the seed's code writes them: `torch.save([(model_properties, module), ...], path)`.
    part-a names its runs and epochs; part-b's properties hold no run id (each pair is then its own run)."""
    root.mkdir(parents=True)
    a = [({"run_id": f"r{i // 2}", "epoch": 1 + i % 2, "test_acc": 0.5 + i / 10, "seed": 100 + i,
           "hyperparameters": {"lr": 0.01, "layers": (4, 16)}, "note": torch.tensor([1.0, 2.0])},
          _net(seed.SeedCNN, i)) for i in range(4)]
    b = [({"dataset": "digits", "train_loss": torch.tensor(0.25)}, _net(seed.SeedCNN, 10 + i)) for i in range(2)]
    torch.save(a, root / "part-a.pt")
    (root / "sub").mkdir()
    torch.save(b, root / "sub" / "part-b.pt")
    return {"part-a.pt": a, "sub/part-b.pt": b}


def test_legacy_zoo_imports_ingests_and_round_trips_through_layer_info(seed, tmp_path):
    pairs = _seed_zoo(seed, tmp_path / "legacy")
    s = import_legacy(tmp_path / "legacy", tmp_path / "zoo", trust=True, paths=(str(CODE),))
    assert s == {"files": 2, "models": 6, "runs": 4, "run_ids_from": "mixed"}
    # run ids: the properties' own, else <source file>-<index>; one file per model, zoo file schema
    names = sorted(p.relative_to(tmp_path / "zoo").as_posix() for p in (tmp_path / "zoo").rglob("*.pt"))
    assert names == ["r0_e001.pt", "r0_e002.pt", "r1_e001.pt", "r1_e002.pt", "sub/part-b-0000.pt",
                     "sub/part-b-0001.pt"]
    rec = torch.load(tmp_path / "zoo" / "r1_e002.pt", weights_only=True)  # no pickle code needed any more
    props = rec["model_properties"]
    assert (props["run_id"], props["epoch"], props["seed"], props["task"], props["architecture"]) == (
        "r1", 2, 103, "unknown", {"name": "unknown", "kwargs": {}})
    assert props["metrics"] == {"train_acc": None, "test_acc": 0.8, "test_loss": None}
    assert props["hyperparameters"] == {"lr": 0.01, "layers": [4, 16]}
    assert props["legacy"] == {"file": "part-a.pt", "index": 3, "class": "seed_models.SeedCNN",
                               "properties": {"run_id": "r1", "epoch": 2, "test_acc": 0.8, "seed": 103,
                                              "hyperparameters": {"lr": 0.01, "layers": [4, 16]},
                                              "note": [1.0, 2.0]}}
    assert list(rec["state_dict"]) == list(pairs["part-a.pt"][3][1].state_dict())

    m = ingest(IngestParams(zoo_dir=str(tmp_path / "zoo"), workers=1, split=(1.0, 0.0, 0.0)), tmp_path / "shards",
               **quiet)
    assert (m["models"], m["runs"], m["layouts"]) == (6, 4, 1)
    ds = ZooDataset(tmp_path / "shards", "train", normalize=False)
    by_id = {r["id"]: i for i, r in enumerate(ds.rows)}
    assert sorted(by_id) == ["r0/e001", "r0/e002", "r1/e001", "r1/e002", "sub/part-b-0000", "sub/part-b-0001"]
    x = torch.randn(5, 1, 8, 8)
    for (file, index), mid in {("part-a.pt", 0): "r0/e001", ("part-a.pt", 3): "r1/e002",
                               ("sub/part-b.pt", 1): "sub/part-b-0001"}.items():
        original = pairs[file][index][1]
        item = ds[by_id[mid]]
        # the seed's code, ported by changing its import: layer_info from the sample, reconstruct_weights
        info = item["model_properties"]["layer_info"]
        assert info == [(k, tuple(v.shape)) for k, v in original.state_dict().items()]
        sd = reconstruct_weights(item["weight"], info)
        net = seed.SeedCNN()
        net.load_state_dict(sd, strict=True)
        assert torch.equal(net(x), original(x))  # the same network, bit for bit
    batch = next(iter(ZooDataModule.loader(ds, batch_size=6)))
    assert all(p["layer_info"] == info for p in batch["model_properties"])


def test_reconstruct_weights_is_the_seeds_function(tmp_path):
    info = [("a.weight", (2, 3)), ("a.bias", (2,)), ("b", ())]
    flat = torch.arange(9, dtype=torch.float32)
    sd = reconstruct_weights(torch.cat([flat, torch.zeros(3)]), info)  # padding past the end is ignored
    assert list(sd) == ["a.weight", "a.bias", "b"]
    assert torch.equal(sd["a.weight"], flat[:6].view(2, 3)) and torch.equal(sd["a.bias"], flat[6:8])
    assert sd["b"].shape == () and float(sd["b"]) == 8.0
    with pytest.raises(ValueError, match="flat has 8 entries, layer_info needs 9"):
        reconstruct_weights(flat[:8], info)
    with pytest.raises(ValueError, match="non-zero entries past the layer_info's 9"):
        reconstruct_weights(torch.ones(10), info)
    with pytest.raises(ValueError, match="pass one vector"):
        reconstruct_weights(torch.ones(2, 9), info)
    layout = Layout.from_state_dict(build_model("cnn").state_dict())
    sd = build_model("cnn").state_dict()
    assert all(torch.equal(reconstruct_weights(layout.flatten(sd), [(e.name, e.shape) for e in layout.learned])[k], v)
               for k, v in sd.items())


@pytest.mark.slow
def test_builtin_architecture_named_in_the_properties_is_checked_by_ingest(tmp_path):
    """Pairs whose properties name a weightvae architecture and task become evaluable models; the
    converted files go through ingest's own checks (here: a cnn that is not the built-in cnn)."""
    torch.manual_seed(0)
    good = [({"run_id": "c", "epoch": 3, "task": "digits", "architecture": "cnn"}, build_model("cnn"))]
    torch.save(good, tmp_path / "good.pt")
    import_legacy(tmp_path / "good.pt", tmp_path / "zoo", trust=True)
    rec = torch.load(tmp_path / "zoo" / "c_e003.pt", weights_only=True)
    assert rec["model_properties"]["architecture"] == {"name": "cnn", "kwargs": {}}
    net = build_model("cnn")
    net.load_state_dict(rec["state_dict"], strict=True)
    bad = [({"run_id": "m", "architecture": "cnn"}, build_model("mlp"))]
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(LegacyError, match=r"^converted m\.pt: does not fit its architecture 'cnn'"):
        import_legacy(tmp_path / "bad.pt", tmp_path / "zoo2", trust=True)
    assert not (tmp_path / "zoo2").exists()


@pytest.mark.slow
def test_without_trust_one_line_says_why_and_nothing_is_loaded(seed, tmp_path, monkeypatch):
    monkeypatch.setenv("SEED_MODELS_MARKER", str(tmp_path / "marker"))
    torch.save([({}, seed.Tattletale())], tmp_path / "zoo.pt")
    proc = subprocess.run([sys.executable, "-m", "weightvae.cli", "import-legacy", str(tmp_path / "zoo.pt"),
                           str(tmp_path / "out"), "--path", str(CODE)], check=False, capture_output=True, text=True,
                          cwd=ROOT)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"weightvae import-legacy: {tmp_path / 'zoo.pt'}: not loaded: these files hold "
                               "pickled nn.Modules")
    assert "runs code from the files. Pass --trust if you trust where they come from" in lines[0]
    assert not (tmp_path / "marker").exists() and not (tmp_path / "out").exists()


def test_the_pickles_run_in_a_separate_process(seed, tmp_path, monkeypatch):
    monkeypatch.setenv("SEED_MODELS_MARKER", str(tmp_path / "marker"))
    monkeypatch.delenv("SEED_MODELS_LOADED", raising=False)
    torch.save([({"run_id": "t"}, seed.Tattletale())], tmp_path / "zoo.pt")
    import_legacy(tmp_path / "zoo.pt", tmp_path / "out", trust=True, paths=(str(CODE),))
    loader = int((tmp_path / "marker").read_text())
    assert loader != os.getpid() and "SEED_MODELS_LOADED" not in os.environ  # the code ran, elsewhere
    assert (tmp_path / "out" / "t.pt").exists()


def test_an_unexpected_error_is_not_called_corrupt_and_debug_shows_its_traceback(seed, tmp_path, monkeypatch, capsys):
    """A MemoryError while unpickling (here raised by the user's class) is one line naming the file, not "corrupt?";
    `WEIGHTVAE_DEBUG=1` adds the loading process's traceback, down to the user's code, before it."""
    monkeypatch.setenv("SEED_MODELS_EXHAUST", "1")
    torch.save([({"run_id": "t"}, seed.Tattletale())], tmp_path / "zoo.pt")
    line = ("zoo.pt: loading it failed with MemoryError: out of memory while unpickling, which is no sign of a "
            "corrupt file; WEIGHTVAE_DEBUG=1 shows the traceback")
    args = ["import-legacy", str(tmp_path / "zoo.pt"), str(tmp_path / "out"), "--trust", "--path", str(CODE)]
    for debug in ("", "1"):
        monkeypatch.setenv("WEIGHTVAE_DEBUG", debug)
        with pytest.raises(SystemExit) as exit_:
            cli(args)
        err = capsys.readouterr().err
        assert exit_.value.code == 1 and err.endswith(f"weightvae import-legacy: {line}\n")
        if not debug:
            assert err.count("\n") == 1
        else:
            assert "Traceback (most recent call last)" in err and "seed_models.py" in err and "in __setstate__" in err
            assert "MemoryError: out of memory while unpickling\n\nThe above exception was the direct cause" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_moved_code_is_found_through_an_alias(seed, tmp_path, monkeypatch):
    """Files pickled when the class lived in module `old_project.models` load once that is aliased."""
    monkeypatch.setattr(seed.SeedCNN, "__module__", "old_project_models")
    monkeypatch.setitem(sys.modules, "old_project_models", seed)
    torch.save([({"run_id": "moved"}, seed.SeedCNN())], tmp_path / "zoo.pt")
    with pytest.raises(LegacyError, match=r"^zoo\.pt: a pickled module's class cannot be imported \("
                                          r"ModuleNotFoundError: No module named 'old_project_models'\); make its "
                                          r"code importable \(--path DIR"):
        import_legacy(tmp_path / "zoo.pt", tmp_path / "out", trust=True, paths=(str(CODE),))
    import_legacy(tmp_path / "zoo.pt", tmp_path / "out", trust=True, paths=(str(CODE),),
                  aliases=("old_project_models=seed_models",))
    assert torch.load(tmp_path / "out" / "moved.pt", weights_only=True)["model_properties"]["legacy"]["class"] == \
        "seed_models.SeedCNN"


def _nan_module(seed):
    net = seed.SeedCNN()
    with torch.no_grad():
        net.head[1].weight[0, :3] = float("nan")
    return net


HOSTILE = {
    "not a list": (lambda s: {"state_dict": s.SeedCNN().state_dict()},
                   ("bad.pt: holds a dict, expected a list of (model_properties, nn.Module) pairs; a state_dict or a "
                   "file in the zoo file schema needs no import: ingest reads it")),
    "empty list": (lambda s: [], "bad.pt: holds an empty list, no (model_properties, nn.Module) pairs"),
    "a triple": (lambda s: [({}, s.SeedCNN()), ({}, s.SeedCNN(), 3)],
                 "bad.pt: item 1 is a tuple of 3 items, expected a (model_properties dict, nn.Module) pair"),
    "not a pair": (lambda s: [s.SeedCNN()], ("bad.pt: item 0 is a SeedCNN, expected a (model_properties dict, "
                                            "nn.Module) pair")),
    "swapped": (lambda s: [(s.SeedCNN(), {})], ("bad.pt: item 0 is a pair of (SeedCNN, dict), expected "
                                               "(model_properties dict, nn.Module)")),
    "a state_dict, not a module": (lambda s: [({}, s.SeedCNN().state_dict())],
                                   ("bad.pt: item 0 is a pair of (dict, OrderedDict), expected (model_properties "
                                   "dict, nn.Module)")),
    "NaN weights": (lambda s: [({"run_id": "ok"}, s.SeedCNN()), ({"run_id": "nan"}, _nan_module(s))],
                    "bad.pt: item 1: the module's state_dict has non-finite values in 'head.1.weight' (3 NaN, 0 Inf)"),
    "duplicate run": (lambda s: [({"run_id": "r", "epoch": 1}, s.SeedCNN()), ({"run_id": "r", "epoch": 1},
                                                                              s.SeedCNN())],
                      ("bad.pt: item 1: run 'r' epoch 1 again (first: bad.pt item 0); run ids and epochs must be "
                      "unique")),
    "bad architecture": (lambda s: [({"architecture": 3}, s.SeedCNN())],
                         ("bad.pt: item 0: model_properties['architecture'] is 3, expected a name or "
                         "{'name': str, 'kwargs': dict}")),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_and_broken_inputs_get_one_line_and_write_nothing(seed, tmp_path, case):
    build, message = HOSTILE[case]
    torch.save(build(seed), tmp_path / "bad.pt")
    with pytest.raises(LegacyError) as err:
        import_legacy(tmp_path / "bad.pt", tmp_path / "out", trust=True, paths=(str(CODE),))
    assert str(err.value) == message
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt"]


@pytest.mark.slow
def test_the_command_line_reports_a_broken_file_in_one_line(seed, tmp_path, capsys):
    (tmp_path / "src").mkdir()
    torch.save([({}, seed.SeedCNN())], tmp_path / "src" / "ok.pt")
    (tmp_path / "src" / "zz-truncated.pt").write_bytes((tmp_path / "src" / "ok.pt").read_bytes()[:100])
    (tmp_path / "out").mkdir()  # an empty DST is fine
    proc = subprocess.run([sys.executable, "-m", "weightvae.cli", "import-legacy", str(tmp_path / "src"),
                           str(tmp_path / "out"), "--trust", "--path", str(CODE)], check=False, capture_output=True,
                          text=True, cwd=ROOT)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("weightvae import-legacy: zz-truncated.pt: cannot be loaded (truncated or corrupt?): ")
    assert list((tmp_path / "out").iterdir()) == []  # ok.pt was converted, then dropped with the rest
    # a non-empty DST is refused before anything is loaded (in-process from here: the same `main`)
    (tmp_path / "out" / "mine.txt").write_text("keep")
    (tmp_path / "src" / "zz-truncated.pt").unlink()
    args = ["import-legacy", str(tmp_path / "src"), "--trust", "--path", str(CODE)]
    with pytest.raises(SystemExit) as exit_:
        cli([*args[:2], str(tmp_path / "out"), *args[2:]])
    assert exit_.value.code == 1 and capsys.readouterr().err.strip() == (
        f"weightvae import-legacy: {tmp_path / 'out'}: exists and is not an empty folder; choose a new DST or "
        "remove it")
    assert (tmp_path / "out" / "mine.txt").read_text() == "keep"
    assert cli([*args[:2], str(tmp_path / "new"), *args[2:]]) == 0
    assert capsys.readouterr().out.strip() == (f"import-legacy: 1 models (1 runs; run ids from file+index) from 1 "
                                               f"files -> {tmp_path / 'new'}; next: point ingest.zoo_dir at it")
    rows = pq.read_table(_ingested(tmp_path / "new", tmp_path / "shards") / "models.parquet").to_pylist()
    assert [(r["id"], r["run_id"]) for r in rows] == [("ok-0000", "ok-0000")]
    assert json.loads(rows[0]["arch_kwargs"]) == {}


def _ingested(zoo: Path, out: Path) -> Path:
    ingest(IngestParams(zoo_dir=str(zoo), workers=1, split=(1.0, 0.0, 0.0)), out, **quiet)
    return out
