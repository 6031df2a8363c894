"""User architectures and tasks registered by `module:callable` in params.yaml (`registry.architectures`,
`registry.tasks`, read by every stage), and what evaluate says when a model's architecture or task is unknown."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from weightvae import evaluate as E
from weightvae.archs import ARCHITECTURES, build_model
from weightvae.ingest import IngestParams, ingest
from weightvae.params import ParamsError, build
from weightvae.records import file_name
from weightvae.registry import RegistryParams, checked_task_data, register
from weightvae.tasks import TASKS, TaskData, get_task

ROOT = Path(__file__).resolve().parents[1]

USER_MODULE = '''
import dataclasses

from torch import nn

from weightvae.tasks import get_task


class Tiny(nn.Module):
    def __init__(self, hidden=8):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 10))

    def forward(self, x):
        return self.body(x)


def build_tiny(hidden=8):
    return Tiny(hidden)


def load_digits_again():
    return dataclasses.replace(get_task("digits"), name="digits_again")


def load_digits_few():
    d = get_task("digits")
    return dataclasses.replace(d, name="digits_few", x_train=d.x_train[:40], y_train=d.y_train[:40])


class Factory:
    @staticmethod
    def build(hidden=8):
        return Tiny(hidden)


NOT_CALLABLE = 3


def build_a_string(**kwargs):
    return "not a module"
'''


@pytest.fixture(autouse=True)
def user_modules(tmp_path, monkeypatch):
    """`wvae_user_nets` (good) and `wvae_user_broken` (fails on import) on sys.path; registries restored after."""
    (tmp_path / "wvae_user_nets.py").write_text(USER_MODULE)
    (tmp_path / "wvae_user_broken.py").write_text("import wvae_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    archs, tasks = dict(ARCHITECTURES), dict(TASKS)
    yield tmp_path
    ARCHITECTURES.clear()
    ARCHITECTURES.update(archs)
    TASKS.clear()
    TASKS.update(tasks)
    get_task.cache_clear()
    for name in [m for m in sys.modules if m.startswith("wvae_user")]:
        del sys.modules[name]


GOOD = {"architectures": {"tiny": "wvae_user_nets:build_tiny"},
        "tasks": {"digits_again": "wvae_user_nets:load_digits_again"}}


def _zoo(root):
    """12 runs of the user's `tiny` net on task `digits_again` (zoo schema), and 6 bare state_dicts (unknown)."""
    root.mkdir()
    for i in range(12):
        torch.manual_seed(i)
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8), torch.nn.Tanh(), torch.nn.Linear(8, 10))
        sd = {f"body.{k}": v for k, v in net.state_dict().items()}
        torch.save({"state_dict": sd, "model_properties": {
            "format_version": 1, "run_id": f"tiny-{i:02d}", "task": "digits_again", "epoch": 1, "seed": i,
            "architecture": {"name": "tiny", "kwargs": {"hidden": 8}}, "hyperparameters": {}, "metrics": {}}},
            root / f"tiny-{i:02d}.pt")
    for i in range(6):
        torch.save(torch.nn.Linear(4, 3).state_dict(), root / f"bare-{i}.pt")


def _shards_and_fake_reconstructions(tmp_path):
    """Ingest, then 'reconstruct' each test model as itself: evaluate reads reconstructions by model id."""
    _zoo(tmp_path / "zoo")
    ingest(IngestParams(zoo_dir=str(tmp_path / "zoo"), split=(0.5, 0.0, 0.5), workers=1), tmp_path / "shards",
           log=lambda *_: None)
    rows = pq.read_table(tmp_path / "shards" / "models.parquet").to_pylist()
    (tmp_path / "recon" / "test").mkdir(parents=True)
    for r in rows:
        if r["split"] == "test":
            src = tmp_path / "zoo" / r["source_path"]
            rec = torch.load(src, weights_only=True)
            torch.save({"state_dict": rec.get("state_dict", rec)}, tmp_path / "recon" / "test" / file_name(r["id"]))
    groups = {(r["architecture"], r["split"]) for r in rows}
    assert {("tiny", "train"), ("tiny", "test"), ("unknown", "train"), ("unknown", "test")} <= groups
    return rows


