"""Stage `zoo`: train the default model zoo.

    python stages/zoo.py --params params.yaml --out model_data/weights --metrics metrics/zoo.json
"""

import argparse
import sys

from weightvae.determinism import pin

pin()  # first: torch and numpy read the pinned CPU settings once, when they load (weightvae/determinism.py)

from weightvae import zoo
from weightvae.params import run_command

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    zoo.add_arguments(parser)
    sys.exit(run_command("zoo", zoo.run, parser.parse_args()))
