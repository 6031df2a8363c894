"""Stage `generator`: train the latent generator, a flow over the training split's codes conditioned on accuracy.

    python stages/generator.py --params params.yaml --shards model_data/shards --latents model_data/latents.parquet \
        --out model_data/models/generator.pt --metrics metrics/generator.json
"""

import argparse
import sys

from weightvae.determinism import pin

pin()  # first: torch and numpy read the pinned CPU settings once, when they load (weightvae/determinism.py)

from weightvae import generator
from weightvae.params import run_command

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    generator.add_arguments(parser)
    sys.exit(run_command("generator", generator.run, parser.parse_args()))
