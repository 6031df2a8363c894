"""`weightvae generate`: new networks from the latent generator, prompted with the accuracy they should reach.

Draws `-n` codes of one (task, architecture, layout) group from the generator (`weightvae.generator`, the stage
`generator`), prompted with `--accuracy` at `generator.prompt_temperature` (left out: each network's accuracy
drawn from the training runs' final checkpoints, as a fresh run's would be, at `generator.temperature`), decodes
them with the codec (`train`) and writes each network twice, into a new folder `--out` (written aside, then
renamed into place; an existing folder that is not empty is refused, never replaced). A prompted network is the
nearest to its prompt of `generator.select_from` draws, by its accuracy on the task's training inputs
(`prompted_codes`).
    <out>/flow-<task>-<arch>-<layout>-s<seed>-<i>.pt   zoo file schema plus `sampler: "flow"`, `prompted_accuracy`
                                                        (asked for or drawn), `guidance`, `seed`, `select_from`
    <out>/<same name>.safetensors                      the same tensors and properties (`weightvae.tensorfile`)
`weightvae ingest` reads either kind back (the folder as it is holds every network twice: ingest one suffix, or
set `ingest.on_error: skip`). A joint zoo has several groups: choose one with `--group task/arch/layout` or
`--task`/`--architecture`. A prompt must lie in [0, 1] and within `MARGIN` of the accuracies the group was
trained on; beyond the range, up to `MARGIN` (above the best: the experiment of `generation.above_best`), it only
warns, since the generator then extrapolates.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch

from weightvae.generator import GeneratorParams, LatentGenerator, group_name, prompted_codes, zoo_prompts
from weightvae.params import StageError, add_inputs, load_section, run_command
from weightvae.progress import Progress
from weightvae.records import shard_record
from weightvae.tensorfile import save_network

MARGIN = 0.05  # how far beyond a group's trained accuracies a prompt may go
BATCH = 256  # codes decoded together


class GenerateError(StageError):
    """A request generate cannot serve; the message names the value and what to do."""


def choose_group(groups: list[str], group: str | None = None, task: str | None = None,
                 arch: str | None = None) -> str:
    """The one name of `groups` that fits `group` (`task[/arch[/layout]]`; a layout's prefix is enough), `task`
    and `arch`; with none of them, the only group there is."""
    want = group.split("/", 2) if group is not None else []

    def fits(name: str) -> bool:
        have = name.split("/", 2)
        return (want[:2] == have[:len(want[:2])] and (len(want) < 3 or have[2].startswith(want[2][:8]))
                and task in (None, have[0]) and arch in (None, have[1]))

    found = [g for g in groups if fits(g)]
    asked = ", ".join(f"{flag} {v!r}" for flag, v in (("--group", group), ("--task", task), ("--architecture", arch))
                      if v is not None)
    if not found:
        raise GenerateError(f"no group of the generator fits {asked}; choose one of {groups} "
                            "(--group task/arch/layout)")
    if len(found) > 1:
        raise GenerateError(f"{len(found)} groups fit {asked or 'no choice'}: {found}; choose one with --group "
                            "task/arch/layout")
    return found[0]


def check_accuracy(acc: float | None, group: str, ranges: dict[str, tuple[float, float]]) -> None:
    """Refuse a prompt more than `MARGIN` outside the accuracies `group` was trained on; warn beyond them."""
    if acc is None:
        return
    if group not in ranges:
        raise GenerateError(f"group {group} was trained without recorded accuracies; leave out --accuracy")
    lo, hi = ranges[group]
    if not lo - MARGIN <= acc <= hi + MARGIN:
        raise GenerateError(f"--accuracy {acc:g} is far outside {group}'s training range [{lo:.4f}, {hi:.4f}]; "
                            f"prompt within it, or at most {MARGIN:g} beyond it")
    if not lo <= acc <= hi:
        print(f"weightvae generate: warning: --accuracy {acc:g} is outside {group}'s training range [{lo:.4f}, "
              f"{hi:.4f}]; the generator extrapolates there", file=sys.stderr)


def generate(args: argparse.Namespace) -> int:
    """Write the networks (see the module docstring); returns how many."""
    out, shards, acc = Path(args.out), Path(args.shards), args.accuracy
    if args.n < 1 or (args.steps is not None and args.steps < 1) or (args.guidance or 0) < 0:
        raise GenerateError(f"-n {args.n}, --steps {args.steps}, --guidance {args.guidance}: need n and steps >= 1, "
                            "guidance >= 0")
    if acc is not None and not 0 <= acc <= 1:  # NaN too; before any file is read
        raise GenerateError(f"--accuracy {acc:g} is not an accuracy; give one in [0, 1]")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GenerateError(f"{out}: exists and is not an empty folder; choose a new --out (nothing was written)")
    flow = LatentGenerator.load(args.generator)  # missing: says `dvc repro generator`
    group = choose_group(flow.groups, args.group, args.task, args.architecture)
    check_accuracy(acc, group, flow.accuracy_range)
    for path, what, stage in ((args.model, "codec", "train"), (shards / "models.parquet", "ingested zoo", "ingest")):
        if not Path(path).exists():
            raise GenerateError(f"{path}: no {what} here; make it first (dvc repro {stage})")
    from weightvae import metrics as M
    from weightvae.data import split_properties
    from weightvae.model import VAE
    from weightvae.tasks import get_task

    vae = VAE.from_export(str(args.model))
    props = next((r for r in split_properties(shards, "train").values()
                  if group_name(r["task"], r["architecture"], r["layout_id"]) == group), None)
    if props is None:
        raise GenerateError(f"{shards}: no training network of group {group}; use the shards the generator was "
                            "trained on (--shards)")
    task, arch, lid = props["task"], props["architecture"], props["layout_id"]
    data = get_task(task)  # a prompted network is chosen by its accuracy on the task's training inputs
    if vae.latent_size(lid) != flow.dim:
        raise GenerateError(f"the generator's codes have {flow.dim} values, the codec's {vae.latent_size(lid)}: "
                            "they are of different runs; retrain the generator (dvc repro generator)")
    p = load_section(args.params, "generator", GeneratorParams)
    guidance = p.guidance if args.guidance is None else args.guidance
    steps = p.sample_steps if args.steps is None else args.steps
    gen = torch.Generator().manual_seed(args.seed)
    if acc is None:  # as a fresh run: an accuracy drawn from the zoo's final checkpoints (none recorded: unprompted)
        table = pd.read_parquet(shards / "models.parquet")
        prompts = zoo_prompts(table[(table.split == "train") & (table.task == task) & (table.architecture == arch)
                                    & (table.layout_id == lid)], args.n, gen)
    else:
        prompts = torch.full((args.n,), acc)

    def state_dicts(z: torch.Tensor) -> list:
        return vae.reconstruct_to_model_weights(vae.decode(z, [lid] * len(z)), [props] * len(z))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp", dir=out.parent))  # as atomic_path
    try:
        (folder := tmp / out.name).mkdir()
        with Progress("generate", total=args.n, unit="networks") as bar, torch.no_grad():
            if acc is None:
                z = flow.sample(group, args.n, prompts, guidance, steps, gen, p.temperature)
            else:
                z = prompted_codes(flow, group, prompts, p, guidance, steps, gen,
                                   lambda c: M.accuracy(M.predictions(arch, props.get("arch_kwargs"), state_dicts(c),
                                                                      data.x_train), data.y_train))
            for start in range(0, args.n, BATCH):
                sds = state_dicts(z[start:start + BATCH])
                for i, sd in enumerate(sds, start):
                    sid = f"flow-{task}-{arch}-{lid[:8]}-s{args.seed}-{i:04d}"
                    rec = shard_record(sd, {**props, "run_id": sid, "epoch": None}, sampler="flow",
                                       prompted_accuracy=None if prompts is None else float(prompts[i]),
                                       guidance=guidance, seed=args.seed,
                                       select_from=1 if acc is None else p.select_from)
                    save_network(rec, folder, sid)
                bar.update(len(sds))
        try:  # unlike atomic_path, never replaces a folder that filled up meanwhile: rename(2) refuses it
            os.rename(folder, out)
        except OSError as e:
            raise GenerateError(f"{out}: could not be put in place ({e.strerror}); nothing was written") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    prompt = "accuracies drawn from the zoo's final runs" if acc is None else f"prompted with accuracy {acc:g}"
    print(f"generate: {args.n} networks of {group}, {prompt} -> {out}")
    return args.n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--accuracy", type=float, default=None,
                        help="prompted accuracy (default: each drawn from the zoo's final runs)")
    parser.add_argument("-n", type=int, default=16, help="networks to write (default: %(default)s)")
    parser.add_argument("--out", required=True, help="new folder for the networks (absent or empty)")
    parser.add_argument("--group", default=None, help="task/architecture/layout (needed when there are several)")
    parser.add_argument("--task", default=None, help="choose the group by task ...")
    parser.add_argument("--architecture", default=None, help="... and architecture")
    add_inputs(parser, "params", "shards", "model", "generator")
    parser.add_argument("--seed", type=int, default=0, help="of the noise the codes start from (default: 0)")
    parser.add_argument("--guidance", type=float, default=None, help="default: generator.guidance of --params")
    parser.add_argument("--steps", type=int, default=None, help="Euler steps; default: generator.sample_steps")


def run(args: argparse.Namespace) -> int:
    """The tool's entry point: a StageError is one line on stderr and exit code 1 (a bad params file: 2)."""
    from weightvae.registry import register_params

    def main(a: argparse.Namespace) -> None:
        register_params(a.params)  # the user's architectures and tasks (`registry:`)
        generate(a)

    return run_command("generate", main, args)
