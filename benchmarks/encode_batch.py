"""The encode stage's speed against how many networks it refines together (`encode.batch_size`).

    python benchmarks/encode_batch.py [--batch-sizes 128 256 512] [--split train] > metrics/encode_batch.json
    python benchmarks/encode_batch.py --tiny     # a smoke run: a 20-run zoo, a codec trained one epoch, 2 steps

Runs the encode stage's own `encode()` (every network of `--split`, the refinement params of params.yaml, each
network from its encoder's code: `encode.fitted_refine_steps` null) once per batch size, one after another in
this process, and reports the seconds, networks/s, each speed over the first size's (the baseline of the same
run), the largest and the mean difference of the codes from the first size's, and the mean behavioural KL after
refinement. A code does not depend on which networks share its batch (tests/test_refine.py), but the size of a
matrix product can change how it rounds, and 200 Adam steps can grow a last-bit difference in a few codes: the
differences say how much. Whole-network batches hold at most 1 M
weights (`weightvae.data.rows_per_batch`): `rows` is the batch each size gave. Prints JSON.
"""

import argparse
import contextlib
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from weightvae.determinism import pin  # noqa: E402

pin()

from refine_steps import arguments, tiny_inputs  # noqa: E402  (pins again: before numpy)

import numpy as np  # noqa: E402

from weightvae.data import rows_per_batch  # noqa: E402
from weightvae.encode import EncodeParams, encode  # noqa: E402
from weightvae.latents import read_latents  # noqa: E402
from weightvae.model import VAE  # noqa: E402
from weightvae.params import load_section  # noqa: E402


def main() -> None:
    ap = arguments(__doc__.splitlines()[0], None)  # every network of --split: no subset
    ap.add_argument("--split", default="train", choices=["train", "val", "test"])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 256, 512])
    args = ap.parse_args()
    enc = load_section(args.params, "encode", EncodeParams)
    if args.tiny:
        with tiny_inputs(args):
            args.batch_sizes = [2, 4]
            return run(args, replace(enc, refine_steps=2))
    return run(args, enc)


def run(args: argparse.Namespace, enc: EncodeParams) -> None:
    max_len = VAE.from_export(args.model).cfg.max_len
    out = {"split": args.split, "refine_steps": enc.refine_steps, "probe_batch": enc.probe_batch, "sizes": []}
    first = None
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.batch_sizes:
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(sys.stderr):  # the stage's progress lines: stdout is the JSON
                # every network refined from its encoder's code, the training split's too (not its fitted codes)
                m = encode(replace(enc, splits=(args.split,), batch_size=size, fitted_refine_steps=None), args.shards,
                           args.model, Path(tmp) / f"{size}.parquet")
            seconds = time.perf_counter() - t0
            rows, z = read_latents(Path(tmp) / f"{size}.parquet", args.split)
            order = np.argsort([r["id"] for r in rows])
            z = z.numpy()[order]
            first = z if first is None else first
            s = m["splits"][args.split]
            out["sizes"].append({"batch_size": size, "rows": rows_per_batch(size, max_len), "networks": s["models"],
                                 "seconds": round(seconds, 2), "networks_per_s": round(s["models"] / seconds, 2),
                                 "behaviour_kl_mean": s.get("behaviour_kl_mean"),
                                 "max_code_difference_vs_first": float(np.abs(z - first).max()),
                                 "mean_code_difference_vs_first": float(np.abs(z - first).mean())})
            print(f"batch {size}: {seconds:.1f} s", file=sys.stderr, flush=True)
    base = out["sizes"][0]["networks_per_s"]
    for s in out["sizes"]:
        s["speed_vs_first"] = round(s["networks_per_s"] / base, 3)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
