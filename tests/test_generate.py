"""`weightvae generate`: the latent generator's networks written as zoo files (`.pt` and `.safetensors`) that load
without weightvae and ingest back bit for bit; the same seed gives the same bytes; bad requests are one line and
exit code 1; an `--out` that holds anything is left alone."""

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from weightvae.archs import build_model
from weightvae.cli import main as cli
from weightvae.encode import EncodeParams, encode
from weightvae.generate import GenerateError, choose_group
from weightvae.generator import GeneratorParams, train_generator, training_codes
from weightvae.ingest import IngestParams, ingest
from weightvae.layout import Layout
from weightvae.shards import open_shard
from weightvae.train import TrainParams, train

# `weightvae.cli.main` pins the CPU settings, too late in a test process that has torch loaded: it says so
pytestmark = pytest.mark.filterwarnings("ignore:weightvae.determinism.pin.. ran after:RuntimeWarning")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These models are tiny: one thread is faster, and immune to a busy machine's thread contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base(tiny_zoo, tmp_path_factory):
    """The session's tiny zoo (cnn and mlp: two groups) ingested, a one-epoch linear codec, the training split's
    encoder codes and a 50-step generator on them; a params file with 8 sampling steps."""
    base = tmp_path_factory.mktemp("generate")
    ingest(IngestParams(zoo_dir=str(tiny_zoo[0]), workers=1), base / "shards", log=lambda *_: None)
    cwd = os.getcwd()
    os.chdir(base)  # DVCLive must not find this repository's dvc.yaml
    try:
        train(TrainParams(codec="linear", latent_dim=6, max_epochs=1, batch_size=4, accelerator="cpu",
                          probe_count=8), base / "shards", base / "vae.ckpt", base / "ckpt", base / "live")
    finally:
        os.chdir(cwd)
    encode(EncodeParams(refine_steps=0, splits=("train",)), base / "shards", base / "vae.ckpt",
           base / "latents.parquet")
    codes, groups, acc, _ = training_codes(base / "shards", base / "latents.parquet")
    flow, _ = train_generator(codes, groups, acc, GeneratorParams(steps=50, hidden=32, depth=1, batch_size=16),
                              log=lambda *_: None)
    torch.save(flow.export(), base / "generator.pt")
    (base / "params.yaml").write_text("generator:\n  sample_steps: 8\n")
    return base


def _generate(base: Path, out: Path, *args: str) -> int:
    return cli(["generate", "--out", str(out), "--params", str(base / "params.yaml"), "--shards", str(base / "shards"),
                "--model", str(base / "vae.ckpt"), "--generator", str(base / "generator.pt"), *args])


def _ranges(base: Path) -> dict[str, list[float]]:
    return torch.load(base / "generator.pt", weights_only=True)["config"]["accuracy_range"]


def test_generated_networks_load_without_weightvae_and_ingest_back_bit_for_bit(base, tmp_path, capsys):
    group = next(g for g in _ranges(base) if g.startswith("digits/cnn/"))
    lo, hi = _ranges(base)[group]
    out = tmp_path / "nets"
    assert _generate(base, out, "-n", "3", "--task", "digits", "--architecture", "cnn", "--accuracy",
                     str((lo + hi) / 2)) == 0
    assert f"generate: 3 networks of {group}, prompted with accuracy" in capsys.readouterr().out
    pts = sorted(out.glob("*.pt"))
    assert [p.name for p in pts] == [f"flow-digits-cnn-{group[-8:]}-s0-{i:04d}.pt" for i in range(3)]
    assert sorted(out.iterdir()) == sorted([*pts, *(p.with_suffix(".safetensors") for p in pts)])
    written = {}
    for pt in pts:
        rec = torch.load(pt, weights_only=True)
        props = rec["model_properties"]
        assert props["sampler"] == "flow" and props["prompted_accuracy"] == pytest.approx((lo + hi) / 2)
        assert props["select_from"] == GeneratorParams().select_from == 16  # the nearest of 16 draws was kept
        assert (props["task"], props["architecture"]["name"], props["run_id"]) == ("digits", "cnn", pt.stem)
        tensors = load_file(pt.with_suffix(".safetensors"))
        assert tensors.keys() == rec["state_dict"].keys()
        assert all(torch.equal(tensors[k], v) and tensors[k].dtype == v.dtype for k, v in rec["state_dict"].items())
        build_model("cnn", props["architecture"]["kwargs"]).load_state_dict(tensors, strict=True)
        written[pt.stem] = (props["layout_id"], rec["state_dict"])
    # the folder as written holds each network twice: ingest keeps the first (.pt) and names the second a copy
    params = {"format": "auto", "workers": 1, "split": (1.0, 0.0, 0.0), "canonicalize": False}
    m = ingest(IngestParams(zoo_dir=str(out), on_error="skip", **params), tmp_path / "back", log=lambda *_: None)
    assert m["models"] == 3 and m["rejected_count"] == 3
    assert all(r["path"].endswith(".safetensors") and "second copy" in r["reason"] for r in m["rejected"])
    sts = tmp_path / "safetensors"
    sts.mkdir()
    for st in out.glob("*.safetensors"):
        shutil.copy(st, sts / st.name)
    m = ingest(IngestParams(zoo_dir=str(sts), **params), tmp_path / "back-st", log=lambda *_: None)
    assert m["models"] == 3 and m["rejected_count"] == 0
    for back in (tmp_path / "back", tmp_path / "back-st"):
        table = pd.read_parquet(back / "models.parquet").set_index("id")
        layouts = json.loads((back / "layouts.json").read_text())
        assert sorted(table.index) == sorted(written)
        for mid, (lid, sd) in written.items():
            row = table.loc[mid]
            assert row.layout_id == lid
            flat = Layout.from_dict(layouts[lid]).flatten(sd).numpy()
            assert np.asarray(open_shard(back, "train", lid)[row.row]).tobytes() == flat.tobytes()


