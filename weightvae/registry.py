"""User architectures and tasks, named once in params.yaml by `module:callable` strings and read by every stage.

    registry:
      architectures: {mynet: "mypkg.nets:build_mynet"}   # build_mynet(**stored kwargs) -> nn.Module
      tasks: {mytask: "mypkg.data:load_mytask"}          # load_mytask() -> weightvae.tasks.TaskData

Each stage's `run()` calls `register_params(params file)` before it works. `register` imports each callable
and adds it to `weightvae.archs.ARCHITECTURES` /
`weightvae.tasks.TASKS`, so a model whose stored architecture is `mynet` and task `mytask` is
rebuilt and run like a built-in one. Modules are imported as `python -m` would find them: the
installed packages, then the working directory (the repository root under `dvc repro`). Built-in
names cannot be replaced: stored accuracies of existing zoos refer to them.

So that editing the user's module reruns what depends on it, its file goes into the `deps` of each stage that
lists `registry` in its `params` (dvc.yaml); `undeclared_deps` says which are missing (tests/test_deps.py).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from weightvae.archs import ARCHITECTURES, Architecture
from weightvae.params import ParamsError, build, read_yaml, require
from weightvae.tasks import TASKS, TaskData, get_task

BUILTIN_ARCHITECTURES = frozenset(ARCHITECTURES)
BUILTIN_TASKS = frozenset(TASKS)

#: How to get functional metrics for models of an unknown architecture or task (printed by evaluate).
ENABLE_HINT = ("to enable them, name each model's task and architecture (model_properties in the zoo schema, "
               "`task` / `architecture` in a Model Zoos params.json) and register them in params.yaml: "
               "registry.architectures: {NAME: 'module:builder'} (builder(**kwargs) -> nn.Module) and "
               "registry.tasks: {NAME: 'module:loader'} (loader() -> weightvae.tasks.TaskData)")

SECTION = "registry"
#: where the registration lived before it was read by every stage
MOVED = {("evaluate", "architectures"): "registry.architectures", ("evaluate", "tasks"): "registry.tasks"}


@dataclass(frozen=True)
class RegistryParams:
    """`registry:` section of params.yaml (top level): the user's architectures and tasks, for every stage."""

    architectures: dict[str, str] = field(default_factory=dict)  # name -> "module:builder"
    tasks: dict[str, str] = field(default_factory=dict)  # name -> "module:loader"

    def __post_init__(self) -> None:
        for kind in ("architectures", "tasks"):
            for name, spec in getattr(self, kind).items():
                check_spec(f"{SECTION}.{kind}.{name}", spec)


def check_moved(data: Mapping[str, Any]) -> None:
    """One line for a params file that still registers under `evaluate:`: where the keys went."""
    for (section, key), new in MOVED.items():
        if isinstance(data.get(section), Mapping) and key in data[section]:
            raise ParamsError(f"{section}.{key}: moved to {new} (a top-level `{SECTION}:` section every stage reads); "
                              f"move it there and delete {section}.{key}")


def load_params(path: str | Path) -> RegistryParams:
    """The params file's `registry:` section, checked (a registration left under `evaluate:` is named)."""
    data = read_yaml(path)
    check_moved(data)
    return build(RegistryParams, data.get(SECTION), SECTION)


def register_params(path: str | Path) -> RegistryParams:
    """Register what the params file's `registry:` section names; every stage's `run()` calls this first."""
    p = load_params(path)
    register(p.architectures, p.tasks)
    return p


def check_spec(key: str, spec: str) -> None:
    """Syntax only (no import): `spec` must look like `module.path:callable`."""
    module, _, attr = spec.partition(":")
    require(bool(module.strip()) and bool(attr.strip()) and " " not in spec, key, spec,
            "expected 'module:callable', e.g. 'mypkg.nets:build_mynet'")


