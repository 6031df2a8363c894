"""`weightvae check-repro`: does this clone reproduce its committed `dvc.lock`?

Copies the clone's tracked files (as they are in the working tree; no DVC cache, no outputs) into
a scratch folder, makes it a git repository whose one commit holds the committed `dvc.lock` and
metrics, runs `dvc repro --force` there, and then asks DVC what changed:

- the reproduced `dvc.lock` against the committed one: which outputs of each stage have other hashes;
- `dvc status --json` against the committed `dvc.lock`: which code and params of a stage changed since
  the lock was written (then a difference is expected, not a reproducibility failure);
- `dvc metrics diff --json`: the committed metrics against the reproduced ones, value by value.

Metrics files are compared value by value: their wall times (`*seconds*`, `*per_s*` keys) differ on
every run, are reported apart and never count as a mismatch. Outputs marked `persist: true` (Lightning's
resume checkpoints, which also hold absolute paths) are state kept between runs, not results: they are
listed, not compared. Every other output must have its locked hash. Exit code 0 when everything
matches, 1 when something differs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

TIMING_KEYS = ("seconds", "per_s")


@dataclass
class OutputResult:
    """One output of a stage: its locked and reproduced hashes."""

    path: str
    kind: str  # "data" (compared by hash) | "metrics" (compared value by value) | "state" (persist: listed only)
    locked: str | None
    reproduced: str | None

    @property
    def same(self) -> bool:
        return self.locked == self.reproduced


@dataclass
class MetricDiff:
    path: str
    key: str
    locked: Any
    reproduced: Any

    @property
    def change(self) -> float | None:
        if _is_number(self.locked) and _is_number(self.reproduced):
            return float(self.reproduced) - float(self.locked)
        return None


@dataclass
class StageResult:
    name: str
    outputs: list[OutputResult] = field(default_factory=list)
    metrics: list[MetricDiff] = field(default_factory=list)  # non-timing metrics that differ
    timing_only: list[str] = field(default_factory=list)  # metrics files whose only differences are wall times
    changed_inputs: list[str] = field(default_factory=list)  # code/params deps that differ from dvc.lock

    @property
    def matches(self) -> bool:
        return all(o.same for o in self.outputs if o.kind == "data") and not self.metrics


@dataclass
class Report:
    stages: list[StageResult]
    scratch: Path

    @property
    def matches(self) -> bool:
        return all(s.matches for s in self.stages)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_timing(key: str) -> bool:
    return any(t in key for t in TIMING_KEYS)


def _run(cmd: list[str], cwd: Path, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if check and out.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed in {cwd} (exit {out.returncode}):\n"
                           f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def _env(scratch: Path) -> dict[str, str]:
    """The scratch copy runs its own code (not whatever `weightvae` is installed) with this interpreter's tools."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1"}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(scratch), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _git(repo: Path, *args: str) -> str:
    return _run(["git", "-c", "user.email=check-repro@weightvae", "-c", "user.name=check-repro", *args], repo,
                {**os.environ}).stdout


def copy_clone(repo: Path, scratch: Path) -> None:
    """Tracked files of `repo` as they are in its working tree, into `scratch` (a new git repo, one commit)."""
    files = _git(repo, "ls-files", "-z").split("\0")
    for f in filter(None, files):
        src = repo / f
        if src.is_file() and not f.startswith(".dvc/cache/"):
            (scratch / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, scratch / f)
    if not (scratch / "dvc.lock").exists():
        raise FileNotFoundError(f"{repo / 'dvc.lock'}: no committed dvc.lock to check against; run `dvc repro` "
                                "and commit dvc.lock first")
    _git(scratch, "init", "-q")
    _git(scratch, "add", "-A")
    _git(scratch, "commit", "-qm", "check-repro: the clone as committed")