def test_the_same_seed_gives_the_same_bytes(base, tmp_path):
    runs = []
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        (tmp_path / name).mkdir()  # an empty folder is taken
        assert _generate(base, tmp_path / name, "-n", "2", "--group", "digits/mlp", "--seed", seed) == 0
        runs.append({p.name: p.read_bytes() for p in (tmp_path / name).iterdir()})
    assert len(runs[0]) == 4 and runs[0] == runs[1]
    assert [n.replace("-s1-", "-s0-") for n in sorted(runs[2])] == sorted(runs[0])  # another seed: other names...
    st = [{k: v for k, v in r.items() if k.endswith(".safetensors")} for r in runs]
    assert sorted(st[0].values()) != sorted(st[2].values())  # ... and other networks
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no temporaries left
    # no --accuracy: each network's prompt is drawn from the group's training runs' final checkpoints
    t = pd.read_parquet(base / "shards" / "models.parquet")
    t = t[(t.split == "train") & (t.architecture == "mlp")]
    finals = set(t[t.epoch == t.groupby("run_id").epoch.transform("max")].test_acc.astype("float32").tolist())
    for pt in sorted((tmp_path / "a").glob("*.pt")):
        props = torch.load(pt, weights_only=True)["model_properties"]
        assert props["prompted_accuracy"] in finals and props["select_from"] == 1  # a drawn prompt: one draw


@pytest.mark.parametrize("args, pattern", [
    (["--group", "nope/cnn"], r"no group of the generator fits --group 'nope/cnn'; choose one of \['digits/cnn/"),
    (["--task", "digits", "--architecture", "lstm"],
     r"no group .* fits --task 'digits', --architecture 'lstm'; choose one of"),
    ([], r"2 groups fit no choice: \['digits/cnn/\w{8}', 'digits/mlp/\w{8}'\]; choose one with --group"),
    (["--group", "digits/cnn", "--accuracy", "1.5"], r"--accuracy 1\.5 is not an accuracy; give one in \[0, 1\]"),
    (["--group", "digits/cnn", "--accuracy", "0"], (r"--accuracy 0 is far outside digits/cnn/\w{8}'s training range "
                                                    r"\[0\.\d{4}, 0\.\d{4}\]; prompt within it, or at most 0\.05")),
    (["--group", "digits/cnn", "--generator", "missing.pt"], r"missing\.pt: no generator here; .*dvc repro generator"),
    (["--group", "digits/cnn", "--model", "missing.ckpt"], r"missing\.ckpt: no codec here; .*dvc repro train"),
])
def test_bad_requests_are_one_line_naming_the_value_and_exit_1(base, tmp_path, capsys, args, pattern):
    assert _generate(base, tmp_path / "out", *args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.match(r"weightvae generate: " + pattern, err[0]), err
    assert list(tmp_path.iterdir()) == []


def test_a_prompt_a_little_above_the_best_warns_and_generates(base, tmp_path, capsys):
    hi = _ranges(base)[next(g for g in _ranges(base) if g.startswith("digits/mlp/"))][1]
    assert _generate(base, tmp_path / "out", "-n", "1", "--group", "digits/mlp", "--accuracy", f"{hi + 0.03:.4f}") == 0
    assert re.match(r"weightvae generate: warning: --accuracy .* is outside digits/mlp/\w{8}'s training range",
                    capsys.readouterr().err)
    assert len(list((tmp_path / "out").iterdir())) == 2


def test_an_out_folder_that_holds_anything_is_refused_and_left_alone(base, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    (tmp_path / "file").write_text("also mine")
    for target in (out, tmp_path / "file"):
        assert _generate(base, target, "--group", "digits/cnn", "-n", "1") == 1
        assert capsys.readouterr().err == (f"weightvae generate: {target}: exists and is not an empty folder; choose "
                                           "a new --out (nothing was written)\n")
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "mine"]
    assert (tmp_path / "file").read_text() == "also mine"


def test_a_group_is_chosen_by_any_prefix_of_its_name_or_by_task_and_architecture():
    groups = ["digits/cnn/8368dcb6", "digits/mlp/5fc51663", "parity/mlp/5fc51663"]
    assert choose_group(groups[:1]) == groups[0]  # one group: the default
    assert choose_group(groups, "digits/cnn") == choose_group(groups, task="digits", arch="cnn") == groups[0]
    assert choose_group(groups, "digits/mlp/5fc51663" + "0" * 56) == groups[1]  # the whole layout id
    assert choose_group(groups, "parity/mlp/5f") == choose_group(groups, task="parity") == groups[2]
    for args, kwargs, message in ((["digits"], {}, r"2 groups fit --group 'digits': \['digits/cnn/"),
                                  ([], {"arch": "mlp"}, r"2 groups fit --architecture 'mlp'"),
                                  (["digits/cnn"], {"task": "parity"},
                                   r"no group .* fits --group 'digits/cnn', --task "),
                                  (["digits/cnn/5fc5"], {},
                                   r"no group of the generator fits --group 'digits/cnn/5fc5'")):
        with pytest.raises(GenerateError, match=message):
            choose_group(groups, *args, **kwargs)
