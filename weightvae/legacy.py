"""`weightvae import-legacy SRC DST --trust`: zoo files of the code this project replaces -> the safe zoo schema.

That code stores a zoo as `.pt` files that each hold a list of `(model_properties, nn.Module)` pairs,
whole pickled modules. Loading them runs pickle code (the modules' classes, and anything a crafted
file asks for), so `ingest` refuses them and this command loads them only with `--trust`, in a
separate process (`python -m weightvae.legacy`), so nothing the files define or patch reaches the
process that writes the output. That process imports the modules' classes from the user's
environment (plus `--path` folders; `--alias old=new` for code that moved, `__main__` included).

It writes one file per model in the zoo file schema (`{"state_dict", "model_properties"}`, loadable
with `weights_only=True`), `<run_id>_e<epoch:03d>.pt` (or `<run_id>.pt` without an epoch; '/' in a
run id from the properties becomes '__'):

- `run_id`: the properties' `run_id` (a string or integer); else `<source file without suffix>-<index>`,
  the pair's position in its file (e.g. `zoo-0003`, `part2/zoo-0003` for SRC/part2/zoo.pt), each pair
  then its own run;
- `epoch`, `seed`: the properties' own (integers), else null;
- `task`, `architecture` (a name or `{"name", "kwargs"}`): the properties' own, else `--task` /
  `--architecture`, else `unknown` (weight-space metrics only; README "Bring your own zoo");
- `metrics`: `train_acc`, `test_acc`, `test_loss` from the properties (top level or under `metrics`);
- `hyperparameters`: the properties' `hyperparameters` dict; `legacy`: the source file, index, module
  class and every original property (JSON-safe: tensors as numbers or lists, other objects as repr).

Every written file is then read back the way ingest reads it (safe loading, schema, architecture
fit) before the output folder appears. A bad input (not a list, a pair of the wrong shape, a
module whose state_dict holds NaN/Inf, a class that cannot be imported) stops the import with one
line naming the file and item; DST is then not created (written to a temporary folder, renamed
at the end). DST must not exist or be empty.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from weightvae.ingest.loaders import CORRUPT, first_line
from weightvae.io import atomic_path
from weightvae.params import DEBUG_ENV, debugging, print_cause
from weightvae.records import zoo_record

SUFFIXES = (".pt", ".pth")
METRICS = ("train_acc", "test_acc", "test_loss")
TRUST_HINT = ("these files hold pickled nn.Modules (a list of (model_properties, nn.Module) pairs), and loading "
              "them runs code from the files. Pass --trust if you trust where they come from: they are then "
              "loaded in a separate process (importing the modules' classes from your environment; --path, "
              "--alias) and re-saved as state_dicts that ingest reads without running pickle code")


class LegacyError(ValueError):
    """Legacy files that cannot be imported; the message names the file, item and what to do."""


class _Bad(Exception):
    """In the loading process: a bad input; the message is the one line the user sees."""


def source_files(src: Path) -> list[tuple[str, Path]]:
    """(name relative to SRC, path) of each `.pt`/`.pth` file: SRC itself, or every one under it, sorted."""
    if src.is_file():
        return [(src.name, src)]
    if not src.is_dir():
        raise LegacyError(f"{src}: no such file or folder")
    files = sorted((p.relative_to(src).as_posix(), p) for p in src.rglob("*") if p.suffix in SUFFIXES and p.is_file())
    if not files:
        raise LegacyError(f"{src}: no .pt or .pth files found")
    return files


def import_legacy(src: str | Path, dst: str | Path, trust: bool, paths: tuple[str, ...] = (),
                  aliases: tuple[str, ...] = (), task: str | None = None,
                  architecture: str | None = None) -> dict[str, Any]:
    """Convert the legacy zoo at `src` into the folder `dst`; returns a summary. Raises LegacyError."""
    src, dst = Path(src), Path(dst)
    if not trust:
        raise LegacyError(f"{src}: not loaded: {TRUST_HINT}")
    for a in aliases:
        if a.count("=") != 1 or not all(a.split("=")):
            raise LegacyError(f"--alias {a!r}: expected OLD=NEW (e.g. models=mypkg.models)")
    files = source_files(src)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise LegacyError(f"{dst}: exists and is not an empty folder; choose a new DST or remove it")
    with tempfile.TemporaryDirectory(prefix="weightvae-legacy-") as work, atomic_path(dst, is_dir=True) as tmp:
        request = {"files": [[rel, str(p.resolve())] for rel, p in files], "out": str(tmp),
                   "paths": [str(Path(p).resolve()) for p in paths], "aliases": [a.split("=") for a in aliases],
                   "task": task, "architecture": architecture, "result": str(Path(work) / "result.json")}
        (Path(work) / "request.json").write_text(json.dumps(request))
        proc = subprocess.run([sys.executable, "-m", "weightvae.legacy", str(Path(work) / "request.json")],
                              check=False, capture_output=True, text=True)
        if debugging():
            sys.stderr.write(proc.stderr)  # the loading process's tracebacks (print_cause), behind its one line
        result_path = Path(request["result"])
        if not result_path.exists():
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise LegacyError(f"{src}: the loading process failed (exit code {proc.returncode}): {last}")
        result = json.loads(result_path.read_text())
        if result["error"]:
            raise LegacyError(result["error"])
        _verify(tmp, result["written"])
    return {"files": len(files), "models": len(result["written"]),
            "runs": len({r for r, _ in result["runs"]}), "run_ids_from": result["run_ids_from"]}


def _verify(folder: Path, written: list[str]) -> None:
    """Read every written file the way ingest does; a file ingest would refuse stops the import."""
    from weightvae.ingest import Rejected, inspect_file

    for rel in written:
        res = inspect_file(folder, rel, "weightvae")
        if isinstance(res, Rejected):
            raise LegacyError(f"converted {rel}: {res.reason}")


# ----------------------------------------------------------------------------- the loading process


def _plain(value: Any, depth: int = 0) -> Any:
    """A JSON-safe copy of a legacy property value (it is stored where only plain values may go)."""
    import torch

    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if depth > 20:
        return repr(value)[:200]
    if isinstance(value, dict):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):  # torch.Size too
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist() if value.numel() <= 4096 else repr(value)[:200]
    if hasattr(value, "item") and hasattr(value, "dtype"):  # numpy scalars
        return value.item()
    return repr(value)[:200]


def _number(value: Any) -> float | None:
    value = _plain(value)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _int(value: Any) -> int | None:
    value = _plain(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _properties(mp: dict[str, Any], rel: str, index: int, module: Any, task: str | None,
                architecture: str | None) -> tuple[dict[str, Any], bool]:
    """`zoo_record`'s arguments but the state_dict for one legacy pair, and whether the run id came from the
    properties."""
    run_id = mp.get("run_id")
    from_props = isinstance(run_id, (str, int)) and not isinstance(run_id, bool) and str(run_id) != ""
    run_id = str(run_id) if from_props else f"{rel.rsplit('.', 1)[0]}-{index:04d}"
    arch = mp.get("architecture", architecture or "unknown")
    arch = {"name": arch, "kwargs": {}} if isinstance(arch, str) else arch
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str) or not arch["name"] \
            or not isinstance(arch.get("kwargs", {}), dict):
        raise _Bad(f"model_properties['architecture'] is {mp.get('architecture')!r}, expected a name or "
                         "{'name': str, 'kwargs': dict}")
    t = mp.get("task", task or "unknown")
    if not isinstance(t, str) or not t:
        raise _Bad(f"model_properties['task'] is {t!r}, expected a non-empty string")
    metrics = mp.get("metrics") if isinstance(mp.get("metrics"), dict) else {}
    hp = mp.get("hyperparameters")
    return {
        "run_id": run_id, "task": t, "architecture": arch["name"], "kwargs": _plain(arch.get("kwargs", {})),
        "seed": _int(mp.get("seed")), "epoch": _int(mp.get("epoch")),
        "hyperparameters": _plain(hp) if isinstance(hp, dict) else {},
        "metrics": {k: _number(metrics.get(k, mp.get(k))) for k in METRICS},
        "legacy": {"file": rel, "index": index, "class": f"{type(module).__module__}.{type(module).__qualname__}",
                   "properties": _plain(mp)},
    }, from_props


def _state_dict(module: Any) -> dict[str, Any]:
    """The module's state_dict as plain, contiguous CPU tensors; refuses non-tensor or non-finite entries."""
    import torch

    sd = {}
    for k, v in module.state_dict().items():
        if not isinstance(v, torch.Tensor):
            raise _Bad(f"its state_dict entry {k!r} is a {type(v).__name__}, not a tensor")
        sd[k] = v.detach().to("cpu").clone().contiguous()
    bad = [f"{k!r} ({int(torch.isnan(v).sum())} NaN, {int(torch.isinf(v).sum())} Inf)" for k, v in sd.items()
           if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise _Bad(f"the module's state_dict has non-finite values in {', '.join(bad)}")
    if not sd:
        raise _Bad("the module has an empty state_dict")
    return sd


def _load(path: str) -> Any:
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=False)  # --trust: the user vouched for it