def _args(tmp_path, registry_section):
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"registry": registry_section}))  # JSON is YAML
    return argparse.Namespace(params=str(params), shards=str(tmp_path / "shards"), recon=str(tmp_path / "recon"),
                              latents=None, metrics=str(tmp_path / "out" / "eval.json"),
                              table=str(tmp_path / "out" / "eval.csv"), plots=str(tmp_path / "out" / "plots"),
                              live_dir=None)


def test_unknown_architectures_get_weight_space_metrics_and_one_plain_message(tmp_path, capsys):
    _shards_and_fake_reconstructions(tmp_path)
    E.run(_args(tmp_path, {}))
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if "functional metrics" in ln]
    assert len(lines) == 1, out
    assert "skipped for digits_again/tiny (unknown task 'digits_again' and architecture 'tiny'); " \
           "unknown/unknown (unknown task 'unknown' and architecture 'unknown')" in lines[0]
    assert "registry.architectures" in lines[0] and "registry.tasks" in lines[0]
    h = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert len(h["skipped"]) == 2 and all("functional metrics skipped" in s for s in h["skipped"])
    vae = h["groups"]["digits_again/tiny"]["methods"]["vae"]
    assert vae["r2"] == 1.0 and vae["mse"] == 0.0 and "acc" not in vae  # weight space only


def test_registered_architecture_and_task_give_functional_metrics(tmp_path, capsys):
    rows = _shards_and_fake_reconstructions(tmp_path)
    E.run(_args(tmp_path, GOOD))
    out = capsys.readouterr().out
    assert "skipped for unknown/unknown (unknown task 'unknown' and architecture 'unknown')" in out
    assert "digits_again/tiny" not in out.split("functional metrics")[1]
    h = json.loads((tmp_path / "out" / "eval.json").read_text())
    g = h["groups"]["digits_again/tiny"]
    assert g["methods"]["vae"]["retention"] == 1.0 and g["methods"]["vae"]["agreement"] == 1.0  # recon == original
    # the original accuracy is what the user's own network and data give
    data = get_task("digits_again")
    assert data.name == "digits_again" and torch.equal(data.x_test, get_task("digits").x_test)
    accs = []
    for r in rows:
        if r["split"] == "test" and r["architecture"] == "tiny":
            net = build_model("tiny", {"hidden": 8})
            net.load_state_dict(torch.load(tmp_path / "zoo" / r["source_path"], weights_only=True)["state_dict"])
            accs.append((net(data.x_test).argmax(1) == data.y_test).double().mean().item())
    assert g["original_acc"] == pytest.approx(sum(accs) / len(accs), abs=1e-12)


def test_callables_may_be_dotted_and_registration_is_idempotent():
    register({"tiny": "wvae_user_nets:Factory.build"}, {})
    register({"tiny": "wvae_user_nets:Factory.build"}, GOOD["tasks"])
    assert type(build_model("tiny", {"hidden": 3})).__name__ == "Tiny"
    assert get_task("digits_again").name == "digits_again"


