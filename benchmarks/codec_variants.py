"""The function codec's variants, each against the same controls: what was tried for "a codec that learns the zoo".

    python benchmarks/codec_variants.py [--variants default epochs_60 ...] [--models 128] > metrics/codec_variants.json
    python benchmarks/codec_variants.py --tiny     # a smoke run: a 20-run zoo, one-epoch codecs

Each variant is params.yaml's `train:` section with `BASE` and a few settings changed (`VARIANTS`), trained on the
shards (the default zoo's; the train stage's code, in a temporary folder), then judged as `benchmarks/refine_steps.py`
judges the default: agreement with the original on the task's test inputs, on a seeded subset of the test split,
from the encoder's code alone (`encoder`) and after the encode stage's refinement (`refined`, encode's
`refine_steps`). The controls (the same refinement in a PCA and a random subspace of the code's size) are measured
once: they do not depend on the codec. Prints JSON: each variant's overrides, figures and training seconds.
A full run trains every variant on the default zoo: 2 to 4 minutes each on 2 CPU cores.
"""

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from refine_steps import curves, tiny  # noqa: E402 (pins the threads first)

from weightvae.encode import EncodeParams  # noqa: E402
from weightvae.model import VAE  # noqa: E402
from weightvae.params import load_section  # noqa: E402
from weightvae.train import TrainParams, train  # noqa: E402

#: what every variant changes in params.yaml's train: section first: the codec they were tried around (the default
#: until `hidden_512` measured as good at less than half the cost and became it, and before auto-decoding was
#: added), so that the committed metrics/codec_variants.json is what this script prints
BASE = {"hidden": 1024, "autodecode_epochs": 0}
#: name -> what it changes besides
VARIANTS = {
    "default": {},  # the base: params.yaml's train: section as it was when the variants were measured
    "epochs_60": {"max_epochs": 60},  # twice the training
    "hidden_256": {"hidden": 256},  # narrower and wider encoders and decoders
    "hidden_512": {"hidden": 512},  # params.yaml's train.hidden now
    "hidden_2048": {"hidden": 2048},
    "input_noise_0.1": {"input_noise": 0.1},  # the encoder reads noisy weights (it overfits: train KL << val KL)
    "behaviour_weight_1000": {"behaviour_weight": 1000.0},  # the weights' own loss 10x weaker against the function's
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--shards", default=str(ROOT / "model_data/shards"))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--models", type=int, default=128, help="seeded subset of the test split")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="smoke run on a tiny zoo, codecs of one epoch")
    args = ap.parse_args()
    enc = load_section(args.params, "encode", EncodeParams)
    base = replace(load_section(args.params, "train", TrainParams), **BASE)
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            with contextlib.redirect_stdout(sys.stderr):
                args.shards, _ = tiny(Path(tmp), args.params)
            base = replace(base, hidden=32, max_epochs=1, batch_size=16, accelerator="cpu")
            enc = replace(enc, refine_steps=2)
            args.variants, args.models = ["default", "input_noise_0.1"], 4
        print(json.dumps(run(base, enc, args.shards, args.variants, args.models, args.seed, Path(tmp)), indent=2))


def run(base: TrainParams, enc: EncodeParams, shards, variants: list[str], models: int, seed: int,
        tmp: Path) -> dict:
    out = {"models": models, "refine_steps": enc.refine_steps, "variants": {}}
    cwd = os.getcwd()
    for k, name in enumerate(variants):
        folder = tmp / name
        folder.mkdir()
        os.chdir(folder)  # DVCLive must not find this repository's dvc.yaml
        t0 = time.perf_counter()
        try:
            with contextlib.redirect_stdout(sys.stderr):  # stdout is the JSON alone
                train(replace(base, **VARIANTS[name]), shards, folder / "vae.ckpt", folder / "lightning",
                      folder / "live")
        finally:
            os.chdir(cwd)
        seconds = time.perf_counter() - t0
        res = curves(VAE.from_export(str(folder / "vae.ckpt")), shards, enc, base, [0, enc.refine_steps], models,
                     seed, controls=k == 0)
        if k == 0:
            out["latent_size"] = res["latent_size"]
            out["controls"] = {c: res["agreement"][c][-1] for c in ("pca_refined", "random_refined")}
        encoder, refined = res["agreement"]["vae"]
        out["variants"][name] = {"overrides": VARIANTS[name], "encoder": encoder, "refined": refined,
                                 "train_seconds": round(seconds, 1)}
        print(f"{name}: encoder {encoder:.3f}, refined {refined:.3f} ({seconds:.0f} s)", file=sys.stderr, flush=True)
    best = max(out["variants"], key=lambda v: out["variants"][v]["refined"])
    out["best"] = best
    out["best_over_controls"] = {c: out["variants"][best]["refined"] - a for c, a in out["controls"].items()}
    return out


if __name__ == "__main__":
    main()
