import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_ZOO

from weightvae.archs import build_model, evaluate_model
from weightvae.params import ParamsError, build
from weightvae.tasks import get_task
from weightvae.zoo import ZooParams, build_zoo, plan_runs, train_group, train_single

ROOT = Path(__file__).resolve().parents[1]


def test_zoo_files_follow_the_schema_and_load_with_weights_only(tiny_zoo):
    out, summary = tiny_zoo
    files = sorted(out.glob("*.pt"))
    assert len(files) == 10 == summary["checkpoints"]
    assert summary["runs"] == 5
    for f in files:
        rec = torch.load(f, weights_only=True)
        assert set(rec) == {"state_dict", "model_properties"}
        mp = rec["model_properties"]
        assert {"run_id", "task", "architecture", "seed", "epoch", "hyperparameters", "metrics"} <= set(mp)
        assert set(mp["metrics"]) == {"train_acc", "test_acc", "test_loss"}
        assert f.name == f"{mp['run_id']}_e{mp['epoch']:03d}.pt"
        assert mp["task"] == "digits" and mp["epoch"] in (1, 2)


def test_rebuilt_network_reproduces_stored_test_acc_exactly(tiny_zoo):
    out, _ = tiny_zoo
    task = get_task("digits")
    archs = set()
    for f in sorted(out.glob("*.pt")):
        rec = torch.load(f, weights_only=True)
        mp = rec["model_properties"]
        model = build_model(mp["architecture"]["name"], mp["architecture"]["kwargs"])
        model.load_state_dict(rec["state_dict"])
        assert evaluate_model(model, task.x_test, task.y_test)["acc"] == mp["metrics"]["test_acc"]
        archs.add(mp["architecture"]["name"])
    assert archs == {"cnn", "mlp"}


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["cnn", "mlp"])
def test_vectorised_training_equals_training_each_run_alone(arch):
    p = ZooParams(architectures={arch: 3}, epochs=2, save_epochs=(1, 2), dropout=(0.2, 0.5), label_noise=(0.1, 0.3))
    runs = plan_runs(p)
    # float64 leaves only the order of additions to differ: the two paths must agree to ~1e-12.
    together = train_group(runs, (1, 2), dtype=torch.float64)
    for r in runs:
        alone = train_single(r, (1, 2), dtype=torch.float64)
        for epoch in (1, 2):
            for k, v in alone[epoch].items():
                torch.testing.assert_close(together[r.run_id][epoch][k], v, rtol=0, atol=1e-12)
    # and in float32, the zoo's dtype, to rounding error
    together = train_group(runs[:1], (2,))
    alone = train_single(runs[0], (2,))
    for k, v in alone[2].items():
        torch.testing.assert_close(together[runs[0].run_id][2][k], v, rtol=1e-4, atol=1e-5)


def test_same_params_give_identical_files(tiny_zoo, tmp_path):
    out, _ = tiny_zoo
    again = tmp_path / "weights"
    build_zoo(TINY_ZOO, again, log=lambda *_: None)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for n in names:
        assert (out / n).read_bytes() == (again / n).read_bytes(), n


def test_runs_are_diverse_and_growing_the_zoo_keeps_existing_runs():
    small = plan_runs(ZooParams(architectures={"cnn": 4}))
    big = plan_runs(ZooParams(architectures={"cnn": 8}))
    assert big[:4] == small
    assert len({r.seed for r in big}) == 8
    assert len({r.hyperparameters["lr"] for r in big}) == 8
    lrs = [r.hyperparameters["lr"] for r in big]
    assert all(1e-3 <= lr <= 1e-2 for lr in lrs)