def resolve(key: str, spec: str) -> Callable[..., Any]:
    """Import `module:callable` (the callable may be dotted, `module:Class.method`); a ParamsError naming
    `key` and `spec` says what is wrong."""
    check_spec(key, spec)
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())  # the repository root under dvc; `python stages/x.py` only has stages/
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise ParamsError(f"{key}: {spec!r} is not allowed; module {module_name!r} not found (install it, "
                              "or put it under the working directory / on PYTHONPATH)") from None
        raise ParamsError(f"{key}: {spec!r} is not allowed; importing {module_name!r} failed: "
                          f"ModuleNotFoundError: {e}") from None
    except Exception as e:
        raise ParamsError(f"{key}: {spec!r} is not allowed; importing {module_name!r} failed: "
                          f"{type(e).__name__}: {e}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ParamsError(f"{key}: {spec!r} is not allowed; module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ParamsError(f"{key}: {spec!r} is not allowed; {attr!r} is a {type(obj).__name__}, not callable")
    return obj


def register(architectures: Mapping[str, str], tasks: Mapping[str, str], section: str = SECTION) -> None:
    """Resolve every `module:callable` and add it to ARCHITECTURES / TASKS (idempotent)."""
    for name, spec in architectures.items():
        key = f"{section}.architectures.{name}"
        require(name not in BUILTIN_ARCHITECTURES, key, spec,
                f"{name!r} is a built-in architecture; register yours under another name")
        ARCHITECTURES[name] = Architecture(_checked_builder(key, spec, resolve(key, spec)))
    for name, spec in tasks.items():
        key = f"{section}.tasks.{name}"
        require(name not in BUILTIN_TASKS, key, spec, f"{name!r} is a built-in task; register yours under another name")
        TASKS[name] = _checked_loader(key, spec, resolve(key, spec))
    if tasks:
        get_task.cache_clear()  # a name registered again must not return the previous loader's data


def _checked_builder(key: str, spec: str, build: Callable[..., Any]) -> Callable[..., nn.Module]:
    @functools.wraps(build)
    def checked(**kwargs: Any) -> nn.Module:
        model = build(**kwargs)
        if not isinstance(model, nn.Module):
            raise ParamsError(f"{key}: {spec!r} is not allowed; it returned a {type(model).__name__}, "
                              "expected a torch.nn.Module")
        return model

    return checked


def _checked_loader(key: str, spec: str, load: Callable[[], Any]) -> Callable[[], TaskData]:
    @functools.wraps(load)
    def checked() -> TaskData:
        data = load()
        if not isinstance(data, TaskData):
            raise ParamsError(f"{key}: {spec!r} is not allowed; it returned a {type(data).__name__}, "
                              "expected weightvae.tasks.TaskData")
        return checked_task_data(data, f"{key}: {spec!r}")

    return checked


def checked_task_data(data: TaskData, where: str) -> TaskData:
    """A user's `TaskData` as every stage expects it: inputs float32 tensors `[N, ...]`, labels int64 `[N]` in
    `[0, num_classes)`. Arrays and other float / integer dtypes are converted (labels `[N, 1]` flattened); what
    cannot be meant one way stops with one line naming `where`, the field and what to return instead."""
    import numpy as np
    import torch

    def fail(what: str) -> ParamsError:
        return ParamsError(f"{where} returned a TaskData whose {what}")

    if not (isinstance(data.num_classes, int | np.integer) and data.num_classes >= 2):
        raise fail(f"num_classes is {data.num_classes!r}: give the number of classes, an int >= 2")
    out = {}
    for split in ("train", "test"):
        x, y = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
        x, y = (torch.as_tensor(v) if isinstance(v, np.ndarray) else v for v in (x, y))
        for name, v in ((f"x_{split}", x), (f"y_{split}", y)):
            if not isinstance(v, torch.Tensor):
                raise fail(f"{name} is a {type(v).__name__}: give a torch.Tensor (or a numpy array)")
        if not x.is_floating_point() or x.dim() < 1 or len(x) == 0:
            raise fail(f"x_{split} is {x.dtype} of shape {tuple(x.shape)}: give float inputs [N, ...] with N >= 1")
        if y.dim() == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or y.dim() != 1:
            raise fail(f"y_{split} is {y.dtype} of shape {tuple(y.shape)}: give integer class labels [N]")
        if len(y) != len(x):
            raise fail(f"x_{split} holds {len(x)} inputs and y_{split} {len(y)} labels: give one label per input")
        if int(y.min()) < 0 or int(y.max()) >= data.num_classes:
            raise fail(f"y_{split} has labels in [{int(y.min())}, {int(y.max())}], outside [0, num_classes = "
                       f"{data.num_classes}): number the classes from 0")
        out[f"x_{split}"], out[f"y_{split}"] = x.float().contiguous(), y.long().contiguous()
    return TaskData(data.name, out["x_train"], out["y_train"], out["x_test"], out["y_test"], int(data.num_classes))


def module_file(spec: str, root: str | Path) -> str | None:
    """The file of `spec`'s module relative to `root` (posix), if it lies inside `root`; None for an installed
    package (editing it is an install, not a change DVC tracks) or a module not found. Imports nothing but the
    module's parent packages."""
    root = Path(root).resolve()
    module = spec.partition(":")[0]
    added = str(root) not in sys.path
    if added:
        sys.path.insert(0, str(root))
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    finally:
        if added:
            sys.path.remove(str(root))
    origin = Path(found.origin).resolve() if found is not None and found.origin else None
    if origin is None or not origin.is_relative_to(root):
        return None
    return origin.relative_to(root).as_posix()


def undeclared_deps(stages: Mapping[str, Mapping[str, Any]], registry: RegistryParams,
                    root: str | Path) -> list[str]:
    """One line per (stage, user module) where a stage that reads `registry` (it lists it in its dvc.yaml
    `params`) does not list the registered module's file (inside `root`) in its `deps`."""
    files = sorted({f for spec in [*registry.architectures.values(), *registry.tasks.values()]
                    if (f := module_file(spec, root)) is not None})
    out = []
    for name, stage in sorted(stages.items()):
        params = {str(x) for x in stage.get("params", []) if isinstance(x, str)}
        if SECTION not in params:
            continue
        deps = {str(d).rstrip("/") for d in stage.get("deps", [])}
        out += [f"stage {name!r} reads `{SECTION}` but its deps lack {f}: add it to dvc.yaml" for f in files
                if f not in deps]
    return out