BAD_SPECS = [
    ({"architectures": {"mynet": "wvae_user_nets"}}, "registry.architectures.mynet: 'wvae_user_nets' is not allowed; "
                                                     "expected 'module:callable'"),
    ({"tasks": {"t": "wvae_user_nets:"}},
     "registry.tasks.t: 'wvae_user_nets:' is not allowed; expected 'module:callable'"),
    ({"architectures": {"mynet": 3}}, "registry.architectures.mynet: 3 is not allowed; expected str"),
    ({"architectures": {"mynet": "wvae_no_such_pkg.nets:build"}},
     "registry.architectures.mynet: 'wvae_no_such_pkg.nets:build' is not allowed; module 'wvae_no_such_pkg.nets' "
     "not found"),
    ({"architectures": {"mynet": "wvae_user_nets:build_huge"}},
     "registry.architectures.mynet: 'wvae_user_nets:build_huge' is not allowed; module 'wvae_user_nets' has no "
     "attribute 'build_huge'"),
    ({"tasks": {"t": "wvae_user_nets:NOT_CALLABLE"}},
     "registry.tasks.t: 'wvae_user_nets:NOT_CALLABLE' is not allowed; 'NOT_CALLABLE' is a int, not callable"),
    ({"tasks": {"t": "wvae_user_broken:load"}},
     "registry.tasks.t: 'wvae_user_broken:load' is not allowed; importing 'wvae_user_broken' failed: "
     "ModuleNotFoundError: No module named 'wvae_no_such_dependency'"),
    ({"architectures": {"cnn": "wvae_user_nets:build_tiny"}},
     "registry.architectures.cnn: 'wvae_user_nets:build_tiny' is not allowed; 'cnn' is a built-in architecture"),
    ({"tasks": {"digits": "wvae_user_nets:load_digits_again"}},
     "registry.tasks.digits: 'wvae_user_nets:load_digits_again' is not allowed; 'digits' is a built-in task"),
]


@pytest.mark.parametrize("section, message", BAD_SPECS, ids=["no-colon", "no-callable", "not-a-string", "no-module",
                                                             "no-attribute", "not-callable", "import-fails",
                                                             "builtin-architecture", "builtin-task"])
def test_bad_registrations_name_the_key_and_the_value(section, message):
    with pytest.raises(ParamsError) as e:
        p = build(RegistryParams, section, "registry")
        register(p.architectures, p.tasks)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_builder_returning_no_module_or_a_loader_no_task_data_is_named():
    register({"mynet": "wvae_user_nets:build_a_string"}, {"t": "wvae_user_nets:build_a_string"})
    with pytest.raises(ParamsError, match=r"registry.architectures.mynet: 'wvae_user_nets:build_a_string' is not "
                                          r"allowed; it returned a str, expected a torch.nn.Module"):
        build_model("mynet", {})
    with pytest.raises(ParamsError, match=r"registry.tasks.t: .* it returned a str, expected weightvae.tasks.TaskData"):
        get_task("t")


def test_a_loaders_arrays_and_dtypes_are_converted_and_bad_labels_named():
    """Numpy arrays, float64 inputs and int32 labels `[N, 1]` are what they look like; labels that cannot be
    classes, or a count mismatch, stop with one line naming the registration and the field."""
    x, y = np.arange(12, dtype=np.float64).reshape(4, 3), np.array([[0], [2], [1], [2]], dtype=np.int32)
    d = checked_task_data(TaskData("t", x, y, torch.zeros(2, 3, dtype=torch.float64), torch.tensor([1, 0]), 3), "k")
    assert d.x_train.dtype == d.x_test.dtype == torch.float32 and d.y_train.dtype == d.y_test.dtype == torch.int64
    assert torch.equal(d.x_train, torch.from_numpy(x).float()) and d.y_train.tolist() == [0, 2, 1, 2]
    good = (torch.zeros(4, 3), torch.tensor([0, 1, 2, 0]))
    for bad, message in [((torch.zeros(4, 3), torch.tensor([0, 1, 3, 0])), "y_train has labels in [0, 3], outside "
                                                                            "[0, num_classes = 3): number the classes"),
                         ((torch.zeros(4, 3), torch.tensor([1, 2, 3, 4])), "y_train has labels in [1, 4]"),
                         ((torch.zeros(4, 3), torch.tensor([0.0, 1.0, 2.0, 0.0])), "y_train is torch.float32 of "
                                                                                   "shape (4,): give integer class"),
                         ((torch.zeros(4, 3), torch.tensor([0, 1, 2])), "x_train holds 4 inputs and y_train 3 labels"),
                         ((torch.zeros(4, 3, dtype=torch.int64), good[1]), "x_train is torch.int64"),
                         (([[0.0]] * 4, good[1]), "x_train is a list: give a torch.Tensor")]:
        with pytest.raises(ParamsError) as e:
            checked_task_data(TaskData("t", *bad, *good, 3), "registry.tasks.t: 'm:f'")
        assert str(e.value).startswith("registry.tasks.t: 'm:f' returned a TaskData whose ") and message in str(e.value)
    with pytest.raises(ParamsError, match="num_classes is 1: give the number of classes"):
        checked_task_data(TaskData("t", *good, *good, 1), "k")


