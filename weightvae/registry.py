"""User architectures and tasks, named in params.yaml by `module:callable` strings.

    evaluate:
      architectures: {mynet: "mypkg.nets:build_mynet"}   # build_mynet(**stored kwargs) -> nn.Module
      tasks: {mytask: "mypkg.data:load_mytask"}          # load_mytask() -> weightvae.tasks.TaskData

`register` imports each callable and adds it to `weightvae.archs.ARCHITECTURES` /
`weightvae.tasks.TASKS`, so a model whose stored architecture is `mynet` and task `mytask` is
rebuilt and run like a built-in one. Modules are imported as `python -m` would find them: the
installed packages, then the working directory (the repository root under `dvc repro`). Built-in
names cannot be replaced: stored accuracies of existing zoos refer to them.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from weightvae.archs import ARCHITECTURES, Architecture
from weightvae.params import ParamsError, require
from weightvae.tasks import TASKS, TaskData, get_task

BUILTIN_ARCHITECTURES = frozenset(ARCHITECTURES)
BUILTIN_TASKS = frozenset(TASKS)

#: How to get functional metrics for models of an unknown architecture or task (printed by evaluate).
ENABLE_HINT = ("to enable them, name each model's task and architecture (model_properties in the zoo schema, "
               "`task` / `architecture` in a Model Zoos params.json) and register them in params.yaml: "
               "evaluate.architectures: {NAME: 'module:builder'} (builder(**kwargs) -> nn.Module) and "
               "evaluate.tasks: {NAME: 'module:loader'} (loader() -> weightvae.tasks.TaskData)")


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


def register(architectures: Mapping[str, str], tasks: Mapping[str, str], section: str = "evaluate") -> None:
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
        return data

    return checked
