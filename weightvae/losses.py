"""Weight-space reconstruction losses on flat vectors `[B, L]`; padding never counts.

(The behavioural loss, on what the networks compute, is `weightvae.behaviour.behaviour_kl`.)
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_mse(x: Tensor, recon: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over real (mask=1) entries only. All `[B, L]`."""
    assert x.shape == recon.shape == mask.shape, f"{list(x.shape)} {list(recon.shape)} {list(mask.shape)}"
    return ((recon - x).pow(2) * mask).sum() / mask.sum().clamp_min(1)


def layerwise_mse(x: Tensor, recon: Tensor, layer: Tensor, n_layers: int) -> Tensor:
    """MSE averaged within each layer, then over the layers present, then over the batch, so a
    10-weight bias counts as much as a 600-weight kernel (Schürholt et al.). `layer` is `[B, L]`,
    the layer index of each entry, -1 for padding."""
    assert x.shape == recon.shape == layer.shape, f"{list(x.shape)} {list(recon.shape)} {list(layer.shape)}"
    assert int(layer.max()) < n_layers, f"layer index {int(layer.max())} >= n_layers {n_layers}"
    b = x.shape[0]
    real = layer >= 0
    idx = (torch.arange(b, device=x.device).unsqueeze(1) * n_layers + layer.clamp_min(0))[real]
    sq = (recon - x).pow(2)[real]
    sums = torch.zeros(b * n_layers, device=x.device, dtype=sq.dtype).index_add_(0, idx, sq)
    counts = torch.zeros(b * n_layers, device=x.device, dtype=sq.dtype).index_add_(0, idx, torch.ones_like(sq))
    present = counts > 0
    per_layer = sums[present] / counts[present]
    # average over layers within each sample, then over samples
    sample = torch.div(torch.nonzero(present).squeeze(1), n_layers, rounding_mode="floor")
    per_sample = torch.zeros(b, device=x.device, dtype=sq.dtype).index_add_(0, sample, per_layer)
    n_present = torch.zeros(b, device=x.device, dtype=sq.dtype).index_add_(0, sample, torch.ones_like(per_layer))
    return (per_sample / n_present.clamp_min(1)).mean()
