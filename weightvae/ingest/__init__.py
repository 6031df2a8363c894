"""Stage `ingest`: a folder of checkpoints -> split, memory-mappable shards (format: `weightvae.shards`).

Formats (`ingest.format`; `auto` decides per file): the weightvae zoo schema, bare state_dicts
(`.pt`/`.pth`/`.safetensors`), and the Model Zoos layout of Schürholt et al. (`modelzoo`: one folder
per model with `params.json`, `result.json` and `checkpoint_<epoch>/checkpoints`; see
`formats.modelzoo_properties`). A file of a built-in architecture must fit it (names and shapes of
`build_model(name, kwargs).state_dict()`), or evaluate could not rebuild it.

Every file is loaded without running pickle code (`torch.load(..., weights_only=True)`, or
safetensors), validated, flattened through its `Layout` and hashed. Splits are drawn per
training *run* from a salted sha256 of the run id, so the checkpoints of a run never straddle
splits and adding runs never moves an existing one. The output folder (`weightvae.shards`) is
replaced atomically: a parquet row per checkpoint and one `[N, length]` array per split and layout.

Memory stays flat: files are read in chunks (by `workers` processes), their vectors are
appended to a scratch file, and each shard is then written row block by row block.

One concept per module: `params` (the `ingest:` section, `split_of`), `loaders` (safe loading),
`formats` (the three schemas), `files` (one file: checked, canonicalised, flattened), `discovery`
(which files are checkpoints; symlinks), `pool` (worker processes); this module runs them and
writes the shards through `weightvae.shards`, which owns their format.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

from weightvae import FORMAT_VERSION, canonical, shards
from weightvae.ingest.discovery import SUFFIXES, discover
from weightvae.ingest.files import Loaded, Rejected, inspect_file
from weightvae.ingest.formats import run_id_of
from weightvae.ingest.loaders import BadFile
from weightvae.ingest.params import IngestError, IngestParams, split_of
from weightvae.ingest.pool import results
from weightvae.io import atomic_path, write_json
from weightvae.layout import Layout
from weightvae.params import INPUTS, add_inputs, load_section
from weightvae.progress import Progress
from weightvae.registry import register_params
from weightvae.shards import SPLITS

__all__ = ["SPLITS", "SUFFIXES", "IngestError", "IngestParams", "Loaded", "Rejected", "add_arguments", "discover",
           "ingest", "inspect_file", "run", "run_id_of", "split_of"]


def _fail(path: str, reason: str) -> IngestError:
    return IngestError(f"{path}: {reason}. Fix or remove the file, or set `ingest.on_error: skip` to skip "
                       "bad files and list them in the ingest metrics.")


def _model_id(props: dict[str, Any], rel: str) -> str:
    if props["epoch"] is None:
        return rel.rsplit(".", 1)[0]
    return f"{props['run_id']}/e{props['epoch']:03d}"


class _Row(NamedTuple):
    """A model's parquet fields (but `row`) and where its vector sits in the scratch file.
    A tuple, not a dict: a big zoo holds one per model in memory."""

    id: str
    run_id: str
    split: str
    task: str
    architecture: str
    arch_kwargs: str
    layout_id: str
    epoch: int | None
    seed: int | None
    hyperparameters: str
    train_acc: float | None
    test_acc: float | None
    test_loss: float | None
    source_path: str
    sha256: str
    length: int
    buffers: str
    offset: int  # in float32 entries


def ingest(p: IngestParams, out: str | Path, log=print) -> dict[str, Any]:
    """Ingest the zoo in `p.zoo_dir` into the folder `out`; returns the metrics. `log` receives the
    progress line when not on a terminal (`weightvae.progress`)."""
    t0 = time.perf_counter()
    root = Path(p.zoo_dir)
    if not root.is_dir():
        raise IngestError(f"{root}: zoo folder not found. Build the zoo (`dvc repro zoo`) or point "
                          "`ingest.zoo_dir` at a folder of .pt/.pth/.safetensors checkpoints.")
    items, ignored = discover(root, p.format)
    if not items:
        mz = "Model Zoos checkpoints (<model>/checkpoint_<epoch>/checkpoints)"
        what = {"modelzoo": mz, "auto": f".pt, .pth or .safetensors files found, nor {mz}"}.get(
            p.format, ".pt, .pth or .safetensors files")
        raise IngestError(f"{root}: no {what} found. Build the zoo (`dvc repro zoo`) "
                          "or point `ingest.zoo_dir` at a folder of checkpoints.")
    rows: list[_Row] = []
    rejected: list[dict[str, str]] = []
    layouts: dict[str, Layout] = {}
    ids: dict[str, str] = {}
    with atomic_path(out, is_dir=True) as tmp:
        scratch = tmp / "vectors.scratch"  # every vector, in file order; removed before the rename
        with open(scratch, "wb") as f, Progress("ingest", len(items), "files", log=log) as bar:
            offset = 0
            for res in results(root, items, p):
                bar.update()
                if isinstance(res, Loaded) and res.props["run_id"] is None:  # a bare state_dict
                    try:
                        res.props["run_id"] = run_id_of(res.path, p.run_id_from)
                    except BadFile as e:
                        res = Rejected(res.path, str(e))
                if isinstance(res, Loaded):
                    mid = _model_id(res.props, res.path)
                    if p.max_len is not None and res.layout.length > p.max_len:
                        res = Rejected(res.path, f"holds {res.layout.length} weights, more than ingest.max_len "
                                                 f"= {p.max_len} (raise max_len, or null for the longest model); "
                                                 "it is not truncated")
                    elif mid in ids:
                        res = Rejected(res.path, f"is a second copy of checkpoint {mid!r} (first in {ids[mid]})")
                if isinstance(res, Rejected):
                    if p.on_error == "fail":
                        raise _fail(f"{root.as_posix().rstrip('/')}/{res.path}", res.reason)
                    rejected.append({"path": res.path, "reason": res.reason})
                    continue
                ids[mid] = res.path
                lid = layouts.setdefault(res.layout.layout_id, res.layout).layout_id
                f.write(res.vector.tobytes())
                pr = {k: sys.intern(v) if k in _FEW and isinstance(v, str) else v for k, v in res.props.items()}
                rows.append(_Row(mid, split=sys.intern(split_of(pr["run_id"], p.split_salt, p.split)),
                                 layout_id=lid, source_path=res.path, sha256=res.sha256, length=res.layout.length,
                                 buffers=sys.intern(res.buffers) if len(res.buffers) < 256 else res.buffers,
                                 offset=offset, **pr))
                offset += res.layout.length
        if not rows:
            raise IngestError(f"{root}: none of the {len(items)} checkpoint files could be used "
                              f"(first: {rejected[0]['path']}: {rejected[0]['reason']})")
        max_len = p.max_len or max(r.length for r in rows)
        rows.sort(key=lambda r: (SPLITS.index(r.split), r.id))
        stats, row_index = shards.write_shards(tmp, scratch, rows, layouts)
        scratch.unlink()
        shards.write_parquet(tmp / "models.parquet", rows, row_index)
        write_json(tmp / "layouts.json", {lid: layouts[lid].to_dict() for lid in sorted(layouts)})
        write_json(tmp / "stats.json", stats)
        counts = {s: sum(r.split == s for r in rows) for s in SPLITS}
        runs = len({r.run_id for r in rows})
        params = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(p).items()
                  if k not in ("workers", "chunk_size")}
        write_json(tmp / "manifest.json", {
            "format_version": FORMAT_VERSION, "shard_format": shards.VERSION, "max_len": max_len, "params": params,
            "counts": {"models": len(rows), "runs": runs, "layouts": len(layouts), **counts},
            "order": "rows by split (train, val, test) then id, each shard in that order; "
                     "vector entries in state_dict key order",
            "stats": "per-tensor train mean and raw std; readers floor the std (weightvae.standardize)",
        })
    seconds = time.perf_counter() - t0
    tasks: dict[str, dict[str, int]] = {}
    for r in rows:
        tasks.setdefault(r.task, dict.fromkeys(SPLITS, 0))[r.split] += 1
    return {
        "models": len(rows), "runs": runs, "layouts": len(layouts), "max_len": max_len,
        "splits": counts, "tasks": dict(sorted(tasks.items())), "files": len(items), "ignored_files": ignored,
        "unit_order": _unit_order(rows) if p.canonicalize else {},
        "rejected_count": len(rejected), "rejected": rejected,
        "seconds": round(seconds, 3), "models_per_s": round(len(rows) / seconds, 1),
    }


_FEW = ("task", "architecture", "arch_kwargs", "hyperparameters")


def _unit_order(rows: list[_Row]) -> dict[str, str]:
    """Per task/architecture, how its hidden units are stored: sorted (in how many groups), or why not."""
    out = {}
    for arch, kwargs, task in sorted({(r.architecture, r.arch_kwargs, r.task) for r in rows}):
        groups = canonical.unit_groups(arch, kwargs, task)
        how = "as weightvae/canonical.py lists them" if arch in canonical.GROUPS else "traced from its forward"
        sorted_ = f"{len(groups)} group{'s' * (len(groups) > 1)} of hidden units sorted, {how}"
        out.setdefault(f"{task}/{arch}", sorted_ if groups else
                       f"hidden units in stored order: {canonical.why_not(arch, kwargs, task)}")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_inputs(parser, "params")
    parser.add_argument("--zoo-dir", default=None, help="zoo folder; overrides ingest.zoo_dir if given")
    parser.add_argument("--out", default=INPUTS["shards"][0], help="shard folder to (re)write (default: %(default)s)")
    parser.add_argument("--metrics", default="metrics/ingest.json", help="summary JSON (default: %(default)s)")


def run(args: argparse.Namespace) -> None:
    """Stage entry point: read `ingest:` params, ingest the zoo, write the metrics."""
    p = load_section(args.params, "ingest", IngestParams)
    register_params(args.params)  # a registered architecture's hidden units are sorted too (its forward traced)
    if args.zoo_dir:
        p = dataclasses.replace(p, zoo_dir=args.zoo_dir)
    m = ingest(p, args.out)  # an IngestError is one line (run_command)
    write_json(args.metrics, m)
    skipped = f", {m['rejected_count']} files skipped (see {args.metrics})" if m["rejected_count"] else ""
    print(f"ingest: {m['models']} models ({m['runs']} runs, {m['layouts']} layouts, max_len {m['max_len']}) "
          f"train/val/test {m['splits']['train']}/{m['splits']['val']}/{m['splits']['test']} "
          f"in {m['seconds']}s ({m['models_per_s']} models/s){skipped}")
    for group, how in m["unit_order"].items():
        if group.split("/", 1)[1] not in canonical.GROUPS:
            print(f"ingest: {group}: {how}")
    empty = [s for s, share in zip(SPLITS, p.split) if share > 0 and not m["splits"][s]]
    if empty:  # allowed (a small zoo), but said: train chooses its epoch on val, evaluate judges test
        print(f"ingest: no run landed in the {' and '.join(empty)} split of {m['runs']} runs (ingest.split "
              f"{list(p.split)} sends each run by a salted hash of its run id): add runs, raise that share, or set "
              "another ingest.split_salt")
