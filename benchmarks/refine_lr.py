"""Refinement's learning rate, chosen on the val split: agreement after `encode.refine_steps` at each rate.

    python benchmarks/refine_lr.py [--lrs 0.05 0.1 0.2 0.3 0.5] [--models 128] > metrics/refine_lr.json
    python benchmarks/refine_lr.py --tiny     # a smoke run: a 20-run zoo, a codec trained one epoch, 2 steps

On a seeded subset of the *val* split (never the test split evaluate reports), each network's code is refined
from the trained codec's encoder with the encode stage's refinement (steps, probe inputs, seed from
params.yaml) at each first learning rate of the cosine schedule, and the decoded networks' agreement with the
originals on the task's test inputs is averaged (`benchmarks/refine_steps.py`'s measure). What
`encode.refine_lr` is chosen from: the best rate. Prints JSON.
"""

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from weightvae.determinism import pin  # noqa: E402

pin()

from refine_steps import arguments, curves, tiny_inputs  # noqa: E402

from weightvae.encode import EncodeParams  # noqa: E402
from weightvae.model import VAE  # noqa: E402
from weightvae.params import load_section  # noqa: E402
from weightvae.train import TrainParams  # noqa: E402


def main() -> None:
    ap = arguments(__doc__.splitlines()[0], "val")
    ap.add_argument("--lrs", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3, 0.5])
    args = ap.parse_args()
    enc = load_section(args.params, "encode", EncodeParams)
    if args.tiny:
        with tiny_inputs(args):
            args.lrs = [0.1, 0.2]
            return run(args, replace(enc, refine_steps=2))
    return run(args, enc)


def run(args: argparse.Namespace, enc: EncodeParams) -> None:
    t0 = time.perf_counter()
    train_p = load_section(args.params, "train", TrainParams)
    model = VAE.from_export(args.model)
    out = {"split": "val", "models": args.models, "refine_steps": enc.refine_steps, "probe_batch": enc.probe_batch,
           "lrs": args.lrs, "agreement": []}
    for lr in args.lrs:
        c = curves(model, args.shards, replace(enc, refine_lr=lr), train_p, [enc.refine_steps], args.models,
                   args.seed, controls=False, split="val")
        out["agreement"].append(c["agreement"]["vae"][0])
        print(f"refine_lr {lr}: agreement {out['agreement'][-1]:.4f}", file=sys.stderr, flush=True)
    out["best"] = args.lrs[max(range(len(args.lrs)), key=out["agreement"].__getitem__)]
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
