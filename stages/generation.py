"""Stage `generation`: judge generated networks as the field's critics do, against fresh runs and baselines.

    python stages/generation.py --params params.yaml --shards model_data/shards --model model_data/models/vae.ckpt \
        --generator model_data/models/generator.pt --latents model_data/latents.parquet \
        --metrics metrics/generate.json \
        --plot metrics/plots/generation.png
"""

import argparse
import sys

from weightvae.determinism import pin

pin()  # first: torch and numpy read the pinned CPU settings once, when they load (weightvae/determinism.py)

from weightvae import generation
from weightvae.params import run_command

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    generation.add_arguments(parser)
    sys.exit(run_command("generation", generation.run, parser.parse_args()))