def _convert(request: dict[str, Any]) -> dict[str, Any]:
    """In the loading process: every pair of every file -> one zoo-schema file in request['out']."""
    import torch
    from torch import nn

    written, runs, names, from_props = [], [], {}, []
    for rel, path in request["files"]:
        try:
            obj = _load(path)
        except (ModuleNotFoundError, AttributeError, ImportError) as e:
            raise _Bad(f"{rel}: a pickled module's class cannot be imported ({first_line(e)}); make its code "
                             "importable (--path DIR, the folder holding it) or map it (--alias OLD=NEW)") from e
        except CORRUPT as e:  # what a truncated or corrupt file raises
            raise _Bad(f"{rel}: cannot be loaded (truncated or corrupt?): {first_line(e)}") from e
        except Exception as e:  # the process (memory) or the file's own code failed, not its bytes: not "corrupt"
            raise _Bad(f"{rel}: loading it failed with {first_line(e)}, which is no sign of a corrupt file; "
                       f"{DEBUG_ENV}=1 shows the traceback") from e
        if not isinstance(obj, (list, tuple)):
            raise _Bad(f"{rel}: holds a {type(obj).__name__}, expected a list of (model_properties, nn.Module) "
                             "pairs; a state_dict or a file in the zoo file schema needs no import: ingest reads it")
        if not obj:
            raise _Bad(f"{rel}: holds an empty list, no (model_properties, nn.Module) pairs")
        for i, item in enumerate(obj):
            where = f"{rel}: item {i}"
            if not isinstance(item, (list, tuple)) or len(item) != 2:
                what = f"a {type(item).__name__} of {len(item)} items" if isinstance(item, (list, tuple)) else \
                    f"a {type(item).__name__}"
                raise _Bad(f"{where} is {what}, expected a (model_properties dict, nn.Module) pair")
            mp, module = item
            if not isinstance(mp, dict) or not isinstance(module, nn.Module):
                raise _Bad(f"{where} is a pair of ({type(mp).__name__}, {type(module).__name__}), expected "
                                 "(model_properties dict, nn.Module)")
            try:
                props, own_id = _properties(mp, rel, i, module, request["task"], request["architecture"])
                sd = _state_dict(module)
            except _Bad as e:
                raise _Bad(f"{where}: {e}") from e
            epoch = props["epoch"]
            # file+index ids keep SRC's sub-folders (so ingest's id of an epoch-less model is its run id);
            # an id from the properties never makes a folder (nor leaves DST)
            stem = props["run_id"] if not own_id else props["run_id"].replace("/", "__")
            name = stem + (f"_e{epoch:03d}" if epoch is not None else "") + ".pt"
            if name in names:
                raise _Bad(f"{where}: run {props['run_id']!r} epoch {epoch} again (first: {names[name]}); "
                                 "run ids and epochs must be unique")
            names[name] = f"{rel} item {i}"
            (Path(request["out"]) / name).parent.mkdir(parents=True, exist_ok=True)
            torch.save(zoo_record(sd, **props), Path(request["out"]) / name)
            written.append(name)
            runs.append((props["run_id"], epoch))
            from_props.append(own_id)
    source = "properties" if all(from_props) else "file+index" if not any(from_props) else "mixed"
    return {"error": None, "written": written, "runs": runs, "run_ids_from": source}


