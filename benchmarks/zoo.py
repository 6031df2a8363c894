"""Zoo training speed: vectorised runs vs a plain one-model-at-a-time loop, in one process.

    python benchmarks/zoo.py [--loop-runs 4] [--group 128] [--skip-build] [--epochs N]

Prints JSON: models/s of both paths (same params, same epochs), their ratio (goal >= 10x),
and the wall time of building the default zoo from params.yaml. Under the zoo stage's CPU settings
(`weightvae.determinism.pin`), so the default zoo built here is the stage's, byte for byte.
"""

import argparse
import json
import tempfile
import time

from weightvae.determinism import pin

pin()  # before torch and numpy load, as in stages/zoo.py

import torch  # noqa: E402

from weightvae.params import load_section
from weightvae.zoo import ZooParams, build_zoo, plan_runs, train_group, train_single


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loop-runs", type=int, default=4)
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--epochs", type=int, help="override zoo.epochs (and keep the checkpoints up to it)")
    args = ap.parse_args()
    p = load_section(args.params, "zoo", ZooParams)
    if args.epochs:
        p = ZooParams(**{**p.__dict__, "epochs": args.epochs,
                         "save_epochs": tuple(e for e in p.save_epochs if e <= args.epochs) or (args.epochs,)})
    runs = plan_runs(ZooParams(**{**p.__dict__, "architectures": {"cnn": max(args.group, args.loop_runs)}}))

    t = time.perf_counter()
    for r in runs[: args.loop_runs]:
        train_single(r, p.save_epochs)
    loop = args.loop_runs / (time.perf_counter() - t)

    t = time.perf_counter()
    train_group(runs[: args.group], p.save_epochs)
    vec = args.group / (time.perf_counter() - t)

    result = {
        "epochs": p.epochs,
        "threads": torch.get_num_threads(),
        "loop_models_per_s": round(loop, 3),
        "vectorised_models_per_s": round(vec, 3),
        "speedup": round(vec / loop, 1),
    }
    if not args.skip_build:
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            summary = build_zoo(p, f"{d}/weights", log=lambda *_: None)
            result["default_zoo_build_seconds"] = round(time.perf_counter() - t, 1)
            result["default_zoo"] = {"runs": summary["runs"], "checkpoints": summary["checkpoints"],
                                     "test_acc": summary["tasks"][p.task]["test_acc"]}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
