"""One file: loaded safely, its properties read in its schema, checked against its architecture when it
names a built-in one, canonicalised, flattened through its `Layout` and hashed. Never raises for a bad file:
`inspect_file` returns `Rejected` with the reason."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from weightvae import canonical
from weightvae.archs import ARCHITECTURES, build_model
from weightvae.ingest.formats import MODELZOO_CHECKPOINT, modelzoo_properties, plain_properties, to_json, zoo_properties
from weightvae.ingest.loaders import BadFile, first_line, load_safetensors, load_torch
from weightvae.layout import Layout
from weightvae.params import print_cause


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


@functools.lru_cache(maxsize=64)
def _architecture_shapes(name: str, kwargs_json: str) -> dict[str, tuple[int, ...]] | str:
    """{tensor name: shape} of `build_model(name, kwargs)`, or why it cannot be built."""
    try:
        with torch.random.fork_rng(devices=[]):  # building initialises weights: leave the caller's RNG alone
            sd = build_model(name, json.loads(kwargs_json)).state_dict()
    except (TypeError, ValueError, RuntimeError) as e:  # what bad kwargs raise; anything else is not the file's
        return f"architecture {name!r} cannot be built from kwargs {kwargs_json}: {first_line(e)}"
    return {k: tuple(v.shape) for k, v in sd.items()}


def _check_architecture(sd: dict[str, Any], props: dict[str, Any]) -> None:
    """A file claiming a known architecture must have its tensors (names and shapes; dtypes may differ,
    `load_state_dict` converts them), or evaluate could not load it into the rebuilt network."""
    name = props["architecture"]
    if name not in ARCHITECTURES:
        return
    need = _architecture_shapes(name, props["arch_kwargs"])
    if isinstance(need, str):
        raise BadFile(need)
    problems = [f"{k!r} is missing" if k not in sd else f"{k!r} has shape {list(sd[k].shape)}, the architecture's "
                f"is {list(v)}" for k, v in need.items() if k not in sd or tuple(sd[k].shape) != v]
    problems += [f"{k!r} is not in the architecture" for k in sd if k not in need]
    if problems:
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise BadFile(f"does not fit its architecture {name!r} (kwargs {props['arch_kwargs']}), so it could not be "
                   f"rebuilt: {'; '.join(problems[:3])}{more}")


def inspect_file(root: str | Path, rel: str, fmt: str = "auto", canonicalize: bool = False) -> Loaded | Rejected:
    """Load, validate and flatten one file. Never raises for a bad file: returns `Rejected` (`WEIGHTVAE_DEBUG=1`:
    and prints the traceback with its cause). Other errors (a MemoryError, a bug) propagate."""
    try:
        return _inspect(Path(root) / rel, rel, fmt, canonicalize)
    except BadFile as e:
        print_cause(e)
        return Rejected(rel, str(e))


def _inspect(path: Path, rel: str, fmt: str, canonicalize: bool = False) -> Loaded:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BadFile(f"cannot be read: {first_line(e)}") from e
    if not data:
        raise BadFile("is an empty file (0 bytes)")
    zoo = MODELZOO_CHECKPOINT.fullmatch(rel) if fmt in ("auto", "modelzoo") else None
    obj = load_safetensors(data) if rel.endswith(".safetensors") else load_torch(data)
    if not isinstance(obj, dict):
        raise BadFile(f"holds a {type(obj).__name__}, expected a dict (a state_dict, or the zoo schema "
                   "{'state_dict': ..., 'model_properties': ...})")
    if zoo:
        sd = obj["state_dict"] if isinstance(obj.get("state_dict"), dict) else obj
        props = modelzoo_properties(path.parent.parent, int(zoo["epoch"]))
    elif fmt == "weightvae" or (fmt == "auto" and "model_properties" in obj):
        sd, mp = obj.get("state_dict"), obj.get("model_properties")
        if not isinstance(sd, dict) or not isinstance(mp, dict):
            raise BadFile("is not in the zoo schema: needs a dict 'state_dict' and a dict 'model_properties' "
                       "(set ingest.format: state_dict for bare state_dicts)")
        props = zoo_properties(mp)
    else:
        sd = obj["state_dict"] if fmt == "auto" and isinstance(obj.get("state_dict"), dict) else obj
        props = plain_properties(rel)
    if not sd:
        raise BadFile("has an empty state_dict")
    try:
        layout = Layout.from_state_dict(sd)
    except ValueError as e:
        raise BadFile(str(e)) from e
    if layout.length == 0:
        raise BadFile("has no floating-point tensors to learn")
    _check_architecture(sd, props)
    if canonicalize and canonical.supports(props["architecture"], props["arch_kwargs"], props["task"]):
        sd = canonical.canonicalize(props["architecture"], sd, props["arch_kwargs"], props["task"])
    vec = layout.flatten(sd, check=False)
    if not bool(torch.isfinite(vec).all()):
        bad = [f"{e.name!r} ({int(torch.isnan(v).sum())} NaN, {int(torch.isinf(v).sum())} Inf)"
               for e in layout.learned if not bool(torch.isfinite(v := vec[e.offset:e.offset + e.numel]).all())]
        raise BadFile(f"has non-finite weights (or values beyond float32 range) in {', '.join(bad)}")
    return Loaded(rel, hashlib.sha256(data).hexdigest(), props, layout, vec.numpy(),
                  to_json(layout.buffers(sd), "buffers"))
