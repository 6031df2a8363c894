"""A stage killed outright (SIGKILL: out of memory, a lost node) leaves no output that a later stage or DVC would
take as valid, and the next run completes.

What a kill leaves: `weightvae.io.atomic_path` writes into a sibling `.<name>.<pid>.<random>.tmp` and renames it
into place at the end, so the declared output (`--out`, a DVC out) is either the complete previous one or, for
the instant between two renames, absent. The sibling itself stays behind (nothing can remove it when the
process dies); DVC never looks at it (only declared outs count) and the next write of the same output removes
the leftovers of dead processes.
"""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from weightvae.ingest import IngestParams, ingest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _small_state_dicts(folder, n):
    """n distinct 50-parameter state_dicts as plain .pt files (about 0.2 ms each)."""
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(n, 5, 8, generator=g), torch.randn(n, 10, generator=g)
    for i in range(n):
        buf = io.BytesIO()
        torch.save({"w": w[i].clone(), "b": b[i].clone()}, buf)
        (folder / f"m{i:05d}.pt").write_bytes(buf.getvalue())


def _wait_for(proc, ready, what, timeout=180.0):
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the stage ended (exit {proc.returncode}) before {what}; the kill would not be mid-way")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout:.0f}s")
        time.sleep(0.01)


def _live_group_members(pgid):
    """Processes of group `pgid` that still run (zombies waiting for their reaper do not count). Linux /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, ...
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(entry.name))
    return out


def _kill(proc):
    """SIGKILL the stage's main process only, as the out-of-memory killer does; reap it."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _cleanup(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group this test started (start_new_session), if anything is left
    except ProcessLookupError:
        pass


def test_ingest_killed_midway_keeps_the_previous_output_and_the_next_run_completes(tmp_path):
    zoo = tmp_path / "zoo"
    _small_state_dicts(zoo, 3000)
    out, metrics = tmp_path / "data" / "shards", tmp_path / "data" / "ingest.json"
    # the previous, complete output: the first 10 files
    (tmp_path / "small").mkdir()
    for f in sorted(zoo.iterdir())[:10]:
        (tmp_path / "small" / f.name).write_bytes(f.read_bytes())
    ingest(IngestParams(zoo_dir=str(tmp_path / "small"), workers=1), out, log=lambda *_: None)
    def files():
        return {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    before = files()
    params = tmp_path / "params.yaml"
    params.write_text("ingest:\n  workers: 2\n  chunk_size: 64\n")
    cmd = [sys.executable, "stages/ingest.py", "--params", str(params), "--zoo-dir", str(zoo), "--out", str(out),
           "--metrics", str(metrics)]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for(proc, lambda: any(out.parent.glob(".shards.*.tmp")), "temporary output folder")
        time.sleep(0.3)  # into the middle of reading and writing 3,000 files (about 2 s of work)
        assert proc.poll() is None, "ingest ended before the kill: make the zoo bigger"
        _kill(proc)
        assert files() == before  # the previous output, untouched
        assert not metrics.exists()
        left = sorted(p.name for p in out.parent.iterdir() if p.name != "shards")
        assert len(left) == 1 and left[0].startswith(f".shards.{proc.pid}.") and left[0].endswith(".tmp"), left
        if sys.platform.startswith("linux"):  # the worker processes died with it (they would wait forever)
            deadline = time.monotonic() + 10
            while _live_group_members(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _live_group_members(proc.pid) == []
    finally:
        _cleanup(proc)
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "ingest: 3000 models" in done.stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ["ingest.json", "shards"]  # the leftover is gone


def test_train_killed_midway_writes_no_export_and_resumes_from_its_last_checkpoint(tiny_zoo, tmp_path):
    shards = tmp_path / "shards"
    ingest(IngestParams(zoo_dir=str(tiny_zoo[0]), workers=1), shards, log=lambda *_: None)
    models, ckpts, live = tmp_path / "models", tmp_path / "models" / "lightning", tmp_path / "live"
    out = models / "vae.ckpt"
    config = "train:\n  channels: [4]\n  latent_dim: 4\n  batch_size: 4\n  accelerator: cpu\n"
    params = tmp_path / "params.yaml"
    params.write_text(config + "  max_epochs: 200\n")
    cmd = [sys.executable, "stages/train.py", "--params", str(params), "--shards", str(shards), "--out", str(out),
           "--ckpt-dir", str(ckpts), "--live-dir", str(live)]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(proc, lambda: (ckpts / "last.ckpt").exists(), "Lightning last.ckpt")
        _kill(proc)
    finally:
        _cleanup(proc)
    # no export, not even a partial one: it is written once, at the end, through atomic_path
    assert sorted(p.name for p in models.iterdir()) == ["lightning"]
    killed = torch.load(ckpts / "last.ckpt", weights_only=True)
    epoch, steps_per_epoch = killed["epoch"], killed["global_step"] // (killed["epoch"] + 1)
    assert epoch < 199
    # a kill can land while DVCLive rewrites its summary: resume must not trip over a half-written one
    summary = live / "metrics.json"
    summary.write_text(summary.read_text()[:20])
    params.write_text(config + f"  max_epochs: {epoch + 3}\n  resume: true\n")
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"Restored all states from the checkpoint at {ckpts / 'last.ckpt'}" in done.stdout + done.stderr
    assert f"train: {summary} was half-written (a killed run); rebuilt from" in done.stdout
    assert json.loads(summary.read_text())["epoch"] == epoch + 2  # DVCLive went on from the rebuilt summary
    final = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert final["epoch"] == epoch + 2 and final["global_step"] == steps_per_epoch * (epoch + 3)  # it went on
    export = torch.load(out, weights_only=True)
    assert "state_dict" in export
    assert sorted(p.name for p in models.iterdir()) == ["lightning", "vae.ckpt"]
