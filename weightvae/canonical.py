"""Permutation canonicalisation: reorder hidden units into a fixed order, keeping the function.

Hidden units of a layer can be permuted (with the matching rows of the next layer's input)
without changing what the network computes, so two runs can hold the "same" unit in different
slots. Sorting each layer's units by a key (here: the L2 norm of the unit's incoming weights
and bias, largest first) maps every network to one representative of its permutation class,
which makes weight vectors of different runs more comparable. Applied at ingest
(`ingest.canonicalize: true`); `tests/test_canonical.py` checks that outputs are unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

#: architecture -> permutable unit groups, in order; each group lists (tensor, axis, block):
#: the tensor is permuted along `axis`, where each unit spans `block` consecutive entries.
#: The first entry of a group is the unit's incoming weight (axis 0), which sets the sort key.
GROUPS: dict[str, list[list[tuple[str, int, int]]]] = {
    "cnn": [
        [("conv1.weight", 0, 1), ("conv1.bias", 0, 1), ("conv2.weight", 1, 1)],
        [("conv2.weight", 0, 1), ("conv2.bias", 0, 1), ("fc1.weight", 1, -1)],  # -1: block = pooled pixels
        [("fc1.weight", 0, 1), ("fc1.bias", 0, 1), ("fc2.weight", 1, 1)],
    ],
    "mlp": [
        [("fc1.weight", 0, 1), ("fc1.bias", 0, 1), ("fc2.weight", 1, 1)],
    ],
}


def supports(arch: str) -> bool:
    return arch in GROUPS


def _permute(t: Tensor, axis: int, block: int, perm: Tensor, units: int) -> Tensor:
    if block == -1:
        block = t.shape[axis] // units
    shape = list(t.shape)
    blocks = t.reshape(*shape[:axis], units, block, *shape[axis + 1:])
    return blocks.index_select(axis, perm).reshape(shape)


def canonicalize(arch: str, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A copy of `state_dict` with each hidden layer's units sorted by incoming-weight norm (descending)."""
    sd = {k: v.clone() for k, v in state_dict.items()}
    for group in GROUPS[arch]:
        (w_name, _, _), (b_name, _, _) = group[0], group[1]
        w, b = sd[w_name], sd[b_name]
        units = w.shape[0]
        key = torch.cat([w.reshape(units, -1), b.reshape(units, 1)], 1).double().norm(dim=1)
        perm = torch.argsort(-key, stable=True)
        for name, axis, block in group:
            sd[name] = _permute(sd[name], axis, block, perm, units)
    return sd


def random_permutation(arch: str, state_dict: Mapping[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
    """A copy of `state_dict` with each hidden layer's units randomly permuted: the same function
    at a different place in weight space (evaluate's "permuted copy" reference for samples)."""
    sd = {k: v.clone() for k, v in state_dict.items()}
    for group in GROUPS[arch]:
        units = sd[group[0][0]].shape[0]
        perm = torch.randperm(units, generator=generator)
        for name, axis, block in group:
            sd[name] = _permute(sd[name], axis, block, perm, units)
    return sd
