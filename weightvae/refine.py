"""Latent refinement: a network's code, improved until it decodes to a network that computes the same.

The encoder gives a code in one pass (amortised inference). On networks of runs it never saw, that
guess is far from the best code the decoder allows (the amortisation gap): with a latent 4x smaller
than the network, held-out networks decode to a small fraction of agreement. Refinement
(semi-amortised inference, Kim et al. 2018) starts from the encoder's mean and takes `steps` Adam
steps on the code alone, minimising KL(original || decoded) of the two networks' class distributions
on the task's *training* inputs (never the test set evaluate scores on). The decoder is fixed, so the
code stays a code of this VAE: the same latent size, decoded the same way.

Each step scores `probe_batch` of the `probe_count` probe inputs, in a seeded order that visits all
of them before repeating: many cheap steps over every training input match the function better than
few steps on a fixed subset (measured in the README, "A compressed latent"). Each network's loss is
summed, not averaged, over the batch, and the probe order is the same for all: a network's code
depends on its own weights and the decoder only, never on which other networks share its batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from weightvae.behaviour import behaviour_kl_per_network, probe_inputs


def probe_schedule(n_probes: int, steps: int, batch: int, seed: int = 0) -> Tensor:
    """`[steps, batch]` indices into the probes: consecutive seeded permutations, cut into batches."""
    batch = min(batch, n_probes)
    g = torch.Generator().manual_seed(seed)
    need = math.ceil(steps * batch / n_probes)
    order = torch.cat([torch.randperm(n_probes, generator=g) for _ in range(max(need, 1))])
    return order[: steps * batch].view(steps, batch)


def refine(model, z0: Tensor, x: Tensor, layout_ids: Sequence[str], keys: Sequence[str], steps: int, lr: float,
           probe_count: int | None, probe_batch: int, seed: int = 0,
           start: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Refined codes `[B, *latent]` of the (normalised, flat) networks `x` `[B, L]`, starting at `z0`
    (the encoder's code) or at `start` where given (a training network's code fitted by auto-decoding), and each
    network's behavioural KL on all its probes `[B]` at `z0` and at the end (NaN where the network cannot be
    run: its code stays `z0`). `probe_count`: probe inputs per task (None: every training input); the
    learning rate follows a cosine from `lr` to 0 over `steps`, so the last steps settle. Refinement never leaves
    a network worse than `z0`: one whose KL on its probes ends above `z0`'s (a step size too large for its
    landscape) keeps `z0`.
    The code's leading `model.measured_latent` values (each tensor's or unit's log-std and mean,
    `train.tensor_scales`) are statistics of the weights, not free values: they are kept. Moved, they drift
    along the directions the function ignores (a ReLU layer scaled up and the next one down) and stop saying
    how large each tensor is."""
    model.eval()
    z = z0.detach().clone()
    measured = model.measured_latent
    assert measured == 0 or z.dim() == 2, "measured latent values are a flat code's leading values"
    before = torch.full((len(x),), math.nan, dtype=torch.float64)
    after = before.clone()
    for key in sorted(set(keys) & set(model.functional)):
        rows = torch.tensor([i for i, k in enumerate(keys) if k == key])  # on the CPU, like `before`/`after`
        ids = [layout_ids[i] for i in rows]
        probes = probe_inputs(model.functional[key]["task"], probe_count)
        with torch.no_grad():
            ref = model.network_logits(x[rows], ids, key, probes)  # [b, P, K]
            before[rows] = _kl(model, z[rows], ids, key, probes, ref).double().cpu()
        if steps == 0 and start is None:  # nothing moves: the KL at the end is the KL at z0
            after[rows] = before[rows]
        else:
            fixed = z[rows, :measured]  # measured statistics of the weights (`tensor_scales`) stay as they are
            code = (z if start is None else start.detach().to(z))[rows, measured:].clone().requires_grad_(True)
            if steps > 0:
                opt = torch.optim.Adam([code], lr=lr)
                sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
                for idx in probe_schedule(len(probes), steps, probe_batch, seed):
                    loss = _kl(model, torch.cat([fixed, code], 1), ids, key, probes[idx], ref[:, idx]).sum()
                    (code.grad,) = torch.autograd.grad(loss, [code])  # the code's gradient only, none for the VAE's
                    opt.step()
                    sched.step()
            with torch.no_grad():
                z[rows, measured:] = code.detach()
                after[rows] = _kl(model, z[rows], ids, key, probes, ref).double().cpu()
                worse = rows[(after[rows] > before[rows]) | after[rows].isnan()]  # they keep z0
                z[worse] = z0.detach()[worse].to(z)
                after[worse] = before[worse]
        if not bool(torch.isfinite(after[rows]).all()):  # NaN stands for "cannot be run": never let it mean this
            raise FloatingPointError(f"refine: {int((~torch.isfinite(after[rows])).sum())} of {len(rows)} networks "
                                     f"of {key} give non-finite outputs, from the encoder's code and after "
                                     "refinement: the codec or the networks' forward is broken for them")
    return z, before, after


def _kl(model, z: Tensor, layout_ids: Sequence[str], key: str, probes: Tensor, ref: Tensor) -> Tensor:
    """`[b]`: KL(original || decoded) per network, mean over `probes` (`ref`: the originals' logits on them)."""
    return behaviour_kl_per_network(ref, model.network_logits(model.decode(z, layout_ids), layout_ids, key, probes))
