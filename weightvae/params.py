"""Typed params: each `params.yaml` section maps to a frozen dataclass.

`load_section` is the one loader: it rejects unknown keys (a typo is an error, not a
silently ignored setting) and values of the wrong type, naming the key and what is allowed.
Range checks live in each dataclass's `__post_init__` and raise `ParamsError` too.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import traceback
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ParamsError(ValueError):
    """A bad value in params.yaml; the message names the key, the value and what is allowed."""


class StageError(ValueError):
    """Inputs a stage cannot use (a missing file, a split it needs, ...); the message names the file or key
    and what to do. `run_command` prints it as one line, without a traceback, and exits with 1."""


#: The pipeline's artefacts that several commands read: `--<name>`'s default (where dvc.yaml puts it; a test
#: keeps them equal) and what it is.
INPUTS = {"params": ("params.yaml", "params file"),
          "shards": ("model_data/shards", "ingest output"),
          "model": ("model_data/models/vae.ckpt", "the trained codec"),
          "latents": ("model_data/latents.parquet", "the encode stage's latents"),
          "generator": ("model_data/models/generator.pt", "the latent generator"),
          "recon": ("model_data/reconstructions", "the reconstruct stage's networks")}


def add_inputs(parser: Any, *names: str) -> None:
    """`--<name>` for each of `names` (keys of `INPUTS`) on an argparse parser."""
    for name in names:
        default, what = INPUTS[name]
        parser.add_argument(f"--{name}", default=default, help=f"{what} (default: %(default)s)")


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: params file not found")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    return data


def _check_type(key: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in typing.get_args(tp):
            try:
                return _check_type(key, value, arm)
            except ParamsError as e:
                errors.append(str(e))
        raise ParamsError(f"{key}: {value!r} is not allowed; expected {_type_name(tp)}")
    if tp is type(None):
        if value is None:
            return None
        raise ParamsError(f"{key}: {value!r} is not allowed; expected null")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{key}: {value!r} is not allowed; expected a list ({_type_name(tp)})")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ParamsError(f"{key}: {value!r} must have {len(args)} items ({_type_name(tp)})")
            return tuple(_check_type(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
        arm = args[0] if args else Any
        return tuple(_check_type(f"{key}[{i}]", v, arm) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{key}: {value!r} is not allowed; expected a mapping")
        kt, vt = typing.get_args(tp) or (Any, Any)
        return {_check_type(key, k, kt): _check_type(f"{key}.{k}", v, vt) for k, v in value.items()}
    if origin is typing.Literal:
        if value in typing.get_args(tp):
            return value
        raise ParamsError(f"{key}: {value!r} is not allowed; choose one of {list(typing.get_args(tp))}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # PyYAML (YAML 1.1) reads `1e-5` (no dot) as a string; so does `dvc exp run -S key=1e-06`
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):
        return value
    raise ParamsError(f"{key}: {value!r} is not allowed; expected {_type_name(tp)}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def build(cls: type[T], data: dict[str, Any] | None, section: str) -> T:
    """Build dataclass `cls` from `data`, checking keys and types."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ParamsError(f"{section}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ParamsError(
            f"{section}.{unknown[0]}: unknown key; allowed keys are {sorted(fields)}"
        )
    kwargs = {k: _check_type(f"{section}.{k}", v, hints[k]) for k, v in data.items()}
    return cls(**kwargs)


def load_section(path: str | Path, section: str, cls: type[T]) -> T:
    """Load and validate section `section` of the params file at `path`."""
    return build(cls, read_yaml(path).get(section), section)


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise a ParamsError naming `key`, `value` and what is `allowed` unless `ok`."""
    if not ok:
        raise ParamsError(f"{key}: {value!r} is not allowed; {allowed}")


#: set to 1 to see, on stderr, the traceback and its causes behind an error that is otherwise one line
DEBUG_ENV = "WEIGHTVAE_DEBUG"


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def print_cause(e: BaseException) -> None:
    """With `WEIGHTVAE_DEBUG=1`: `e`'s traceback with the chain of its causes on stderr (before its one line)."""
    if debugging():
        traceback.print_exception(e, file=sys.stderr)


def run_command(name: str, func: Any, args: Any) -> int:
    """Run a stage's `run(args)`, turning a ParamsError into one clear line and exit code 2, and a
    StageError into one line and exit code 1 (`WEIGHTVAE_DEBUG=1`: the traceback too). Any other exception
    is not the input's fault and propagates with its traceback."""
    try:
        func(args)
    except ParamsError as e:
        print_cause(e)
        print(f"weightvae {name}: bad params: {e}", file=sys.stderr)
        return 2
    except StageError as e:
        print_cause(e)
        print(f"weightvae {name}: {e}", file=sys.stderr)
        return 1
    return 0
