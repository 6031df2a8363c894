"""Stage `encode`: every model of the shards to its latent code, refined against its function.

    python stages/encode.py --params params.yaml --shards model_data/shards --model model_data/models/vae.ckpt \
        --out model_data/latents.parquet --metrics metrics/encode.json
"""

import argparse
import sys

from weightvae.determinism import pin

pin()  # first: torch and numpy read the pinned CPU settings once, when they load (weightvae/determinism.py)

from weightvae import encode
from weightvae.params import run_command

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    encode.add_arguments(parser)
    sys.exit(run_command("encode", encode.run, parser.parse_args()))
