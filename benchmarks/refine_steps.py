"""Agreement against refinement steps: the trained codec (from its encoder's code) and the two controls.

    python benchmarks/refine_steps.py [--steps 0 50 200 800 1600] [--models 128] > metrics/refine_steps.json
    python benchmarks/refine_steps.py --split train --no-controls --steps 0 10 50 200 > metrics/refine_steps_train.json
    python benchmarks/refine_steps.py --tiny     # a smoke run: a 20-run zoo, a codec trained one epoch

On a seeded subset of the test split, each network's code is refined with the encode stage's refinement (its
learning rate, probe inputs and seed from params.yaml) for each step count, from the trained codec's encoder
(`vae`) and from the projection onto the controls' subspaces of the same size (`pca_refined`,
`random_refined`, `weightvae.controls`); the decoded network's agreement with the original on the task's test
inputs is averaged. What `encode.refine_steps` is chosen from: where the codec's curve flattens.

On the training split (`--split train`) a fourth start, `vae_fitted`: the code auto-decoding fitted to each
training network in the train stage (`weightvae.autodecode`). What `encode.fitted_refine_steps` is chosen from.
Beside each agreement, the mean behavioural KL on the task's training inputs and the seconds refinement took
(`refine_seconds`, with its KLs before and after, one after another in this run: what a start saves).

A ceiling beside them, `full_refined`: the same refinement with nothing compressed, every (standardised) weight
a free value, from the same start as `vae` (the network the encoder's code decodes to). What it reaches at a
step count is what the code's compression costs refinement from there: the gap between `vae` and `full_refined`.
Prints JSON.
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

from weightvae.determinism import pin  # noqa: E402

pin()

import torch  # noqa: E402

from weightvae.controls import linear_params, subspace_module  # noqa: E402
from weightvae.data import ZooDataModule, ZooDataset  # noqa: E402
from weightvae.encode import EncodeParams  # noqa: E402
from weightvae.model import VAE  # noqa: E402
from weightvae.params import load_section  # noqa: E402
from weightvae.refine import refine  # noqa: E402
from weightvae.tasks import get_task  # noqa: E402
from weightvae.train import TrainParams, build_module  # noqa: E402


def agreement(model, z: torch.Tensor, x: torch.Tensor, lids: list[str], keys: list[str]) -> float:
    """Mean agreement on the task's test inputs between the networks `x` and the decoded codes `z` (one key)."""
    key = keys[0]
    test = get_task(model.functional[key]["task"]).x_test
    with torch.no_grad():
        a = model.network_logits(x, lids, key, test).argmax(-1)
        b = model.network_logits(model.decode(z), lids, key, test).argmax(-1)
    return float((a == b).double().mean())


def main() -> None:
    ap = arguments(__doc__.splitlines()[0], "test")
    ap.add_argument("--steps", type=int, nargs="+", default=[0, 50, 200, 800, 1600])
    ap.add_argument("--split", choices=["test", "train"], default="test",
                    help="train: also from the codes auto-decoding fitted (`vae_fitted`)")
    ap.add_argument("--no-controls", dest="controls", action="store_false", help="the trained codec's curves only")
    args = ap.parse_args()
    if args.tiny:
        with tiny_inputs(args):
            args.steps = [0, 2]
            return run(args)
    return run(args)