def _worker(request_path: str) -> int:
    request = json.loads(Path(request_path).read_text())
    for p in reversed(request["paths"]):
        sys.path.insert(0, p)
    try:
        for old, new in request["aliases"]:
            try:
                sys.modules[old] = importlib.import_module(new)
            except Exception as e:  # the user's module may fail in any way: its error, in one line
                raise _Bad(f"--alias {old}={new}: module {new!r} cannot be imported ({first_line(e)})") from e
        result = _convert(request)
    except _Bad as e:
        print_cause(e)
        result = {"error": str(e)}
    except Exception as e:  # noqa: BLE001 - one line to the parent, not the file's fault; the traceback with DEBUG
        print_cause(e)
        result = {"error": f"unexpected error while loading: {first_line(e)}"}
    Path(request["result"]).write_text(json.dumps(result))
    return 0


# ----------------------------------------------------------------------------- the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="a legacy .pt file, or a folder of them (searched recursively)")
    parser.add_argument("dst", help="output folder (new or empty): one zoo-schema .pt file per model")
    parser.add_argument("--trust", action="store_true",
                        help="load the files although that runs pickle code from them (required)")
    parser.add_argument("--path", action="append", default=[], metavar="DIR",
                        help="folder to import the modules' classes from (repeatable)")
    parser.add_argument("--alias", action="append", default=[], metavar="OLD=NEW",
                        help="a class pickled under module OLD is looked up in module NEW (repeatable)")
    parser.add_argument("--task", default=None, help="task for models whose properties name none")
    parser.add_argument("--architecture", default=None, help="architecture for models whose properties name none")


def run(args: argparse.Namespace) -> None:
    try:
        s = import_legacy(args.src, args.dst, args.trust, tuple(args.path), tuple(args.alias), args.task,
                          args.architecture)
    except LegacyError as e:
        print_cause(e)
        print(f"weightvae import-legacy: {e}", file=sys.stderr)
        raise SystemExit(2 if not args.trust else 1) from None
    print(f"import-legacy: {s['models']} models ({s['runs']} runs; run ids from {s['run_ids_from']}) "
          f"from {s['files']} files -> {args.dst}; next: point ingest.zoo_dir at it")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m weightvae.legacy REQUEST.json (the loading process of `weightvae import-legacy`)")
    sys.exit(_worker(sys.argv[1]))
