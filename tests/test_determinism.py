"""The pinned CPU settings (`weightvae.determinism`) make a stage's bytes independent of the machine.

Two subprocess "shells" stand for two machines: an AVX2 machine with one core (ATen, numpy and
oneDNN at AVX2, one thread) and this machine with three threads and MKL's own dispatch. The zoo and
train stages (`stages/*.py`, as DVC runs them) must write identical bytes under both. The zoo stage
covers the grouped convolution, the batched matmuls and Adam, and numpy's `exp` (the per-run
learning rates); train covers Lightning's conv VAE, whose reductions depend on the thread count.
Without the pinning these outputs differ on an AVX-512 machine (the last test shows it there).
"""

import hashlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from weightvae import determinism
from weightvae.ingest import IngestParams, ingest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

SHELLS = {
    "avx2-1-core": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1",
                    "MKL_NUM_THREADS": "1", "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR AVX512F"},
    "native-3-threads": {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3", "MKL_CBWR": "AUTO"},
}
# 24 runs: run 21's learning rate is one of those numpy's AVX-512 `exp` rounds differently
PARAMS = {
    "zoo": {"architectures": {"cnn": 24}, "epochs": 1, "save_epochs": [1], "group_size": 24},
    "train": {"channels": [4], "latent": "spatial", "loss": "layer", "behaviour_weight": 1.0, "probe_count": 16,
              "max_epochs": 1, "batch_size": 16, "kl_weight": 1e-5, "accelerator": "cpu"},
}


def _env(shell: dict[str, str], pin: bool = True) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in determinism.PINNED and k != determinism.OPT_OUT}
    env.update(shell, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    if not pin:
        env[determinism.OPT_OUT] = "0"
    return env


def _stage(name: str, args: list[str], env: dict[str, str], cwd: Path) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "stages" / f"{name}.py"), *args], cwd=cwd, env=env,
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, f"stages/{name}.py failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"


def _digest(folder: Path) -> dict[str, str]:
    """md5 of every file under `folder`; JSON files without their wall-time keys."""
    out = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = f.read_bytes()
        if f.suffix == ".json":
            data = json.dumps({k: v for k, v in json.loads(data).items() if "seconds" not in k}).encode()
        out[str(f.relative_to(folder))] = hashlib.md5(data).hexdigest()
    return out


def _zoo(tmp: Path, shell: str, pin: bool = True) -> dict[str, str]:
    out = tmp / f"zoo-{shell}-{'pinned' if pin else 'native'}"
    _stage("zoo", ["--params", str(tmp / "params.yaml"), "--out", str(out / "weights"),
                   "--metrics", str(out / "zoo.json")], _env(SHELLS[shell], pin), tmp)
    return _digest(out)


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("determinism")
    (tmp / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    return tmp


@pytest.fixture(scope="module")
def zoos(tmp) -> dict[str, dict[str, str]]:
    return {shell: _zoo(tmp, shell) for shell in SHELLS}


def test_zoo_stage_writes_the_same_bytes_under_both_shells(zoos):
    a, b = zoos.values()
    assert len(a) == 24 + 1  # every checkpoint and zoo.json
    assert a == b


def test_train_stage_writes_the_same_model_under_both_shells(tmp, zoos):
    shards = tmp / "shards"
    ingest(IngestParams(zoo_dir=str(tmp / "zoo-avx2-1-core-pinned" / "weights"), workers=1), shards, log=lambda *_: None)
    digests = []
    for shell, env in SHELLS.items():
        out = tmp / f"train-{shell}"
        _stage("train", ["--params", str(tmp / "params.yaml"), "--shards", str(shards), "--out", str(out / "vae.ckpt"),
                         "--ckpt-dir", str(out / "lightning"), "--live-dir", str(out / "live")],
               _env(env), tmp)
        digests.append({"vae.ckpt": _digest(out)["vae.ckpt"],
                        "metrics": (out / "live" / "metrics.json").read_text()})
    assert digests[0] == digests[1]


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() != "AVX512",
                    reason="the two shells differ in ATen's kernels only where AVX-512 is available")
def test_without_the_pinning_the_shells_give_different_zoos(tmp, zoos):
    """The control: `WEIGHTVAE_PIN_CPU=0` leaves the shells' settings in force, and the zoo changes with them."""
    native = {shell: _zoo(tmp, shell, pin=False) for shell in SHELLS}
    a, b = native.values()
    assert set(a) == set(b)
    changed = [f for f in a if a[f] != b[f]]
    assert len(changed) > 1, "without pinning, the shells should change the trained zoo"


def test_pin_sets_every_variable_and_the_opt_out_sets_none(monkeypatch):
    for k in determinism.PINNED:
        monkeypatch.setenv(k, "from-the-shell")
    monkeypatch.setenv(determinism.OPT_OUT, "0")
    assert determinism.pin() == {}
    assert all(os.environ[k] == "from-the-shell" for k in determinism.PINNED)
    monkeypatch.delenv(determinism.OPT_OUT)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert determinism.pin() == determinism.PINNED
    assert all(os.environ[k] == v for k, v in determinism.PINNED.items())
    # torch is already loaded in this test process: pin() says it comes too late to change it
    assert any("after torch" in str(w.message) for w in caught)


def test_stage_processes_run_with_the_pinned_settings(tmp):
    """What a stage process sees once `pin()` ran, whatever the shell said."""
    probe = ("from weightvae.determinism import pin; pin()\n"
             "import json, numpy, torch\n"
             "try:\n    from numpy._core._multiarray_umath import __cpu_features__ as f\n"
             "except ImportError:  # numpy < 2\n    from numpy.core._multiarray_umath import __cpu_features__ as f\n"
             "print(json.dumps({'threads': torch.get_num_threads(), 'aten': torch.backends.cpu.get_cpu_capability(),"
             " 'avx512': [k for k in ('X86_V4', 'AVX512_SKX', 'AVX512_ICL') if f.get(k)]}))")
    for shell in SHELLS.values():
        out = subprocess.run([sys.executable, "-c", probe], env=_env({**shell, "ATEN_CPU_CAPABILITY": "avx512"}),
                             capture_output=True, text=True, check=True, cwd=tmp)
        seen = json.loads(out.stdout)
        assert seen["threads"] == determinism.THREADS
        assert seen["aten"] == "AVX2"
        assert seen["avx512"] == []  # numpy's AVX-512 loops are off
