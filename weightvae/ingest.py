"""Stage `ingest`: a folder of checkpoints -> split, padded, memory-mappable shards.

Formats (`ingest.format`; `auto` decides per file): the weightvae zoo schema, bare state_dicts
(`.pt`/`.pth`/`.safetensors`), and the Model Zoos layout of Schürholt et al. (`modelzoo`: one folder
per model with `params.json`, `result.json` and `checkpoint_<epoch>/checkpoints`; see
`_modelzoo_properties`). A file of a built-in architecture must fit it (names and shapes of
`build_model(name, kwargs).state_dict()`), or evaluate could not rebuild it.

Every file is loaded without running pickle code (`torch.load(..., weights_only=True)`, or
safetensors), validated, flattened through its `Layout` and hashed. Splits are drawn per
training *run* from a salted sha256 of the run id, so the checkpoints of a run never straddle
splits and adding runs never moves an existing one. Outputs (one folder, replaced atomically)::

    models.parquet              one row per checkpoint, sorted by split (train, val, test) then id
    train.npy val.npy test.npy  float32 [N, max_len], zero-padded; `row` in the parquet indexes them
    layouts.json                {layout_id: Layout.to_dict()}
    stats.json                  {layout_id: per learned tensor mean/std over the train split}
    manifest.json               format version, max_len, the params that define the data, counts

Memory stays flat: files are read in chunks (by `workers` processes), their vectors are
appended to a scratch file, and each shard is then written row block by row block.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import io
import json
import math
import multiprocessing
import os
import pickle
import re
import sys
import time
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path, PurePosixPath
from typing import Any, Literal, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from weightvae import FORMAT_VERSION, canonical, tensorfile
from weightvae.archs import ARCHITECTURES, build_model
from weightvae.io import atomic_path, write_json
from weightvae.layout import Layout
from weightvae.params import StageError, load_section, require
from weightvae.progress import Progress

SUFFIXES = (".pt", ".pth", ".safetensors")
RUN_ID_RULES = ("auto", "parent", "stem")
#: A Model Zoos checkpoint, `<model folder>/checkpoint_<epoch>/checkpoints` (`checkpoint_000005` or `checkpoint_5`).
MODELZOO_CHECKPOINT = re.compile(r"(?:.*/)?[^/]+/checkpoint_(?P<epoch>\d+)/checkpoints")
MODELZOO_METRICS = ("train_acc", "test_acc", "test_loss")
SPLITS = ("train", "val", "test")
_BLOCK = 256  # rows per write block; set by the data alone so stats sum in the same order whatever the params
_BLOCK_VALUES = 2**22  # ... and fewer rows for long models: a block's float64 statistics stay ~100 MiB


class IngestError(StageError):
    """A zoo that cannot be ingested; the message names the file and what to do."""


@dataclass(frozen=True)
class IngestParams:
    """`ingest:` section of params.yaml. `workers` and `chunk_size` change speed only, never the output."""

    zoo_dir: str = "model_data/weights"
    max_len: int | None = None  # None: the longest model's length
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train, val, test fractions of *runs*
    split_salt: str = "weightvae"
    on_error: Literal["fail", "skip"] = "fail"
    format: Literal["auto", "weightvae", "modelzoo", "state_dict"] = "auto"
    workers: int = 2
    chunk_size: int = 512
    canonicalize: bool = True  # sort hidden units of known architectures (function-preserving), see canonical.py
    run_id_from: str = "auto"  # bare state_dicts: auto | parent | stem | a regex (see run_id_of)

    def __post_init__(self) -> None:
        if self.run_id_from not in RUN_ID_RULES:
            try:
                re.compile(self.run_id_from)
            except re.error as e:
                require(False, "ingest.run_id_from", self.run_id_from,
                        f"choose one of {list(RUN_ID_RULES)} or a valid regular expression ({e})")
        require(self.max_len is None or self.max_len >= 1, "ingest.max_len", self.max_len, "need null or >= 1")
        require(all(f >= 0 for f in self.split) and abs(sum(self.split) - 1) < 1e-6, "ingest.split",
                list(self.split), "need three fractions (train, val, test) >= 0 that sum to 1")
        require(self.workers >= 1, "ingest.workers", self.workers, "need >= 1")
        require(self.chunk_size >= 1, "ingest.chunk_size", self.chunk_size, "need >= 1")


def split_of(run_id: str, salt: str, fractions: Sequence[float]) -> str:
    """The split of a run: a function of (run_id, salt) alone, so it never depends on the rest of the zoo."""
    u = (int.from_bytes(hashlib.sha256(f"{salt}\0{run_id}".encode()).digest()[:8], "big") >> 11) / 2**53  # [0, 1)
    cum = 0.0
    for name, f in zip(SPLITS, fractions):
        cum += f
        if u < cum:
            return name
    return [name for name, f in zip(SPLITS, fractions) if f > 0][-1]  # u above a rounded-down sum


# ----------------------------------------------------------------------------- one file


class _Bad(Exception):
    """A file is rejected; the message is the reason."""


@dataclass
class Loaded:
    """What one file contributes: small and picklable, so worker processes can return it."""

    path: str  # relative to the zoo folder, POSIX
    sha256: str
    props: dict[str, Any]
    layout: Layout
    vector: np.ndarray  # float32 [length]
    buffers: str  # JSON


@dataclass
class Rejected:
    path: str
    reason: str


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def _load_torch(data: bytes) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Unsupported" in msg:
            what = msg.split("WeightsUnpickler error:")[-1].strip().splitlines()[0].split(". ")[0]
            need = "needs arbitrary pickle code to load" if "Unsupported global" in what else \
                "uses pickle instructions that safe loading (weights_only=True) refuses"
            raise _Bad(f"{need} ({what}); refused, none of it was run. Re-save it with tensors and plain "
                       "Python values only, e.g. torch.save({'state_dict': model.state_dict(), "
                       "'model_properties': {...}}, path)") from None
        raise _Bad(f"cannot be unpickled (truncated or corrupt?): {_first_line(e)}") from None
    except Exception as e:
        raise _Bad(f"cannot be read as a torch file (truncated or corrupt?): {_first_line(e)}") from None


def _load_safetensors(data: bytes) -> Any:
    """Tensors in the order the file records (weightvae's exports), else by name: the same in every process."""
    try:
        tensors, meta = tensorfile.load(data)
    except Exception as e:
        raise _Bad(f"cannot be read as safetensors (truncated or corrupt?): {_first_line(e)}") from None
    if "model_properties" in meta:  # optional: our schema's properties as a JSON string in the header
        try:
            return {"state_dict": tensors, "model_properties": json.loads(meta["model_properties"])}
        except json.JSONDecodeError as e:
            raise _Bad(f"metadata 'model_properties' is not valid JSON: {e}") from None
    return tensors


def _json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise _Bad(f"{what} cannot be stored as JSON: {e}") from None


def _float_or_none(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad(f"{what} is {value!r}, expected a number or null")
    return float(value)


def _properties(mp: dict[str, Any]) -> dict[str, Any]:
    """Validated `model_properties` of the zoo schema, as flat row fields."""
    for key in ("run_id", "task"):
        if not isinstance(mp.get(key), str) or not mp[key]:
            raise _Bad(f"model_properties[{key!r}] is {mp.get(key)!r}, expected a non-empty string")
    arch = mp.get("architecture")
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str) \
            or not isinstance(arch.get("kwargs", {}), dict):
        raise _Bad(f"model_properties['architecture'] is {arch!r}, expected {{'name': str, 'kwargs': dict}}")
    epoch, seed = mp.get("epoch"), mp.get("seed")
    for key, v in (("epoch", epoch), ("seed", seed)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise _Bad(f"model_properties[{key!r}] is {v!r}, expected an integer or null")
    metrics = mp.get("metrics") or {}
    if not isinstance(metrics, dict):
        raise _Bad(f"model_properties['metrics'] is {metrics!r}, expected a dict")
    return {
        "run_id": mp["run_id"], "task": mp["task"], "architecture": arch["name"],
        "arch_kwargs": _json(arch.get("kwargs", {}), "architecture kwargs"), "epoch": epoch, "seed": seed,
        "hyperparameters": _json(mp.get("hyperparameters") or {}, "hyperparameters"),
        **{k: _float_or_none(metrics.get(k), f"metrics[{k!r}]") for k in ("train_acc", "test_acc", "test_loss")},
    }


def run_id_of(rel: str, rule: str) -> str:
    """The run a bare state_dict at `rel` (relative to the zoo folder) belongs to, by `ingest.run_id_from`:
    `auto` the parent folder when the file sits in a sub-folder, else the file stem; `parent` the parent
    folder; `stem` the file stem; anything else a regular expression searched in `rel` (its first group,
    or the whole match). Raises `_Bad` if the rule does not apply to this file."""
    path = PurePosixPath(rel)
    parent = str(path.parent)
    if rule == "stem" or (rule == "auto" and parent == "."):
        return path.stem
    if rule in ("auto", "parent"):
        if parent == ".":
            raise _Bad("sits at the top of the zoo folder, so it has no parent folder to name its run "
                       "(ingest.run_id_from: parent); put each run's checkpoints in a folder of its own")
        return parent
    m = re.search(rule, rel)
    if m is None:
        raise _Bad(f"does not match ingest.run_id_from '{rule}', so its run is unknown")
    run = m.group(1) if m.re.groups else m.group(0)
    if not run:
        raise _Bad(f"gives an empty run id with ingest.run_id_from '{rule}'")
    return run


def _plain_properties(rel: str) -> dict[str, Any]:
    """A bare state_dict: the run comes from its path (`run_id_of`, applied by ingest); the rest is unknown."""
    return {"run_id": None, "task": "unknown", "architecture": "unknown", "arch_kwargs": "{}",
            "epoch": None, "seed": None, "hyperparameters": "{}", "train_acc": None, "test_acc": None,
            "test_loss": None}


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise _Bad(f"has no {what} in its model folder {path.parent.name!r} (Model Zoos layout: "
                   "<model>/params.json, <model>/result.json, <model>/checkpoint_<epoch>/checkpoints)") from None
    except (OSError, ValueError) as e:
        raise _Bad(f"its model folder's {what} cannot be read: {_first_line(e)}") from None


def _modelzoo_properties(model_dir: Path, epoch: int) -> dict[str, Any]:
    """Row fields of a Model Zoos checkpoint. run_id: the model folder's name; epoch: the number in
    `checkpoint_<epoch>`; hyperparameters: params.json; architecture and task: params.json's
    `architecture` (a name or {"name", "kwargs"}) and `task`, as given: weightvae names, built in or
    registered under evaluate.architectures / evaluate.tasks; "unknown" when absent (the Model Zoos'
    own `model::type` names their networks, not weightvae's); seed: params.json's `seed`.

    Metrics (train_acc, test_acc, test_loss) come from result.json, one JSON object per line: the
    line whose `training_iteration` equals the epoch (the last such line if a restored trial logged
    it twice; in the Model Zoos, iteration 0 is the evaluation before training, saved as
    checkpoint_000000). A result.json without `training_iteration` is read by position: line
    epoch - 1 (its first line is epoch 1). No matching line, or no result.json: metrics are null.
    A line that is not valid JSON (a run killed mid-write) counts as a line without metrics."""
    cfg = _read_json(model_dir / "params.json", "params.json")
    if not isinstance(cfg, dict):
        raise _Bad(f"its model folder's params.json holds a {type(cfg).__name__}, expected a JSON object")
    arch = cfg.get("architecture", "unknown")
    arch = {"name": arch} if isinstance(arch, str) else arch
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str) or not arch["name"] \
            or not isinstance(arch.get("kwargs", {}), dict):
        raise _Bad(f"params.json['architecture'] is {cfg.get('architecture')!r}, expected a name or "
                   "{'name': str, 'kwargs': dict}")
    task = cfg.get("task", "unknown")
    if not isinstance(task, str) or not task:
        raise _Bad(f"params.json['task'] is {task!r}, expected a non-empty string")
    seed = cfg.get("seed")
    metrics = dict.fromkeys(MODELZOO_METRICS)
    try:
        text = (model_dir / "result.json").read_text()
    except FileNotFoundError:
        text = ""
    except OSError as e:
        raise _Bad(f"its model folder's result.json cannot be read: {_first_line(e)}") from None
    lines: list[dict[str, Any]] = []
    for line in text.splitlines():
        if line.strip():
            try:
                obj = json.loads(line)
            except ValueError:
                obj = None
            lines.append(obj if isinstance(obj, dict) else {})
    if any("training_iteration" in r for r in lines):
        line = next((r for r in reversed(lines) if r.get("training_iteration") == epoch), {})
    else:
        line = lines[epoch - 1] if 1 <= epoch <= len(lines) else {}
    metrics.update({k: _float_or_none(line.get(k), f"result.json's {k!r} of epoch {epoch}") for k in metrics})
    return {"run_id": model_dir.name, "task": task, "architecture": arch["name"],
            "arch_kwargs": _json(arch.get("kwargs", {}), "architecture kwargs"), "epoch": epoch,
            "seed": seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
            "hyperparameters": _json(cfg, "params.json"), **metrics}


@functools.lru_cache(maxsize=64)
def _architecture_shapes(name: str, kwargs_json: str) -> dict[str, tuple[int, ...]] | str:
    """{tensor name: shape} of `build_model(name, kwargs)`, or why it cannot be built."""
    try:
        with torch.random.fork_rng(devices=[]):  # building initialises weights: leave the caller's RNG alone
            sd = build_model(name, json.loads(kwargs_json)).state_dict()
    except Exception as e:
        return f"architecture {name!r} cannot be built from kwargs {kwargs_json}: {_first_line(e)}"
    return {k: tuple(v.shape) for k, v in sd.items()}


def _check_architecture(sd: dict[str, Any], props: dict[str, Any]) -> None:
    """A file claiming a known architecture must have its tensors (names and shapes; dtypes may differ,
    `load_state_dict` converts them), or evaluate could not load it into the rebuilt network."""
    name = props["architecture"]
    if name not in ARCHITECTURES:
        return
    need = _architecture_shapes(name, props["arch_kwargs"])
    if isinstance(need, str):
        raise _Bad(need)
    problems = [f"{k!r} is missing" if k not in sd else f"{k!r} has shape {list(sd[k].shape)}, the architecture's "
                f"is {list(v)}" for k, v in need.items() if k not in sd or tuple(sd[k].shape) != v]
    problems += [f"{k!r} is not in the architecture" for k in sd if k not in need]
    if problems:
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise _Bad(f"does not fit its architecture {name!r} (kwargs {props['arch_kwargs']}), so it could not be "
                   f"rebuilt: {'; '.join(problems[:3])}{more}")


def inspect_file(root: str | Path, rel: str, fmt: str = "auto", canonicalize: bool = False) -> Loaded | Rejected:
    """Load, validate and flatten one file. Never raises for a bad file: returns `Rejected`."""
    try:
        return _inspect(Path(root) / rel, rel, fmt, canonicalize)
    except _Bad as e:
        return Rejected(rel, str(e))


def _inspect(path: Path, rel: str, fmt: str, canonicalize: bool = False) -> Loaded:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _Bad(f"cannot be read: {_first_line(e)}") from None
    if not data:
        raise _Bad("is an empty file (0 bytes)")
    zoo = MODELZOO_CHECKPOINT.fullmatch(rel) if fmt in ("auto", "modelzoo") else None
    obj = _load_safetensors(data) if rel.endswith(".safetensors") else _load_torch(data)
    if not isinstance(obj, dict):
        raise _Bad(f"holds a {type(obj).__name__}, expected a dict (a state_dict, or the zoo schema "
                   "{'state_dict': ..., 'model_properties': ...})")
    if zoo:
        sd = obj["state_dict"] if isinstance(obj.get("state_dict"), dict) else obj
        props = _modelzoo_properties(path.parent.parent, int(zoo["epoch"]))
    elif fmt == "weightvae" or (fmt == "auto" and "model_properties" in obj):
        sd, mp = obj.get("state_dict"), obj.get("model_properties")
        if not isinstance(sd, dict) or not isinstance(mp, dict):
            raise _Bad("is not in the zoo schema: needs a dict 'state_dict' and a dict 'model_properties' "
                       "(set ingest.format: state_dict for bare state_dicts)")
        props = _properties(mp)
    else:
        sd = obj["state_dict"] if fmt == "auto" and isinstance(obj.get("state_dict"), dict) else obj
        props = _plain_properties(rel)
    if not sd:
        raise _Bad("has an empty state_dict")
    try:
        layout = Layout.from_state_dict(sd)
    except ValueError as e:
        raise _Bad(str(e)) from None
    if layout.length == 0:
        raise _Bad("has no floating-point tensors to learn")
    _check_architecture(sd, props)
    if canonicalize and canonical.supports(props["architecture"]):
        sd = canonical.canonicalize(props["architecture"], sd)
    vec = layout.flatten(sd, check=False)
    if not bool(torch.isfinite(vec).all()):
        bad = [f"{e.name!r} ({int(torch.isnan(v).sum())} NaN, {int(torch.isinf(v).sum())} Inf)"
               for e in layout.learned if not bool(torch.isfinite(v := vec[e.offset:e.offset + e.numel]).all())]
        raise _Bad(f"has non-finite weights (or values beyond float32 range) in {', '.join(bad)}")
    return Loaded(rel, hashlib.sha256(data).hexdigest(), props, layout, vec.numpy(),
                  _json(layout.buffers(sd), "buffers"))


def _inspect_chunk(root: str, items: list[tuple[str, str | None]], fmt: str,
                   canonicalize: bool = False) -> list[Loaded | Rejected]:
    return [Rejected(rel, reason) if reason else inspect_file(root, rel, fmt, canonicalize) for rel, reason in items]


def _worker_init(parent: int) -> None:
    torch.set_num_threads(1)  # one process per core; nested threads would only contend
    if sys.platform.startswith("linux"):
        # A main process killed outright (SIGKILL, out of memory) would leave its workers waiting for work
        # forever, holding memory and the scratch file: have the kernel kill them with it.
        import ctypes
        import signal

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        except (AttributeError, OSError):  # no prctl in this C library: workers just may outlive a killed main
            return
        if os.getppid() != parent:  # the main process died before prctl
            os._exit(1)


# ----------------------------------------------------------------------------- the zoo


def _wanted(rel: str, fmt: str) -> bool:
    """Is the file at `rel` a checkpoint in format `fmt`? Model Zoos checkpoints have no suffix."""
    if MODELZOO_CHECKPOINT.fullmatch(rel):
        return fmt in ("auto", "modelzoo")
    return fmt != "modelzoo" and rel.endswith(SUFFIXES)


def discover(root: Path, fmt: str = "auto") -> tuple[list[tuple[str, str | None]], int]:
    """Checkpoint files under `root` as sorted (relative path, rejection reason or None), and the
    number of other files ignored. Symlinks must stay inside `root`; symlinked folders inside it
    are not followed (their files are reached through their real path)."""
    real_root = os.path.realpath(root)
    found, ignored = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = Path(os.path.relpath(full, root)).as_posix()
            is_dir = name in dirnames
            if not is_dir and not _wanted(rel, fmt):
                ignored += 1
                continue
            reason = None
            if os.path.islink(full):
                target = os.path.realpath(full)
                if os.path.commonpath([real_root, target]) != real_root:
                    reason = f"is a symlink pointing outside the zoo folder (to {target}); copy the file in instead"
                elif not os.path.exists(target):
                    reason = "is a broken symlink"
                elif is_dir:
                    continue
            if reason or not is_dir:
                found.append((rel, reason))
    return sorted(found), ignored


def _results(root: Path, items: list[tuple[str, str | None]], p: IngestParams) -> Iterator[Loaded | Rejected]:
    """Each file's result, in `items` order, whatever the number of workers. At most two chunks per
    worker are in flight, so memory does not grow with the zoo."""
    size = max(1, min(p.chunk_size, math.ceil(len(items) / p.workers)))
    chunks = [items[i:i + size] for i in range(0, len(items), size)]
    if p.workers == 1 or len(chunks) == 1:
        for c in chunks:
            yield from _inspect_chunk(str(root), c, p.format, p.canonicalize)
        return
    # fork: workers start in milliseconds; spawned ones would spend seconds importing torch
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    pool = ProcessPoolExecutor(p.workers, mp_context=ctx, initializer=_worker_init, initargs=(os.getpid(),))
    try:
        todo = iter(chunks)
        pending = deque(pool.submit(_inspect_chunk, str(root), c, p.format, p.canonicalize)
                        for c in islice(todo, 2 * p.workers))
        while pending:
            done = pending.popleft().result()
            if (c := next(todo, None)) is not None:
                pending.append(pool.submit(_inspect_chunk, str(root), c, p.format, p.canonicalize))
            yield from done
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _fail(path: str, reason: str) -> IngestError:
    return IngestError(f"{path}: {reason}. Fix or remove the file, or set `ingest.on_error: skip` to skip "
                       "bad files and list them in the ingest metrics.")


def _model_id(props: dict[str, Any], rel: str) -> str:
    if props["epoch"] is None:
        return rel.rsplit(".", 1)[0]
    return f"{props['run_id']}/e{props['epoch']:03d}"


_SCHEMA = pa.schema([
    ("id", pa.string()), ("run_id", pa.string()), ("split", pa.string()), ("task", pa.string()),
    ("architecture", pa.string()), ("arch_kwargs", pa.string()), ("layout_id", pa.string()),
    ("epoch", pa.int64()), ("seed", pa.int64()), ("hyperparameters", pa.string()),
    ("train_acc", pa.float64()), ("test_acc", pa.float64()), ("test_loss", pa.float64()),
    ("source_path", pa.string()), ("sha256", pa.string()), ("length", pa.int64()), ("row", pa.int64()),
    ("buffers", pa.string()),
])


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
            for res in _results(root, items, p):
                bar.update()
                if isinstance(res, Loaded) and res.props["run_id"] is None:  # a bare state_dict
                    try:
                        res.props["run_id"] = run_id_of(res.path, p.run_id_from)
                    except _Bad as e:
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
        stats, row_index = _write_shards(tmp, scratch, rows, layouts, max_len)
        scratch.unlink()
        _write_parquet(tmp / "models.parquet", rows, row_index)
        write_json(tmp / "layouts.json", {lid: layouts[lid].to_dict() for lid in sorted(layouts)})
        write_json(tmp / "stats.json", stats)
        counts = {s: sum(r.split == s for r in rows) for s in SPLITS}
        runs = len({r.run_id for r in rows})
        params = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(p).items()
                  if k not in ("workers", "chunk_size")}
        write_json(tmp / "manifest.json", {
            "format_version": FORMAT_VERSION, "max_len": max_len, "params": params,
            "counts": {"models": len(rows), "runs": runs, "layouts": len(layouts), **counts},
            "order": "rows by split (train, val, test) then id; vector entries in state_dict key order",
            "stats": "per-tensor train mean and raw std; readers floor the std (weightvae.standardize)",
        })
    seconds = time.perf_counter() - t0
    tasks: dict[str, dict[str, int]] = {}
    for r in rows:
        tasks.setdefault(r.task, dict.fromkeys(SPLITS, 0))[r.split] += 1
    return {
        "models": len(rows), "runs": runs, "layouts": len(layouts), "max_len": max_len,
        "splits": counts, "tasks": dict(sorted(tasks.items())), "files": len(items), "ignored_files": ignored,
        "rejected_count": len(rejected), "rejected": rejected,
        "seconds": round(seconds, 3), "models_per_s": round(len(rows) / seconds, 1),
    }


