"""The three schemas a checkpoint's properties come in: the weightvae zoo schema (`model_properties`), a bare
state_dict (its run from its path: `run_id_of`), and the Model Zoos layout of Schürholt et al. (`params.json`,
`result.json` beside `checkpoint_<epoch>/checkpoints`). Each gives the same flat row fields."""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from weightvae.ingest.loaders import BadFile, first_line

#: A Model Zoos checkpoint, `<model folder>/checkpoint_<epoch>/checkpoints` (`checkpoint_000005` or `checkpoint_5`).
MODELZOO_CHECKPOINT = re.compile(r"(?:.*/)?[^/]+/checkpoint_(?P<epoch>\d+)/checkpoints")


MODELZOO_METRICS = ("train_acc", "test_acc", "test_loss")


def to_json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise BadFile(f"{what} cannot be stored as JSON: {e}") from None


def _float_or_none(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadFile(f"{what} is {value!r}, expected a number or null")
    return float(value)


def zoo_properties(mp: dict[str, Any]) -> dict[str, Any]:
    """Validated `model_properties` of the zoo schema, as flat row fields."""
    for key in ("run_id", "task"):
        if not isinstance(mp.get(key), str) or not mp[key]:
            raise BadFile(f"model_properties[{key!r}] is {mp.get(key)!r}, expected a non-empty string")
    arch = mp.get("architecture")
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str) \
            or not isinstance(arch.get("kwargs", {}), dict):
        raise BadFile(f"model_properties['architecture'] is {arch!r}, expected {{'name': str, 'kwargs': dict}}")
    epoch, seed = mp.get("epoch"), mp.get("seed")
    for key, v in (("epoch", epoch), ("seed", seed)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise BadFile(f"model_properties[{key!r}] is {v!r}, expected an integer or null")
    metrics = mp.get("metrics") or {}
    if not isinstance(metrics, dict):
        raise BadFile(f"model_properties['metrics'] is {metrics!r}, expected a dict")
    return {
        "run_id": mp["run_id"], "task": mp["task"], "architecture": arch["name"],
        "arch_kwargs": to_json(arch.get("kwargs", {}), "architecture kwargs"), "epoch": epoch, "seed": seed,
        "hyperparameters": to_json(mp.get("hyperparameters") or {}, "hyperparameters"),
        **{k: _float_or_none(metrics.get(k), f"metrics[{k!r}]") for k in ("train_acc", "test_acc", "test_loss")},
    }


def run_id_of(rel: str, rule: str) -> str:
    """The run a bare state_dict at `rel` (relative to the zoo folder) belongs to, by `ingest.run_id_from`:
    `auto` the parent folder when the file sits in a sub-folder, else the file stem; `parent` the parent
    folder; `stem` the file stem; anything else a regular expression searched in `rel` (its first group,
    or the whole match). Raises `BadFile` if the rule does not apply to this file."""
    path = PurePosixPath(rel)
    parent = str(path.parent)
    if rule == "stem" or (rule == "auto" and parent == "."):
        return path.stem
    if rule in ("auto", "parent"):
        if parent == ".":
            raise BadFile("sits at the top of the zoo folder, so it has no parent folder to name its run "
                       "(ingest.run_id_from: parent); put each run's checkpoints in a folder of its own")
        return parent
    m = re.search(rule, rel)
    if m is None:
        raise BadFile(f"does not match ingest.run_id_from '{rule}', so its run is unknown")
    run = m.group(1) if m.re.groups else m.group(0)
    if not run:
        raise BadFile(f"gives an empty run id with ingest.run_id_from '{rule}'")
    return run


def plain_properties(rel: str) -> dict[str, Any]:
    """A bare state_dict: the run comes from its path (`run_id_of`, applied by ingest); the rest is unknown."""
    return {"run_id": None, "task": "unknown", "architecture": "unknown", "arch_kwargs": "{}",
            "epoch": None, "seed": None, "hyperparameters": "{}", "train_acc": None, "test_acc": None,
            "test_loss": None}


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BadFile(f"has no {what} in its model folder {path.parent.name!r} (Model Zoos layout: "
                   "<model>/params.json, <model>/result.json, <model>/checkpoint_<epoch>/checkpoints)") from None
    except (OSError, ValueError) as e:
        raise BadFile(f"its model folder's {what} cannot be read: {first_line(e)}") from None


def modelzoo_properties(model_dir: Path, epoch: int) -> dict[str, Any]:
    """Row fields of a Model Zoos checkpoint. run_id: the model folder's name; epoch: the number in
    `checkpoint_<epoch>`; hyperparameters: params.json; architecture and task: params.json's
    `architecture` (a name or {"name", "kwargs"}) and `task`, as given: weightvae names, built in or
    registered in params.yaml's `registry:`; "unknown" when absent (the Model Zoos'
    own `model::type` names their networks, not weightvae's); seed: params.json's `seed`.

    Metrics (train_acc, test_acc, test_loss) come from result.json, one JSON object per line: the
    line whose `training_iteration` equals the epoch (the last such line if a restored trial logged
    it twice; in the Model Zoos, iteration 0 is the evaluation before training, saved as
    checkpoint_000000). A result.json without `training_iteration` is read by position: line
    epoch - 1 (its first line is epoch 1). No matching line, or no result.json: metrics are null.
    A line that is not valid JSON (a run killed mid-write) counts as a line without metrics."""
    cfg = _read_json(model_dir / "params.json", "params.json")
    if not isinstance(cfg, dict):
        raise BadFile(f"its model folder's params.json holds a {type(cfg).__name__}, expected a JSON object")
    arch = cfg.get("architecture", "unknown")
    arch = {"name": arch} if isinstance(arch, str) else arch
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str) or not arch["name"] \
            or not isinstance(arch.get("kwargs", {}), dict):
        raise BadFile(f"params.json['architecture'] is {cfg.get('architecture')!r}, expected a name or "
                   "{'name': str, 'kwargs': dict}")
    task = cfg.get("task", "unknown")
    if not isinstance(task, str) or not task:
        raise BadFile(f"params.json['task'] is {task!r}, expected a non-empty string")
    seed = cfg.get("seed")
    metrics = dict.fromkeys(MODELZOO_METRICS)
    try:
        text = (model_dir / "result.json").read_text()
    except FileNotFoundError:
        text = ""
    except OSError as e:
        raise BadFile(f"its model folder's result.json cannot be read: {first_line(e)}") from None
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
            "arch_kwargs": to_json(arch.get("kwargs", {}), "architecture kwargs"), "epoch": epoch,
            "seed": seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
            "hyperparameters": to_json(cfg, "params.json"), **metrics}
