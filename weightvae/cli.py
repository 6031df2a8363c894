"""The `weightvae` command: a subcommand per pipeline stage (run without DVC), plus tools.

`dvc.yaml` calls the thin scripts in `stages/`, which use the same `add_arguments` and
`run` of each stage's module, so a stage run by DVC and by hand are the same code. `export` and
`import-legacy` are not stages: they move networks out of and into the pipeline's formats.
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
    "encode": ("weightvae.encode", "every model to its latent code, refined against its function (`encode:`)"),
    "controls": ("weightvae.controls", "the same refinement in a PCA and a random subspace: the bar (`controls:`)"),
    "generator": ("weightvae.generator", "train the latent generator: a flow over the codes (`generator:`)"),
    "generation": ("weightvae.generation", "judge generated networks as the critics do (`generation:`)"),
    "reconstruct": ("weightvae.reconstruct", ("decode val/test models from their codes, sample new ones "
                                              "(`reconstruct:`)")),
    "evaluate": ("weightvae.evaluate", "evaluate reconstructions and samples as networks (`evaluate:`)"),
    "probe": ("weightvae.probe", "read accuracy, epoch and hyperparameters off latents and baselines (`probe:`)"),
    "export": ("weightvae.export", "write one original, reconstructed or sampled network as .safetensors or .pt"),
    "import-legacy": ("weightvae.legacy", "convert zoo files of the seed's code (pickled modules) to the zoo schema"),
}
#: tools that are not stages: their `run(args)` returns the exit code
TOOLS = {
    "check-repro": ("weightvae.checkrepro", "reproduce the pipeline in a scratch copy and compare it with dvc.lock"),
    "generate": ("weightvae.generate", "new networks from the latent generator, prompted with an accuracy"),
}


def main(argv: Sequence[str] | None = None) -> int:
    pin()  # before any stage module imports torch or numpy
    parser = argparse.ArgumentParser(
        prog="weightvae",
        description="Generative models of neural-network weights. The first eight subcommands are the stages "
                    "of dvc.yaml; export and import-legacy move networks out of and into its formats.",
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
