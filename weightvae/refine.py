"""Latent refinement: a network's code, improved until it decodes to a network that computes the same.

The encoder gives a code in one pass (amortised inference); on networks of runs it never saw, that
guess is far from the best code (the amortisation gap): with a latent 4x smaller than the network,
held-out networks decode to about half agreement. Refinement (semi-amortised inference, Kim et al.
2018) starts from the encoder's mean and takes `steps` Adam steps on the code alone, minimising
KL(original || decoded) of the two networks' class distributions on `probe_count` probe inputs from
the task's *training* set (never the test set evaluate scores on). The decoder is fixed, so the code
stays a code of this VAE: the same latent size, decoded the same way.

Each network's loss is summed, not averaged, over the batch: Adam's steps then depend on a network's
own gradient alone, so a code does not depend on which other networks share its batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from weightvae.behaviour import behaviour_kl_per_network


def refine(model, z0: Tensor, x: Tensor, layout_ids: Sequence[str], keys: Sequence[str], steps: int, lr: float,
           probe_count: int) -> tuple[Tensor, Tensor, Tensor]:
    """Refined codes `[B, *latent]` of the (normalised, flat) networks `x` `[B, L]`, starting at `z0`,
    and each network's behavioural KL `[B]` before and after (NaN where the network cannot be run:
    its code stays `z0`).

    The learning rate follows a cosine from `lr` to 0 over `steps`, so the last steps settle.
    """
    model.eval()
    z = z0.detach().clone()
    before = torch.full((len(x),), math.nan, dtype=torch.float64)
    after = before.clone()
    with torch.no_grad():
        ref, valid = model.function_logits(x, layout_ids, keys, probe_count)
    if ref is None:
        return z, before, after
    rows = torch.nonzero(valid).squeeze(1)
    sub_ids, sub_keys = [layout_ids[i] for i in rows], [keys[i] for i in rows]
    sub_ref = ref[rows]
    with torch.no_grad():
        before[rows] = _kl(model, z[rows], sub_ids, sub_keys, probe_count, sub_ref).double()
    if steps == 0:
        after[rows] = before[rows]
        return z, before, after
    code = z[rows].clone().requires_grad_(True)
    opt = torch.optim.Adam([code], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        loss = _kl(model, code, sub_ids, sub_keys, probe_count, sub_ref).sum()
        (code.grad,) = torch.autograd.grad(loss, [code])  # the code's gradient only, none for the VAE's weights
        opt.step()
        sched.step()
    with torch.no_grad():
        z[rows] = code.detach()
        after[rows] = _kl(model, code, sub_ids, sub_keys, probe_count, sub_ref).double()
    return z, before, after


def _kl(model, z: Tensor, layout_ids: Sequence[str], keys: Sequence[str], probe_count: int, ref: Tensor) -> Tensor:
    logits, _ = model.function_logits(model.decode(z), layout_ids, keys, probe_count)
    return behaviour_kl_per_network(ref, logits)