def test_summary_matches_the_stored_accuracies(tiny_zoo):
    """metrics/zoo.json's numbers, recomputed by hand from the files' stored test_acc."""
    out, summary = tiny_zoo
    accs: dict[int, list[float]] = {}
    for f in sorted(out.glob("*.pt")):
        mp = torch.load(f, weights_only=True)["model_properties"]
        accs.setdefault(mp["epoch"], []).append(mp["metrics"]["test_acc"])
    every = [a for v in accs.values() for a in v]
    acc = summary["tasks"]["digits"]["test_acc"]
    assert acc["count"] == len(every) == 10 and acc["mean"] == pytest.approx(sum(every) / len(every), abs=1e-12)
    assert (acc["min"], acc["max"]) == (min(every), max(every)) and acc["min"] < acc["max"]
    by_epoch = summary["tasks"]["digits"]["test_acc_by_epoch"]
    assert set(by_epoch) == {"1", "2"}
    for e, v in accs.items():
        assert by_epoch[str(e)]["count"] == len(v) and by_epoch[str(e)]["max"] == max(v)


def test_task_split_is_fixed():
    t = get_task("digits")
    assert len(t.y_train) + len(t.y_test) == 1797
    assert len(t.y_test) == 539
    # the same call gives the same tensors, and train and test share no image
    assert torch.equal(t.x_test, get_task.__wrapped__("digits").x_test)
    train_rows = {tuple(r.flatten().tolist()) for r in t.x_train}
    assert sum(tuple(r.flatten().tolist()) in train_rows for r in t.x_test) < 40  # digits has a few duplicate images


@pytest.mark.parametrize(
    "section, message",
    [
        ({"epoch": 3}, "zoo.epoch: unknown key"),
        ({"epochs": "ten"}, "zoo.epochs: 'ten' is not allowed; expected int"),
        ({"save_epochs": [1, 99]}, "zoo.save_epochs: [1, 99] is not allowed; each epoch must be in 1..16"),
        ({"lr": [0.1, 0.01]}, "zoo.lr: [0.1, 0.01] is not allowed; need 0 < low <= high"),
        ({"architectures": {"resnet": 3}}, "zoo.architectures.resnet: 'resnet' is not allowed"),
        ({"task": "mnist"}, "zoo.task: 'mnist' is not allowed; choose one of"),
    ],
)
def test_bad_params_name_the_key_and_what_is_allowed(section, message):
    with pytest.raises(ParamsError) as e:
        build(ZooParams, section, "zoo")
    assert message in str(e.value)


@pytest.mark.slow
def test_cli_help_and_stage_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "weightvae.cli", "zoo", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--params" in out.stdout
    params = tmp_path / "params.yaml"
    params.write_text("zoo:\n  epochs: 0\n")
    out = subprocess.run([sys.executable, str(ROOT / "stages" / "zoo.py"), "--params", str(params),
                          "--out", str(tmp_path / "w"), "--metrics", str(tmp_path / "m.json")],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "zoo.epochs: 0 is not allowed" in out.stderr
    assert not (tmp_path / "w").exists() and not (tmp_path / "m.json").exists()


@pytest.mark.slow
def test_stage_writes_zoo_and_summary(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("zoo:\n  architectures: {cnn: 2}\n  epochs: 1\n  save_epochs: [1]\n")
    out = subprocess.run([sys.executable, str(ROOT / "stages" / "zoo.py"), "--params", str(params),
                          "--out", str(tmp_path / "w"), "--metrics", str(tmp_path / "m.json")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert len(list((tmp_path / "w").glob("*.pt"))) == 2
    summary = json.loads((tmp_path / "m.json").read_text())
    assert summary["runs"] == 2 and summary["checkpoints"] == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


def test_scientific_notation_that_pyyaml_reads_as_text_is_a_float():
    import yaml

    assert yaml.safe_load("lr: [1e-3, 1e-2]")["lr"] == ["1e-3", "1e-2"]  # the YAML 1.1 quirk
    assert build(ZooParams, yaml.safe_load("lr: [1e-3, 1e-2]"), "zoo").lr == (1e-3, 1e-2)
    with pytest.raises(ParamsError, match="zoo.lr\\[0\\]: 'fast' is not allowed; expected float"):
        build(ZooParams, {"lr": ["fast", 0.1]}, "zoo")
