"""Stage `reconstruct`: encode/decode the val and test models, write latents, sample from the prior.

    python stages/reconstruct.py --params params.yaml --shards model_data/shards \
        --model model_data/models/vae.ckpt --out model_data/reconstructions
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