def _write_parquet(path: Path, rows: list[_Row], row_index: list[int], group: int = 8192) -> None:
    """Fixed-size row groups: arrow holds one group at a time, and the file depends on the rows alone."""
    with pq.ParquetWriter(path, _SCHEMA) as w:
        for s in range(0, len(rows), group):
            part = rows[s:s + group]
            w.write_table(pa.table({name: row_index[s:s + group] if name == "row" else [getattr(r, name) for r in part]
                                    for name in _SCHEMA.names}, schema=_SCHEMA))


# few distinct values: one shared string each (hyperparameters: one per run, e.g. a Model Zoos params.json)
_FEW = ("task", "architecture", "arch_kwargs", "hyperparameters")


def _write_shards(tmp: Path, scratch: Path, rows: list[_Row], layouts: dict[str, Layout],
                  max_len: int) -> tuple[dict[str, Any], list[int]]:
    """Write `<split>.npy` block by block from the scratch file; returns the per-layout, per-tensor
    train statistics and each row's index in its split's shard."""
    # shifted sums (shift = the layout's first train model) keep the variance free of cancellation
    acc: dict[str, dict[str, Any]] = {}
    row_index: list[int] = []
    fd = os.open(scratch, os.O_RDONLY)
    try:
        for split in SPLITS:
            part = [r for r in rows if r.split == split]
            with open(tmp / f"{split}.npy", "wb") as f:
                np.lib.format.write_array_header_1_0(
                    f, {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False,
                        "shape": (len(part), max_len)})
                rows_per_block = max(1, min(_BLOCK, _BLOCK_VALUES // max_len))
                for start in range(0, len(part), rows_per_block):
                    block = part[start:start + rows_per_block]
                    buf = np.zeros((len(block), max_len), dtype="<f4")  # [b, max_len]
                    for i, r in enumerate(block):
                        buf[i, :r.length] = np.frombuffer(os.pread(fd, 4 * r.length, 4 * r.offset), dtype="<f4")
                    if split == "train":
                        _accumulate(acc, buf, block, layouts)
                    f.write(buf.tobytes())
            row_index.extend(range(len(part)))
    finally:
        os.close(fd)
    stats = {}
    for lid in sorted(layouts):
        lay, a = layouts[lid], acc.get(lid)
        tensors = {}
        for j, e in enumerate(lay.learned):
            if a is None or e.numel == 0:  # no training model of this layout (or no entry): identity
                mean, std = 0.0, 1.0
            else:
                n = a["count"] * e.numel
                m1, m2 = a["s1"][j] / n, a["s2"][j] / n
                # the raw std: readers floor it with weightvae.standardize.layer_scale
                mean, std = float(a["shift"][j] + m1), math.sqrt(max(m2 - m1 * m1, 0.0))
            tensors[e.name] = {"mean": mean, "std": std}
        stats[lid] = {"train_count": 0 if a is None else a["count"], "tensors": tensors}
    return stats, row_index


def _accumulate(acc: dict[str, dict[str, Any]], buf: np.ndarray, block: list[_Row],
                layouts: dict[str, Layout]) -> None:
    by_layout: dict[str, list[int]] = {}
    for i, r in enumerate(block):
        by_layout.setdefault(r.layout_id, []).append(i)
    for lid, idx in by_layout.items():
        lay = layouts[lid]
        starts = np.array([e.offset for e in lay.learned])
        sizes = np.array([e.numel for e in lay.learned])
        x = buf[idx, :lay.length].astype(np.float64)  # [b, length]
        nz = sizes > 0  # reduceat cannot sum an empty segment (a zero-element tensor): leave those at 0

        def sums(v: np.ndarray) -> np.ndarray:
            out = np.zeros(len(sizes))
            out[nz] = np.add.reduceat(v, starts[nz])
            return out

        if lid not in acc:
            shift = sums(x[0]) / np.maximum(sizes, 1)
            acc[lid] = {"count": 0, "shift": shift, "s1": np.zeros(len(sizes)), "s2": np.zeros(len(sizes))}
        a = acc[lid]
        d = x - np.repeat(a["shift"], sizes)
        a["s1"] += sums(d.sum(0))
        a["s2"] += sums((d * d).sum(0))
        a["count"] += len(idx)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    parser.add_argument("--zoo-dir", default=None, help="zoo folder; overrides ingest.zoo_dir if given")
    parser.add_argument("--out", default="model_data/shards", help="shard folder to (re)write (default: %(default)s)")
    parser.add_argument("--metrics", default="metrics/ingest.json", help="summary JSON (default: %(default)s)")


def run(args: argparse.Namespace) -> None:
    """Stage entry point: read `ingest:` params, ingest the zoo, write the metrics."""
    p = load_section(args.params, "ingest", IngestParams)
    if args.zoo_dir:
        p = dataclasses.replace(p, zoo_dir=args.zoo_dir)
    m = ingest(p, args.out)  # an IngestError is one line (run_command)
    write_json(args.metrics, m)
    skipped = f", {m['rejected_count']} files skipped (see {args.metrics})" if m["rejected_count"] else ""
    print(f"ingest: {m['models']} models ({m['runs']} runs, {m['layouts']} layouts, max_len {m['max_len']}) "
          f"train/val/test {m['splits']['train']}/{m['splits']['val']}/{m['splits']['test']} "
          f"in {m['seconds']}s ({m['models_per_s']} models/s){skipped}")
