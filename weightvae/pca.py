"""Principal components, once: what the codecs start from, what the controls refine in, what evaluate's `pca`
baseline and the probes' PCA features project on.

`principal_components` is the SVD; `whitened_pca` adds what a codec's start needs (every direction of a
latent larger than the data's rank, each scaled to unit variance). All float64.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

RANK_TOL = 1e-6  # a direction is spanned when its std is above this fraction of the largest


@torch.no_grad()
def principal_components(x: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """(centre `[L]`, directions `[min(k, N, L), L]` orthonormal rows, std `[same]` over `x` (n - 1)) of the
    vectors `x` `[N, L]`: the top `k` principal directions from an SVD of the centred matrix, float64."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    n = len(x)
    x = x.double()
    centre = x.mean(0)
    _, sv, vh = torch.linalg.svd(x - centre, full_matrices=False)  # vh [min(N, L), L]
    return centre, vh[:k], (sv / math.sqrt(max(n - 1, 1)))[:k]


def spanned(std: Tensor) -> int:
    """How many of the leading directions (std sorted from the largest) the data spans (`RANK_TOL`)."""
    return int((std > RANK_TOL * std[0]).sum().item()) if len(std) else 0


@torch.no_grad()
def whitened_pca(x: Tensor, k: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """(centre `[L]`, basis `[k, L]` orthonormal rows, scale `[k]`) of the vectors `x` `[N, L]`, float64: the top
    `k` principal directions and each one's std over `x` (n - 1). Directions beyond the rank of `x` are seeded
    random ones orthogonal to the rest, with the smallest kept std. A code `(x - centre) @ basis.T / scale` has
    unit variance along every direction (whitened)."""
    length = x.shape[1]
    centre, basis, std = principal_components(x, k)
    keep = spanned(std)
    basis, scale = basis[:keep], std[:keep]
    if keep < k:  # more latent values than directions the data spans
        g = torch.Generator().manual_seed(seed)
        extra = torch.randn(k - keep, length, generator=g, dtype=torch.float64)
        extra -= (extra @ basis.T) @ basis
        basis = torch.cat([basis, torch.linalg.qr(extra.T).Q.T])
        scale = torch.cat([scale, (scale[-1:] if keep else torch.ones(1, dtype=scale.dtype)).expand(k - keep)])
    return centre, basis, scale
