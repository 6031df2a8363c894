"""Stage `controls`: the same latent refinement in a PCA and a random subspace, the bar a learned codec must beat.

    python stages/controls.py --params params.yaml --shards model_data/shards --out model_data/controls \
        --metrics metrics/controls.json
"""

import argparse
import sys

from weightvae.determinism import pin

pin()  # first: torch and numpy read the pinned CPU settings once, when they load (weightvae/determinism.py)

from weightvae import controls
from weightvae.params import run_command

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    controls.add_arguments(parser)
    sys.exit(run_command("controls", controls.run, parser.parse_args()))