def arguments(description: str, split: str | None) -> argparse.ArgumentParser:
    """The options of the refinement benchmarks (this one, `refine_lr.py`, `encode_batch.py`): the params, shards
    and codec, a smoke run, and (given a `split`) a seeded subset of that split."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--shards", default=str(ROOT / "model_data/shards"))
    ap.add_argument("--model", default=str(ROOT / "model_data/models/vae.ckpt"))
    if split is not None:
        ap.add_argument("--models", type=int, default=128, help=f"seeded subset of the {split} split")
        ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="smoke run on a tiny zoo in a temporary folder")
    return ap


@contextlib.contextmanager
def tiny_inputs(args: argparse.Namespace):
    """`args` pointed at a tiny zoo and codec (`tiny`) in a temporary folder, 4 networks of them."""
    with tempfile.TemporaryDirectory() as tmp:
        args.shards, args.model = tiny(Path(tmp), args.params)
        args.models = 4
        yield args


def tiny(root: Path, params: str) -> tuple[Path, Path]:
    """A 20-run, 2-epoch CNN zoo ingested, and the default codec (at a small width) trained on it for one epoch."""
    import os

    from weightvae.ingest import IngestParams, ingest
    from weightvae.train import train
    from weightvae.zoo import ZooParams, build_zoo

    build_zoo(ZooParams(architectures={"cnn": 20}, epochs=2, save_epochs=(1, 2), group_size=20), root / "weights",
              log=lambda *_: None)
    ingest(IngestParams(zoo_dir=str(root / "weights"), workers=1), root / "shards", log=lambda *_: None)
    p = replace(load_section(params, "train", TrainParams), hidden=32, max_epochs=1, batch_size=16,
                accelerator="cpu")
    cwd = os.getcwd()
    os.chdir(root)  # DVCLive must not find this repository's dvc.yaml
    try:
        train(p, root / "shards", root / "vae.ckpt", root / "lightning", root / "live")
    finally:
        os.chdir(cwd)
    return root / "shards", root / "vae.ckpt"


def run(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    enc = load_section(args.params, "encode", EncodeParams)
    train_p = load_section(args.params, "train", TrainParams)
    out = curves(VAE.from_export(args.model), args.shards, enc, train_p, args.steps, args.models, args.seed,
                 controls=args.controls, split=args.split)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, indent=2))


def full_space(train_p: TrainParams, train_x: torch.Tensor, lid: str, model: VAE, norms: dict) -> VAE:
    """A linear codec whose code is the whole standardised network less the train split's mean (`train_x`
    `[N, L]`): decode(z) = z + mean."""
    n = train_x.shape[1]
    c = build_module(linear_params(train_p, n), n, [lid], 1, model.functional)
    c.load_state_dict(norms, strict=False)
    with torch.no_grad():
        c.net.from_latent.weight.copy_(torch.eye(n))
        c.net.from_latent.bias.copy_(train_x.mean(0))
    return c.eval()


def curves(model: VAE, shards, enc: EncodeParams, train_p: TrainParams, steps: list[int], models: int, seed: int,
           controls: bool = True, split: str = "test") -> dict:
    """Agreement after each step count of `steps` on a seeded subset of `models` networks of `split`, refined from
    `model`'s encoder (`vae`), from the codes auto-decoding fitted where `model` has them for every network of the
    subset (`vae_fitted`: training networks), and, with `controls`, from the projections onto the PCA and random
    subspaces of its size (`pca_refined`, `random_refined`) and the whole network (`full_refined`)."""
    (lid,) = model.layout_ids  # one layout, as the default zoo
    test = ZooDataset(shards, split, normalize=model.normalize, layout_id=lid, max_len=model.cfg.max_len)
    pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:models].sort().values
    batch = ZooDataModule.loader(torch.utils.data.Subset(test, pick.tolist()), batch_size=len(pick))
    batch = next(iter(batch))
    x = batch["weight"]
    lids = model.batch_layout_ids(batch, len(x))
    keys = model.batch_function_keys(batch, lids)
    with torch.no_grad():
        z_enc = model.encode(batch).mode()
    starts = {"vae": (model, z_enc, None)}
    ids = [pr["id"] for pr in batch["model_properties"]]
    if all(i in model.fitted_codes for i in ids):
        starts["vae_fitted"] = (model, z_enc, torch.stack([model.fitted_codes[i] for i in ids]))
    if controls:
        train = ZooDataset(shards, "train", normalize=model.normalize, layout_id=lid, max_len=model.cfg.max_len)
        train_x = torch.stack([train.vector(i) for i in range(len(train))])
        linear = linear_params(train_p, model.latent_size())
        norms = {k: v for k, v in model.state_dict().items() if k.startswith("norm_")}
        for kind in ("pca", "random"):
            c = build_module(linear, model.cfg.max_len, [lid], 1, model.functional)
            c.load_state_dict(norms, strict=False)
            c = subspace_module(kind, train_x, model.latent_size(), c, seed=0)
            with torch.no_grad():
                starts[f"{kind}_refined"] = (c, c.net.encode(x).mode(), None)
        full = full_space(train_p, train_x, lid, model, norms)
        with torch.no_grad():  # the start of `vae`, as a free network: its decoded code less the mean
            starts["full_refined"] = (full, model.decode(z_enc) - full.net.from_latent.bias, None)
    out = {"split": split, "models": len(pick), "latent_size": model.latent_size(), "refine_lr": enc.refine_lr,
           "probe_count": enc.probe_count, "probe_batch": enc.probe_batch, "steps": list(steps),
           "agreement": {name: [] for name in starts}, "behaviour_kl": {name: [] for name in starts},
           "refine_seconds": {name: [] for name in starts}}
    for n in steps:
        for name, (m, z0, start) in starts.items():
            t0 = time.perf_counter()
            z, _, kl = refine(m, z0, x, lids, keys, n, enc.refine_lr, enc.probe_count, enc.probe_batch, enc.seed,
                              start=start)
            out["refine_seconds"][name].append(round(time.perf_counter() - t0, 2))  # with its KLs, in this run
            out["agreement"][name].append(agreement(m, z, x, lids, keys))
            out["behaviour_kl"][name].append(float(kl.mean()))
        print(f"{n} steps: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in out["agreement"].items()),
              file=sys.stderr, flush=True)
    return out


if __name__ == "__main__":
    main()