def _stage(name: str, params_text: str, tmp_path) -> subprocess.CompletedProcess:
    params = tmp_path / "params.yaml"
    params.write_text(params_text)
    out = tmp_path / "out"
    args = {"train": ["--shards", str(tmp_path), "--out", str(out / "vae.ckpt"), "--ckpt-dir", str(out / "ckpt"),
                      "--live-dir", str(out / "live")],
            "encode": ["--shards", str(tmp_path), "--model", str(out / "vae.ckpt"), "--out", str(out / "l.parquet"),
                       "--metrics", str(out / "encode.json")],
            "evaluate": ["--shards", str(tmp_path), "--recon", str(tmp_path), "--metrics", str(out / "eval.json"),
                         "--table", str(out / "eval.csv"), "--plots", str(out / "plots"), "--live-dir",
                         str(out / "live")]}[name]
    proc = subprocess.run([sys.executable, f"stages/{name}.py", "--params", str(params), *args], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    assert not out.exists()
    return proc


@pytest.mark.parametrize("stage", ["train", "encode", "evaluate"])
def test_every_stage_stops_on_a_registration_that_fails_to_import_with_one_line_naming_the_key(stage, tmp_path):
    proc = _stage(stage, "registry:\n  architectures:\n    mynet: wvae_no_such_pkg:build\n", tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        (f"weightvae {stage}: bad params: registry.architectures.mynet: 'wvae_no_such_pkg:build' is not allowed; "
         "module 'wvae_no_such_pkg' not found (install it, or put it under the working directory / on PYTHONPATH)")]


@pytest.mark.parametrize("key", ["architectures", "tasks"])
def test_a_registration_left_under_evaluate_is_told_where_it_moved(key, tmp_path):
    proc = _stage("train", f"evaluate:\n  {key}:\n    mynet: wvae_user_nets:build_tiny\n", tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        (f"weightvae train: bad params: evaluate.{key}: moved to registry.{key} (a top-level `registry:` section "
         f"every stage reads); move it there and delete evaluate.{key}")]


def test_a_task_with_fewer_training_inputs_than_probe_count_probes_them_all():
    """Wine's training split has 125 rows, fewer than train.probe_count's 128: the function codec's encoder reads
    the network's outputs on all of them (40 here, x 10 classes), and a training step runs."""
    from weightvae.layout import Layout
    from weightvae.train import TrainParams, build_module

    register(GOOD["architectures"], {"digits_few": "wvae_user_nets:load_digits_few"})
    layout = Layout.from_state_dict(build_model("tiny", {"hidden": 8}).state_dict())
    functional = {f"digits_few/{layout.layout_id}": {"arch": "tiny", "kwargs": {"hidden": 8}, "task": "digits_few",
                                                     "layout": layout.to_dict()}}
    model = build_module(TrainParams(hidden=16, behaviour_batch=0), layout.length, [layout.layout_id], 4, functional)
    assert model.cfg.cond_dim == 40 * 10 and TrainParams().probe_count == 128
    x = torch.randn(3, layout.length)
    terms = model.loss_terms({"weight": x, "model_properties": [{"layout_id": layout.layout_id,
                                                                 "task": "digits_few"}] * 3})
    assert torch.isfinite(terms["loss"]) and terms["behaviour"] > 0