def _lock_outs(lock: dict[str, Any]) -> dict[str, dict[str, str]]:
    """stage -> {out path: md5} from a parsed dvc.lock."""
    return {name: {o["path"]: o.get("md5") for o in st.get("outs", [])}
            for name, st in lock.get("stages", {}).items()}


def _out_kinds(dvc_yaml: dict[str, Any]) -> dict[str, str]:
    """out path -> "metrics" (a metrics file), "state" (`persist: true`) or "data" (any other output)."""
    kinds = {}
    for st in dvc_yaml.get("stages", {}).values():
        for section in ("outs", "metrics", "plots"):
            for entry in st.get(section, []):
                path, opts = (next(iter(entry.items())) if isinstance(entry, dict) else (entry, {}))
                persist = (opts or {}).get("persist", False)
                kinds[path] = "metrics" if section == "metrics" else ("state" if persist else "data")
    return kinds


def _flatten(prefix: str, obj: Any, out: dict[str, Any]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = obj


def _metric_diffs(scratch: Path, env: dict[str, str]) -> dict[str, list[MetricDiff]]:
    """`dvc metrics diff --json` (committed -> reproduced), per metrics file; every differing key, timings too."""
    raw = json.loads(_run(["dvc", "metrics", "diff", "--all", "--json"], scratch, env).stdout or "{}")
    diffs: dict[str, list[MetricDiff]] = {}
    for path, keys in raw.get("diff", raw).items():
        flat: dict[str, Any] = {}
        _flatten("", keys, flat)
        by_key: dict[str, dict[str, Any]] = {}
        for k, v in flat.items():
            key, _, part = k.rpartition(".")
            by_key.setdefault(key, {})[part] = v
        for key, d in sorted(by_key.items()):
            old, new = d.get("old"), d.get("new")
            if old != new:  # no tolerance: under the pinned settings every stage is bit-exact
                diffs.setdefault(path, []).append(MetricDiff(path, key, old, new))
    return diffs


def compare(scratch: Path, locked: dict[str, Any], env: dict[str, str] | None = None) -> list[StageResult]:
    """Compare the reproduced workspace in `scratch` (its `dvc.lock` rewritten by the repro) with `locked`,
    the committed `dvc.lock` (parsed); the committed metrics are those of the scratch repo's HEAD."""
    env = env or _env(scratch)
    kinds = _out_kinds(yaml.safe_load((scratch / "dvc.yaml").read_text()))
    reproduced = _lock_outs(yaml.safe_load((scratch / "dvc.lock").read_text()))
    committed = _lock_outs(locked)
    # DVC's own verdict against the committed lock: put it back for `dvc status`, keep the new one beside it
    shutil.copy2(scratch / "dvc.lock", scratch / "dvc.lock.reproduced")
    (scratch / "dvc.lock").write_text(yaml.safe_dump(locked, sort_keys=False))
    try:
        status = json.loads(_run(["dvc", "status", "--json"], scratch, env).stdout or "{}")
    finally:
        shutil.copy2(scratch / "dvc.lock.reproduced", scratch / "dvc.lock")
    metrics = _metric_diffs(scratch, env)
    results = []
    for name in list(dict.fromkeys([*committed, *reproduced])):
        changed = [dep for entry in status.get(name, []) if isinstance(entry, dict)
                   for dep in entry.get("changed deps", {})]
        res = StageResult(name, changed_inputs=[d for d in changed if d not in kinds])  # not another stage's output
        for path in list(dict.fromkeys([*committed.get(name, {}), *reproduced.get(name, {})])):
            kind = kinds.get(path, "data")
            res.outputs.append(OutputResult(path, kind, committed.get(name, {}).get(path),
                                            reproduced.get(name, {}).get(path)))
            if kind == "metrics" and path in metrics:
                real = [d for d in metrics[path] if not _is_timing(d.key)]
                res.metrics.extend(real)
                if not real:
                    res.timing_only.append(path)
        results.append(res)
    return results


def check(repo: str | Path = ".", scratch: str | Path | None = None, log=print) -> Report:
    """Reproduce `repo`'s pipeline in a scratch copy and compare it with the committed `dvc.lock`."""
    repo = Path(_git(Path(repo), "rev-parse", "--show-toplevel").strip())
    scratch = Path(scratch) if scratch else Path(tempfile.mkdtemp(prefix="weightvae-check-repro-"))
    if scratch.exists() and any(scratch.iterdir()):
        raise FileExistsError(f"{scratch}: scratch folder is not empty; pass a new or empty folder")
    scratch.mkdir(parents=True, exist_ok=True)
    copy_clone(repo, scratch)
    locked = yaml.safe_load((scratch / "dvc.lock").read_text())
    env = _env(scratch)
    log(f"check-repro: reproducing {repo} in {scratch} (dvc repro --force; its output follows on stderr)")
    # the stages' own progress lines go to stderr as they come: a full repro takes minutes
    done = subprocess.run(["dvc", "repro", "--force"], cwd=scratch, env=env, stdout=sys.stderr, stderr=sys.stderr,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"`dvc repro --force` failed in {scratch} (exit {done.returncode}); its output is above")
    return Report(compare(scratch, locked, env), scratch)


def _short(h: str | None) -> str:
    return "-" if h is None else h.removesuffix(".dir")[:8]


def _fmt(v: Any) -> str:
    return f"{v:.6g}" if _is_number(v) else str(v)


def format_report(report: Report, top: int = 5) -> str:
    """The per-stage table: each output's locked vs reproduced hash, then the largest metric differences."""
    lines = [f"{'stage':<12} {'output':<42} {'locked':<9} {'repro':<9} result"]
    for s in report.stages:
        for o in s.outputs:
            if o.kind == "metrics":
                result = ("match" if o.same else
                          "match (wall times differ only)" if o.path in s.timing_only else
                          f"DIFFERS ({sum(d.path == o.path for d in s.metrics)} metrics)")
            elif o.kind == "state":
                result = "same" if o.same else "differs (persist: resume state, not compared)"
            else:
                result = "match" if o.same else "DIFFERS"
            lines.append(f"{s.name:<12} {o.path:<42} {_short(o.locked):<9} {_short(o.reproduced):<9} {result}")
    lines.append("")
    for s in report.stages:
        verdict = "match" if s.matches else "DIFFERS"
        lines.append(f"{s.name}: {verdict}")
        if s.changed_inputs:
            lines.append(f"  changed since dvc.lock (`dvc status`): {', '.join(s.changed_inputs)}"
                         + ("" if s.matches else "; a difference is expected until dvc.lock is re-made"))
        if s.metrics:
            biggest = sorted(s.metrics, key=lambda d: -abs(d.change) if d.change is not None else -math.inf)
            for d in biggest[:top]:
                change = "" if d.change is None else f" ({d.change:+.3g})"
                lines.append(f"  {d.path} {d.key}: {_fmt(d.locked)} -> {_fmt(d.reproduced)}{change}")
            if len(biggest) > top:
                lines.append(f"  ... and {len(biggest) - top} more metrics")
    n = sum(not s.matches for s in report.stages)
    lines.append("")
    lines.append("check-repro: every cached output and metric matches dvc.lock" if report.matches else
                 f"check-repro: {n} of {len(report.stages)} stages differ from dvc.lock (scratch: {report.scratch})")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repo", default=".", help="the clone to check (default: the current folder's repo)")
    parser.add_argument("--scratch", default=None,
                        help="new or empty folder to reproduce in (default: a temporary folder, removed on a match)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder even when everything matches")


def run(args: argparse.Namespace) -> int:
    report = check(args.repo, args.scratch)
    print(format_report(report))
    if report.matches and not args.keep and args.scratch is None:
        shutil.rmtree(report.scratch, ignore_errors=True)
    return 0 if report.matches else 1
