"""Auto-decoding: the function codec's decoder fitted together with a free code per training network.

Lightning trains the decoder at the codes its encoder gives. The encode stage then refines each code
(`weightvae.refine`), so the codes that are decoded in the end are not the encoder's: they are wherever
refinement lands. After Lightning, `autodecode` makes training see that too (an auto-decoder, as in GLO,
Bojanowski et al. 2018, and DeepSDF, Park et al. 2019): every training network gets its own code, started at
its encoder's code, and the codes and the decoder are optimised together on the training loss (the behavioural
KL on `train.behaviour_batch` training inputs drawn afresh, times `train.behaviour_weight`, plus the weight
loss), for `train.autodecode_epochs` epochs over the training split. The decoder's image moves toward the
training networks' functions at the codes refinement can reach; the encoder is kept as trained (a code is
still one encoder pass, then refinement).

The codes follow Adam, row by row: a code is updated only in the steps its network is in, with its own moment
estimates and step count (plain Adam over the whole table would move every code with the momentum of steps
it took no part in), at `train.autodecode_code_lr` with a cosine schedule. Each code's gradient is that of its
own network's loss, whatever the batch. The decoder follows AdamW at `train.learning_rate`, cosine. Seeded:
same params and data, same decoder.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from weightvae.behaviour import behaviour_kl_per_network, probe_inputs
from weightvae.losses import layerwise_mse, masked_mse

BETAS = (0.9, 0.999)  # the codes' Adam, as torch's
EPS = 1e-8


class RowAdam:
    """Adam over the rows of a table `[N, D]`, updating only the rows of each step."""

    def __init__(self, table: Tensor):
        self.table = table
        self.m = torch.zeros_like(table)
        self.v = torch.zeros_like(table)
        self.t = torch.zeros(len(table), 1, dtype=table.dtype)

    @torch.no_grad()
    def step(self, rows: Tensor, grad: Tensor, lr: float) -> None:
        b1, b2 = BETAS
        self.t[rows] += 1
        t = self.t[rows]
        self.m[rows] = b1 * self.m[rows] + (1 - b1) * grad
        self.v[rows] = b2 * self.v[rows] + (1 - b2) * grad * grad
        m_hat, v_hat = self.m[rows] / (1 - b1 ** t), self.v[rows] / (1 - b2 ** t)
        self.table[rows] -= lr * m_hat / (v_hat.sqrt() + EPS)


def autodecode(model, batch: dict[str, Any], p,
               log: Callable[[str], None] = print) -> tuple[dict[str, float], dict[str, Tensor]]:
    """Fit `model`'s decoder (a `VAE` of `codec: function`; its `decoder` and `from_latent`) and one code per
    network of `batch` (the whole training split, as `weightvae.data.collate` stacks it) for
    `p.autodecode_epochs` epochs; the encoder is not touched. Returns the training networks' mean behavioural
    KL on `p.behaviour_batch` seeded training inputs of their task, before (the encoder's codes, the decoder as
    Lightning left it) and after (the fitted codes and decoder), over the networks weightvae can run (the
    others have no behavioural loss and are left out), and the seconds it took; and the fitted codes of those
    networks by id (the encode stage starts them there: `encode.fitted_refine_steps`)."""
    if p.autodecode_epochs == 0:
        return {}, {}
    x, mask, layer = batch["weight"], batch["mask"], batch["layer"]
    lids = model.batch_layout_ids(batch, len(x))
    keys = model.batch_function_keys(batch, lids)
    groups = {k: torch.tensor([i for i, key in enumerate(keys) if key == k]) for k in sorted(set(keys))
              if k in model.functional}
    if not groups:
        log("autodecode: none of the training networks can be run; the decoder stays as trained")
        return {}, {}
    t0 = time.perf_counter()
    model.eval()  # no dropout anywhere in the codec; eval keeps Lightning's modes out of it
    with torch.no_grad():
        codes = torch.cat([model.encode({k: v[i:i + p.batch_size] for k, v in batch.items()}).mode()
                           for i in range(0, len(x), p.batch_size)])
    fixed = {key: probe_inputs(model.functional[key]["task"], p.behaviour_batch, seed=p.seed) for key in groups}
    before = _mean_kl(model, codes, x, lids, groups, fixed)
    opt_codes = RowAdam(codes)
    params = [*model.net.decoder.parameters(), *model.net.from_latent.parameters()]
    opt = torch.optim.AdamW(params, lr=p.learning_rate, weight_decay=p.weight_decay)
    per_epoch = sum(math.ceil(len(rows) / p.batch_size) for rows in groups.values())
    total = p.autodecode_epochs * per_epoch
    g = torch.Generator().manual_seed(p.seed)
    step = 0
    for _ in range(p.autodecode_epochs):
        for key, rows in groups.items():
            pool = probe_inputs(model.functional[key]["task"], None)
            for part in rows[torch.randperm(len(rows), generator=g)].split(p.batch_size):
                probes = pool[torch.randint(len(pool), (p.behaviour_batch,), generator=g)]
                ids = [lids[i] for i in part]
                with torch.no_grad():
                    ref = model.network_logits(x[part], ids, key, probes)
                z = codes[part].clone().requires_grad_(True)
                recon = model.decode(z, ids)
                kl = behaviour_kl_per_network(ref, model.network_logits(recon, ids, key, probes))
                weights = (layerwise_mse(x[part], recon, layer[part], model.n_layers) if p.loss == "layer"
                           else masked_mse(x[part], recon, mask[part].to(recon)))
                loss = (p.behaviour_weight * kl).sum() + weights * len(part)  # each network's own loss, summed
                grads = torch.autograd.grad(loss, [z, *params])
                scale = 0.5 * (1 + math.cos(math.pi * step / total))  # cosine, both optimisers
                for param, grad in zip(params, grads[1:], strict=True):
                    param.grad = grad / len(part)  # the decoder: the batch's mean loss
                for group in opt.param_groups:
                    group["lr"] = p.learning_rate * scale
                opt.step()
                opt_codes.step(part, grads[0], p.autodecode_code_lr * scale)
                step += 1
    for param in params:
        param.grad = None
    out = {"networks": sum(len(rows) for rows in groups.values()), "behaviour_kl_encoder_codes": before,
           "behaviour_kl": _mean_kl(model, codes, x, lids, groups, fixed),
           "seconds": round(time.perf_counter() - t0, 1)}
    log(f"autodecode: {p.autodecode_epochs} epochs of the decoder and {out['networks']} training codes together, "
        f"behavioural KL {out['behaviour_kl_encoder_codes']:.4f} (the encoder's codes, the decoder as trained) -> "
        f"{out['behaviour_kl']:.4f} (fitted) in {out['seconds']}s")
    ran = torch.cat(list(groups.values())).sort().values
    return out, {batch["model_properties"][i]["id"]: codes[i].clone() for i in ran.tolist()}


@torch.no_grad()
def _mean_kl(model, codes: Tensor, x: Tensor, lids: list[str], groups: dict[str, Tensor],
             probes: dict[str, Tensor]) -> float:
    """The networks' mean behavioural KL on each group's `probes`, decoded from `codes`."""
    kl = []
    for key, rows in groups.items():
        ids = [lids[i] for i in rows]
        ref = model.network_logits(x[rows], ids, key, probes[key])
        kl += behaviour_kl_per_network(ref, model.network_logits(model.decode(codes[rows], ids), ids, key,
                                                                 probes[key])).tolist()
    return sum(kl) / len(kl)
