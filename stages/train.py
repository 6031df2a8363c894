"""Stage `train`: fit the weight VAE on the ingested shards.

    python stages/train.py --params params.yaml --shards model_data/shards --out model_data/models/vae.ckpt \
        --ckpt-dir model_data/models/lightning --live-dir metrics/train
"""

import argparse
import sys

from weightvae.determinism import pin

pin()  # first: torch and numpy read the pinned CPU settings once, when they load (weightvae/determinism.py)

from weightvae import train
from weightvae.params import run_command

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    train.add_arguments(parser)
    sys.exit(run_command("train", train.run, parser.parse_args()))
