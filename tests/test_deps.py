"""Every `weightvae` module a stage imports, at top level or inside a function, is in that stage's
`deps` in dvc.yaml; otherwise editing it would not rerun the stage and DVC would serve stale outputs."""

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _imports(path: Path) -> set[str]:
    """Modules named by every import statement of a file (inside functions too), absolute names."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}  # `from pkg import module`
    return {m for m in out if m.split(".")[0] == "weightvae"}


def _files(module: str) -> list[Path]:
    base = ROOT.joinpath(*module.split("."))
    return [p for p in (base.with_suffix(".py"), base / "__init__.py") if p.exists()]


def imported_files(script: Path) -> set[str]:
    """The repo files a script loads, transitively: its `weightvae` modules and their packages' `__init__`."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        for m in _imports(f):
            parts = m.split(".")
            for i in range(1, len(parts) + 1):
                todo += _files(".".join(parts[:i]))
    return {p.relative_to(ROOT).as_posix() for p in seen}


def _script(stage: dict) -> Path:
    return ROOT / next(w for w in stage["cmd"].split() if w.endswith(".py"))


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_imported_module_is_a_dep(name):
    stage = STAGES[name]
    deps = {str(d).rstrip("/") for d in stage["deps"]}
    missing = sorted(f for f in imported_files(_script(stage)) if f not in deps)
    assert not missing, f"stage {name!r} imports {missing}, which dvc.yaml does not list in its deps"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_no_stage_depends_on_a_module_it_does_not_import(name):
    """Precise deps: a stage reruns only when code it runs changes (probe and reconstruct read the latents table
    through `weightvae.latents`, so a codec edit does not rerun them)."""
    stage = STAGES[name]
    modules = {str(d) for d in stage["deps"] if str(d).startswith("weightvae/") and str(d).endswith(".py")}
    extra = sorted(modules - imported_files(_script(stage)))
    assert not extra, f"stage {name!r} lists {extra} in its deps in dvc.yaml but does not import them"


def test_the_import_walk_sees_imports_inside_functions():
    """`train` imports `weightvae.data` only inside `train()`: the walk must still find it."""
    found = imported_files(ROOT / "stages" / "train.py")
    assert {"weightvae/train.py", "weightvae/data.py", "weightvae/model.py", "weightvae/__init__.py"} <= found


def test_the_registered_user_modules_are_in_the_deps_of_every_stage_that_reads_the_registry():
    """params.yaml's `registry:` modules inside the repository are files DVC must track: editing one reruns
    the stages that list `registry` in their params (README, "Bring your own zoo")."""
    from weightvae.registry import load_params, undeclared_deps

    assert undeclared_deps(STAGES, load_params(ROOT / "params.yaml"), ROOT) == []


def test_a_user_module_missing_from_a_stages_deps_is_named(tmp_path):
    """As a user declares one: `registry:` names `tests.user_nets`, and its file goes into each such stage's deps."""
    import copy

    from weightvae.registry import RegistryParams, module_file, undeclared_deps

    reg = RegistryParams(architectures={"gelu_cnn": "tests.user_nets:build_gelu_cnn"},
                         tasks={"wine": "tests.user_nets:load_wine", "elsewhere": "yaml:safe_load"})
    assert module_file("tests.user_nets:load_wine", ROOT) == "tests/user_nets.py"
    assert module_file("yaml:safe_load", ROOT) is None  # installed: not a file of this repository
    reading = sorted(n for n, s in STAGES.items() if "registry" in s.get("params", []))
    assert reading == ["controls", "encode", "evaluate", "generation", "ingest", "probe", "reconstruct", "train"]
    assert undeclared_deps(STAGES, reg, ROOT) == [
        f"stage {n!r} reads `registry` but its deps lack tests/user_nets.py: add it to dvc.yaml" for n in reading]
    stages = copy.deepcopy(STAGES)
    for n in reading:
        stages[n]["deps"].append("tests/user_nets.py")
    assert undeclared_deps(stages, reg, ROOT) == []
    stages["probe"]["deps"].remove("tests/user_nets.py")
    assert undeclared_deps(stages, reg, ROOT) == [
        "stage 'probe' reads `registry` but its deps lack tests/user_nets.py: add it to dvc.yaml"]


def test_the_commands_default_inputs_are_where_dvc_yaml_puts_them():
    """`weightvae <stage>` run by hand reads what `dvc repro` gave it: every `--<name> PATH` of a stage's cmd for a
    name of `weightvae.params.INPUTS` is that input's default."""
    import itertools
    import shlex

    from weightvae.params import INPUTS

    seen = set()
    for name, stage in STAGES.items():
        words = shlex.split(stage["cmd"])
        for flag, value in itertools.pairwise(words):
            if flag.startswith("--") and flag[2:] in INPUTS:
                assert value == INPUTS[flag[2:]][0], (name, flag, value)
                seen.add(flag[2:])
    assert seen == set(INPUTS)  # each is read by some stage
