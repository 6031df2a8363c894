"""Stage `probe`: what the latent knows: accuracy, training state and hyperparameters read off each representation.

    python stages/probe.py --params params.yaml --shards model_data/shards --latents model_data/latents.parquet \
        --metrics metrics/probe.json --table metrics/probe_models.csv --plot metrics/plots/probe_r2.png
"""

import argparse
import sys

from weightvae.determinism import pin

pin()  # first: torch and numpy read the pinned CPU settings once, when they load (weightvae/determinism.py)

from weightvae import probe
from weightvae.params import run_command

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    probe.add_arguments(parser)
    sys.exit(run_command("probe", probe.run, parser.parse_args()))
