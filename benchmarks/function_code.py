"""How much the decoder uses the function code (`train.function_code`) of a trained VAE.

    python benchmarks/function_code.py --model PATH --latents PATH [--split test]

The function code is measured, not learned: the whitened principal components of the classes a network
predicts on the probe inputs (`weightvae.nets.LinearVAE.init_function_code`). The decoder reads it through its
own affine map (`from_func`), started at 0 and moved only by training. This prints, over the split's codes
(the encode stage's, refinement included):
- `std_ratio`: the mean std over networks of each decoded value's function-code part, `from_func(f)`, divided
  by that of the rest of the code's part, `from_latent(code)` (both in the standardised units the decoder
  works in, before any `tensor_scales` scaling);
- `zeroed_change`: ||decode(z) - decode(z with the function code set to 0)|| / ||decode(z)||, over the split;
- the two maps' Frobenius norms.
Near 0: the decoder hardly uses the function code; it is a fingerprint the latent carries for probes and
retrieval. `--tiny` trains a small function-code VAE for one epoch first (the smoke test). Prints JSON.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from weightvae.latents import read_latents
from weightvae.model import VAE


def measure(model_path: Path, latents: Path, split: str) -> dict:
    model = VAE.from_export(str(model_path))
    net = model.net
    if not getattr(net, "n_func", 0):
        sys.exit(f"{model_path}: no function code (train.function_code: 0)")
    _, z = read_latents(latents, split)
    f, n = net.n_func, net.n_func + net.n_stats
    with torch.no_grad():
        func_part, code_part = net.from_func(z[:, :f]), net.from_latent(z[:, n:])
        full = net.decode(z)
        zeroed = z.clone()
        zeroed[:, :f] = 0
        change = (full - net.decode(zeroed)).norm() / full.norm()
    return {"split": split, "networks": len(z), "function_code": f, "measured_statistics": net.n_stats,
            "std_ratio": round(func_part.std(0).mean().item() / code_part.std(0).mean().item(), 4),
            "zeroed_change": round(change.item(), 4),
            "from_func_norm": round(net.from_func.weight.norm().item(), 3),
            "from_latent_norm": round(net.from_latent.weight.norm().item(), 3)}


def tiny(root: Path) -> tuple[Path, Path]:
    """A 20-run CNN zoo, a function-code VAE trained on it for one epoch, its codes (no refinement)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from probe_features import tiny_shards

    from weightvae.encode import EncodeParams, encode
    from weightvae.train import TrainParams, train

    shards = tiny_shards(root)
    p = TrainParams(codec="linear", latent_dim=24, function_code=4, probe_count=16, max_epochs=1, batch_size=8, accelerator="cpu")
    train(p, shards, root / "vae.ckpt", root / "lightning", root / "live")
    encode(EncodeParams(refine_steps=0), shards, root / "vae.ckpt", root / "latents.parquet")
    return root / "vae.ckpt", root / "latents.parquet"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="model_data/models/vae.ckpt", help="a train stage export with a function code")
    ap.add_argument("--latents", default="model_data/latents.parquet", help="its encode stage's latents")
    ap.add_argument("--split", default="test")
    ap.add_argument("--tiny", action="store_true", help="train a small function-code VAE first (smoke test)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model, latents = tiny(Path(tmp)) if args.tiny else (Path(args.model), Path(args.latents))
        print(json.dumps(measure(model, latents, args.split), indent=2))


if __name__ == "__main__":
    main()
