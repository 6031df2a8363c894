"""The encoder's limit: fitted again to where the final decoder works, does it code unseen networks better?

    python benchmarks/encoder_refit.py > metrics/encoder_refit.json
    python benchmarks/encoder_refit.py --tiny     # a smoke run: a 20-run zoo, a codec trained one epoch

Lightning trains the encoder; auto-decoding then moves the decoder and fits a code to every training network
(`weightvae.autodecode`), and the encoder is left as it was. Here a copy of the trained encoder (its affine map
and its MLP) is fitted further, the decoder frozen, on the training split, in two ways: `refit_codes` regresses
the codes auto-decoding fitted (squared error, `--epochs-codes` epochs); `refit_function` minimises the decoded
networks' behavioural KL on `train.behaviour_batch` fresh training inputs a step, times `train.behaviour_weight`
(training's behavioural loss, `--epochs-function` epochs). Both: AdamW (`--lr-codes`, `--lr-function`), cosine,
batches of `train.batch_size`, seeded. The encoder's code alone is judged by the decoded network's agreement with the original
on the task's test inputs, on the training networks and on the **val** split (the test split is never read).
If a refit gives the training networks their fitted codes' agreement but the val networks no more than before,
what limits the encoder is how it carries over to runs it has not seen, not where it was trained to land.
Prints JSON.
"""

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from weightvae.determinism import pin  # noqa: E402

pin()

import torch  # noqa: E402
from refine_steps import agreement, arguments, tiny_inputs  # noqa: E402

from weightvae.behaviour import behaviour_kl_per_network, probe_inputs  # noqa: E402
from weightvae.data import ZooDataModule, ZooDataset  # noqa: E402
from weightvae.model import VAE  # noqa: E402
from weightvae.params import load_section  # noqa: E402
from weightvae.train import TrainParams  # noqa: E402


def split_inputs(model: VAE, shards, split: str) -> dict:
    """Every network of `split` as the encoder reads it: weights `x`, outputs on the probes `cond`, ids."""
    (lid,) = model.layout_ids  # one layout, as the default zoo
    ds = ZooDataset(shards, split, normalize=model.normalize, layout_id=lid, max_len=model.cfg.max_len)
    batch = next(iter(ZooDataModule.loader(ds, batch_size=len(ds))))
    x = batch["weight"]
    lids = model.batch_layout_ids(batch, len(x))
    keys = model.batch_function_keys(batch, lids)
    with torch.no_grad():
        cond = model._cond(x, lids, keys)[0]
    return {"x": x, "cond": cond, "lids": lids, "keys": keys, "ids": [p["id"] for p in batch["model_properties"]]}


def code(net, d: dict, rows=slice(None)) -> torch.Tensor:
    """The function codec's encoder on rows of `d`: their codes."""
    return net.encode(d["x"][rows], d["cond"][rows]).mode()


def refit(model: VAE, tr: dict, mode: str, epochs: int, lr: float, p: TrainParams) -> torch.nn.Module:
    """A copy of `model.net` whose encoder is fitted further on the training networks `tr` (`mode`: codes |
    function); the decoder is not touched."""
    net = copy.deepcopy(model.net)
    params = [*net.to_latent.parameters(), *net.encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=p.weight_decay)
    fitted = torch.stack([model.fitted_codes[i] for i in tr["ids"]])
    key = tr["keys"][0]
    pool = probe_inputs(model.functional[key]["task"], None)
    g = torch.Generator().manual_seed(p.seed)
    n = len(tr["x"])
    total, step = epochs * math.ceil(n / p.batch_size), 0
    for _ in range(epochs):
        for part in torch.randperm(n, generator=g).split(p.batch_size):
            z = code(net, tr, part)
            if mode == "codes":
                loss = ((z - fitted[part]) ** 2).sum(1).mean()
            else:
                ids = [tr["lids"][i] for i in part]
                probes = pool[torch.randint(len(pool), (p.behaviour_batch,), generator=g)]
                with torch.no_grad():
                    ref = model.network_logits(tr["x"][part], ids, key, probes)
                loss = p.behaviour_weight * behaviour_kl_per_network(
                    ref, model.network_logits(net.decode(z), ids, key, probes)).mean()
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    return net


def judged(model: VAE, net, d: dict) -> float:
    with torch.no_grad():
        return agreement(model, code(net, d), d["x"], d["lids"], d["keys"])


def main() -> None:
    ap = arguments(__doc__.splitlines()[0], None)
    ap.add_argument("--epochs-codes", type=int, default=60)
    ap.add_argument("--epochs-function", type=int, default=10)
    ap.add_argument("--lr-codes", type=float, default=1e-3)
    ap.add_argument("--lr-function", type=float, default=3e-4)
    args = ap.parse_args()
    if args.tiny:
        with tiny_inputs(args):
            args.epochs_codes, args.epochs_function = 2, 1
            return run(args)
    return run(args)


def run(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    p = load_section(args.params, "train", TrainParams)
    model = VAE.from_export(str(args.model))
    if model.cfg.codec != "function" or not model.fitted_codes:
        raise SystemExit(f"encoder_refit: {args.model} is not a function codec with the codes auto-decoding fitted "
                         "(train.codec: function, train.autodecode_epochs > 0)")
    tr, va = split_inputs(model, args.shards, "train"), split_inputs(model, args.shards, "val")
    fitted = torch.stack([model.fitted_codes[i] for i in tr["ids"]])
    with torch.no_grad():
        out = {"train_networks": len(tr["x"]), "val_networks": len(va["x"]),
               "fitted_codes_train": agreement(model, fitted, tr["x"], tr["lids"], tr["keys"]),
               "variants": {"as_trained": {"train": judged(model, model.net, tr), "val": judged(model, model.net, va)}}}
    for mode, epochs, lr in (("codes", args.epochs_codes, args.lr_codes),
                             ("function", args.epochs_function, args.lr_function)):
        t1 = time.perf_counter()
        net = refit(model, tr, mode, epochs, lr, p)
        out["variants"][f"refit_{mode}"] = {"epochs": epochs, "lr": lr, "train": judged(model, net, tr),
                                            "val": judged(model, net, va),
                                            "seconds": round(time.perf_counter() - t1, 1)}
        print(f"refit_{mode}: " + json.dumps(out["variants"][f"refit_{mode}"]), file=sys.stderr, flush=True)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
