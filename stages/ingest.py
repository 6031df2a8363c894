"""Stage `ingest`: a zoo folder -> split, padded, memory-mappable shards.

    python stages/ingest.py --params params.yaml --out model_data/shards --metrics metrics/ingest.json
"""

import argparse
import sys

from weightvae.determinism import pin

pin()  # first: torch and numpy read the pinned CPU settings once, when they load (weightvae/determinism.py)

from weightvae import ingest
from weightvae.params import run_command

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ingest.add_arguments(parser)
    sys.exit(run_command("ingest", ingest.run, parser.parse_args()))
