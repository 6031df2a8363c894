"""What a flat weight vector *does*: its network's outputs on a fixed set of probe inputs.

Used by the VAE for the behavioural loss (reconstructions must reproduce the original's
outputs, not only its weights) and, optionally, to let the encoder see the function.
Probes are drawn from the task's *training* inputs, never its test set, so the evaluation
on the test set stays untouched.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from weightvae.archs import get_architecture
from weightvae.functional import Buffers, batched_forward
from weightvae.layout import Layout
from weightvae.tasks import get_task


@functools.cache
def probe_inputs(task: str, count: int | None = None, seed: int = 0) -> Tensor:
    """`count` fixed inputs of `task`'s *training* split (None: all of them), `[P, ...]` (images `[P, C, H, W]`,
    tabular `[P, F]`: whatever the task's loader gives), in training-set order."""
    x = get_task(task).x_train
    if count is None or count >= len(x):
        return x
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:count]
    return x[idx.sort().values]


def flat_logits(arch: str, layout: Layout, flat: Tensor, probes: Tensor, kwargs: Mapping[str, Any] | None = None,
                buffers: Buffers | Sequence[Buffers] | None = None) -> Tensor:
    """Logits `[B, P, K]` of B networks given as real (denormalised) flat weights `[B, length]`.

    Differentiable in `flat`: the architecture's module (built with `kwargs`), any built-in or registered one,
    run on the slices of the vector by `weightvae.functional` (vmapped `functional_call`, eval mode); `buffers`:
    the networks' stored integer buffers (one mapping for all, or one each; None: the module's own).
    A built-in architecture whose hand-written batched forward `benchmarks/forward.py` measured faster
    (`Architecture.probe_forward`: the MLP's) runs that one instead: the same outputs."""
    a = get_architecture(arch)
    if a.probe_forward and a.batched_forward is not None:
        b = flat.shape[0]
        params = {e.name: flat[:, e.offset:e.offset + e.numel].reshape(b, *e.shape) for e in layout.learned}
        return a.batched_forward(params, probes.to(flat).unsqueeze(0).expand(b, *probes.shape), None)
    return batched_forward(arch, kwargs, layout, flat, probes, buffers)


def behaviour_kl_per_network(ref_logits: Tensor, logits: Tensor) -> Tensor:
    """KL(original || reconstruction) of the predicted class distributions, mean over probes: `[B, P, K]`
    twice -> `[B]`."""
    assert ref_logits.shape == logits.shape, f"{list(ref_logits.shape)} vs {list(logits.shape)}"
    ref = F.log_softmax(ref_logits, -1)
    return (ref.exp() * (ref - F.log_softmax(logits, -1))).sum(-1).mean(-1)


def behaviour_kl(ref_logits: Tensor, logits: Tensor) -> Tensor:
    """KL(original || reconstruction) of the predicted class distributions, mean over networks and probes."""
    return behaviour_kl_per_network(ref_logits, logits).mean()
