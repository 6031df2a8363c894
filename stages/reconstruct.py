"""Stage `reconstruct`: decode the val and test models from their codes, and sample new networks.

    python stages/reconstruct.py --params params.yaml --shards model_data/shards \
        --model model_data/models/vae.ckpt --latents model_data/latents.parquet --out model_data/reconstructions
"""

import argparse
import sys

from weightvae.determinism import pin

pin()  # first: torch and numpy read the pinned CPU settings once, when they load (weightvae/determinism.py)

from weightvae import reconstruct
from weightvae.params import run_command

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    reconstruct.add_arguments(parser)
    sys.exit(run_command("reconstruct", reconstruct.run, parser.parse_args()))
