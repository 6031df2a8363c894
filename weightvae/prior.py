"""Where sampled latents come from: the VAE's N(0, I) prior, or a kernel density estimate.

A weight VAE trained for faithful reconstruction uses a tiny KL weight, so its aggregate
posterior (where training networks actually land) is nowhere near N(0, I): prior draws
decode to chance-level networks. The two-stage remedy of Schürholt et al. (2022,
"Hyper-representations as generative models") samples instead from a KDE over the latents
of the training split, optionally only of its best models: pick a training latent, add
Gaussian noise of `bandwidth` times each latent dimension's spread over the training latents
given (reconstruct passes one task/architecture/layout group at a time).

The bandwidth trades accuracy against novelty: 0 decodes copies of training networks, and the
larger it is the further samples move from every training model and the worse they work.
README "Sampling" has the measured curve.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def top_fraction(scores: np.ndarray, fraction: float) -> np.ndarray:
    """Indices of the best `fraction` of `scores` (at least one; ties at the cut all kept).

    NaN scores (no metric recorded) are never selected; if every score is NaN, all indices
    are returned so that zoos without metrics still sample.
    """
    scores = np.asarray(scores, dtype=np.float64)
    known = ~np.isnan(scores)
    if fraction >= 1.0 or not known.any():
        return np.arange(len(scores))
    k = max(1, int(np.ceil(round(fraction * known.sum(), 9))))  # round: 0.55 * 100 is 55.000000000000007
    cut = np.sort(scores[known])[::-1][k - 1]
    return np.flatnonzero(known & (scores >= cut))


@dataclass
class LatentKDE:
    """Gaussian KDE over training latents `[N, *latent_shape]`, kernels centred on `pool` rows."""

    latents: Tensor
    pool: np.ndarray
    bandwidth: float

    def __post_init__(self) -> None:
        if len(self.latents) == 0 or len(self.pool) == 0:
            raise ValueError("LatentKDE needs at least one training latent in its pool")
        # spread over all the latents given, not only the pool, so the kernel's width does not depend on `pool`
        self.scale = self.latents.std(0, unbiased=False) if len(self.latents) > 1 else torch.zeros_like(self.latents[0])

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, np.ndarray]:
        """n latents and, for each, the index (into `latents`) of the kernel it was drawn from."""
        pick = torch.randint(len(self.pool), (n,), generator=generator).numpy()
        anchors = self.pool[pick]
        noise = torch.randn((n, *self.latents.shape[1:]), generator=generator, dtype=self.latents.dtype)
        return self.latents[torch.as_tensor(anchors)] + self.bandwidth * self.scale * noise, anchors
