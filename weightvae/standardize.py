"""Per-layer standardisation: the one place that decides how a layer's weights are scaled.

Each learned tensor (layer) is shifted by its train-split mean and divided by its train-split
std (Schürholt et al.'s layer-wise normalisation), so a 10-weight bias counts as much as a
600-weight kernel. The std is *floored*: a layer that is (nearly) constant over the train split
but varies in val/test would otherwise be multiplied by ~1e8. The floor is `REL_FLOOR` times
the layer's RMS over the train split (sqrt(mean^2 + std^2)), so standardisation never blows a
layer up to more than ~100x its typical magnitude; an all-zero layer is left unscaled (1.0).
Ingest's `stats.json`, the dataset, the VAE's buffers and evaluate's distances all use this.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

#: Floor of a layer's std, relative to the layer's RMS over the train split.
REL_FLOOR = 1e-2


def layer_scale(mean: float, std: float) -> float:
    """The divisor used to standardise a layer with train mean `mean` and std `std`."""
    rms = math.sqrt(mean * mean + std * std)
    floor = REL_FLOOR * rms
    if floor == 0.0:  # the layer is all zeros in train: nothing to scale by
        return 1.0
    return max(std, floor)


def layer_vectors(entries: Sequence[tuple[slice, float, float]], length: int) -> tuple[Tensor, Tensor]:
    """(mean `[length]`, scale `[length]`) from (slice, mean, std) per layer; entries outside every
    slice (padding) get mean 0 and scale 1, so they stay exactly 0 when standardised."""
    mean, scale = torch.zeros(length), torch.ones(length)
    for sl, m, s in entries:
        mean[sl], scale[sl] = m, layer_scale(m, s)
    return mean, scale


def from_stats(tensors: Mapping[str, Mapping[str, float]], slices: Sequence[tuple[str, slice]],
               length: int) -> tuple[Tensor, Tensor]:
    """(mean, scale) vectors `[length]` from ingest's per-tensor stats (`stats.json[layout]["tensors"]`)."""
    return layer_vectors([(sl, tensors[name]["mean"], tensors[name]["std"]) for name, sl in slices], length)


def from_weights(train: Tensor, slices: Sequence[tuple[str, slice]]) -> tuple[Tensor, Tensor]:
    """(mean, scale) vectors `[L]` computed from training weights `[N, L]` (float64 sums), one
    value per layer pooled over models and the layer's entries."""
    w = train.double()
    entries = [(sl, w[:, sl].mean().item(), w[:, sl].std(correction=0).item() if w[:, sl].numel() else 0.0)
               for _, sl in slices]
    mean, scale = layer_vectors(entries, train.shape[1])
    return mean.to(train.dtype), scale.to(train.dtype)
