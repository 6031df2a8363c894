"""Stage `evaluate`: reconstructed and sampled networks as networks, against baselines.

    python stages/evaluate.py --params params.yaml --shards model_data/shards \
        --recon model_data/reconstructions --metrics metrics/eval.json --table metrics/eval_models.csv \
        --plots metrics/plots --live-dir metrics/train
"""

import argparse
import sys

from weightvae.determinism import pin

pin()  # first: torch and numpy read the pinned CPU settings once, when they load (weightvae/determinism.py)

from weightvae import evaluate
from weightvae.params import run_command

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    evaluate.add_arguments(parser)
    sys.exit(run_command("evaluate", evaluate.run, parser.parse_args()))
