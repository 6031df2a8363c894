"""The `weightvae` command: each subcommand runs one pipeline stage without DVC.

`dvc.yaml` calls the thin scripts in `stages/`, which use the same `add_arguments` and
`run` of each stage's module, so a stage run by DVC and by hand are the same code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from weightvae.determinism import pin
from weightvae.params import run_command

#: subcommand -> (module with `add_arguments(parser)` and `run(args)`, help)
COMMANDS = {
    "zoo": ("weightvae.zoo", "train the default model zoo (params section `zoo:`)"),
    "ingest": ("weightvae.ingest", "zoo folder -> Parquet + tensor shards with leak-free splits (`ingest:`)"),
    "train": ("weightvae.train", "train the weight VAE with Lightning (`train:`)"),
    "reconstruct": ("weightvae.reconstruct", "reconstruct val/test models and sample new ones (`reconstruct:`)"),
    "evaluate": ("weightvae.evaluate", "evaluate reconstructions and samples as networks (`evaluate:`)"),
}
#: tools that are not stages: their `run(args)` returns the exit code
TOOLS = {
    "check-repro": ("weightvae.checkrepro", "reproduce the pipeline in a scratch copy and compare it with dvc.lock"),
}


def main(argv: Sequence[str] | None = None) -> int:
    pin()  # before any stage module imports torch or numpy
    parser = argparse.ArgumentParser(
        prog="weightvae",
        description="Generative models of neural-network weights. Each subcommand is one stage of dvc.yaml.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_) in {**COMMANDS, **TOOLS}.items():
        mod = importlib.import_module(module)
        mod.add_arguments(sub.add_parser(name, help=help_, description=(mod.__doc__ or help_).split("\n\n")[0]))
    args = parser.parse_args(argv)
    if args.command in TOOLS:
        return importlib.import_module(TOOLS[args.command][0]).run(args)
    return run_command(args.command, importlib.import_module(COMMANDS[args.command][0]).run, args)


if __name__ == "__main__":
    sys.exit(main())
