"""Permutation canonicalisation: reorder hidden units into a fixed order, keeping the function.

Hidden units of a layer can be permuted (with the matching rows of the next layer's input)
without changing what the network computes, so two runs can hold the "same" unit in different
slots. Sorting each layer's units by a key (here: the L2 norm of the unit's incoming weights
and bias, largest first) maps every network to one representative of its permutation class,
which makes weight vectors of different runs more comparable. Applied at ingest
(`ingest.canonicalize: true`); `tests/test_canonical.py` checks that outputs are unchanged.
The built-in architectures list their unit groups here (`GROUPS`); a registered one's are read off its
forward (`weightvae.units`) and kept only where running the network permuted gives the same outputs.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from weightvae.units import Member

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


#: a unit group: the tensors permuted together, and those whose rows (axis 0) make the sort key
Group = tuple[tuple[Member, ...], tuple[str, ...]]


def _kwargs_json(kwargs: Mapping[str, Any] | str | None) -> str:
    return json.dumps(json.loads(kwargs) if isinstance(kwargs, str) else dict(kwargs or {}), sort_keys=True)


def unit_groups(arch: str, kwargs: Mapping[str, Any] | str | None = None, task: str | None = None) -> list[Group]:
    """The permutable unit groups of `arch` built with `kwargs`: the built-in list, or for a registered
    architecture those traced from its forward on `task`'s inputs that survive running it permuted
    (`why_not` says why there are none)."""
    return _groups(arch, _kwargs_json(kwargs), task)[0]


def why_not(arch: str, kwargs: Mapping[str, Any] | str | None = None, task: str | None = None) -> str:
    """Why `arch` has no unit groups to sort ("" when it has some)."""
    return _groups(arch, _kwargs_json(kwargs), task)[1]


def supports(arch: str, kwargs: Mapping[str, Any] | str | None = None, task: str | None = None) -> bool:
    return bool(unit_groups(arch, kwargs, task))


@functools.lru_cache(maxsize=64)
def _groups(arch: str, kwargs_json: str, task: str | None) -> tuple[list[Group], str]:
    if arch in GROUPS:
        return [(tuple(g), (g[0][0], g[1][0])) for g in GROUPS[arch]], ""
    from weightvae.archs import ARCHITECTURES, build_model
    from weightvae.tasks import TASKS, get_task
    from weightvae.units import trace_groups

    if arch not in ARCHITECTURES or task not in TASKS:
        return [], f"architecture {arch!r} on task {task!r} is neither built in nor registered"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(arch, json.loads(kwargs_json)).eval()
        with torch.no_grad():  # every float tensor off its initial value, so a norm's 1s and 0s are tested too
            for t in model.state_dict().values():
                if t.is_floating_point():
                    t.add_(torch.rand_like(t) * 0.5)
        x = get_task(task).x_train[:8]
        try:
            traced = trace_groups(model, x)
        except Exception as e:  # torch.fx's errors name the construct it cannot follow
            return [], f"its forward cannot be traced by torch.fx ({type(e).__name__}: {str(e).splitlines()[0]})"
        state = model.state_dict()
        with torch.no_grad():
            y = model(x)
        kept = []
        for members, key in traced:  # each group alone: running the network permuted must give its outputs
            perm = torch.randperm(state[key[0]].shape[0])
            permuted = dict(state)
            try:
                for name, axis, block in members:
                    permuted[name] = _permute(permuted[name], axis, block, perm, len(perm))
                model.load_state_dict(permuted)
                with torch.no_grad():
                    same = torch.allclose(model(x), y, rtol=1e-4, atol=1e-5 * float(y.abs().max()))
            except (RuntimeError, ValueError):  # a member that does not split into these units: not a group
                same = False
            model.load_state_dict(state)
            if same:
                kept.append((tuple(members), tuple(key)))
    return kept, "" if kept else "no hidden units found that can be permuted without changing its outputs"


def _permute(t: Tensor, axis: int, block: int, perm: Tensor, units: int) -> Tensor:
    if block == -1:
        block = t.shape[axis] // units
    shape = list(t.shape)
    blocks = t.reshape(*shape[:axis], units, block, *shape[axis + 1:])
    return blocks.index_select(axis, perm).reshape(shape)


def canonicalize(arch: str, state_dict: Mapping[str, Tensor], kwargs: Mapping[str, Any] | str | None = None,
                 task: str | None = None) -> dict[str, Tensor]:
    """A copy of `state_dict` with each hidden layer's units sorted by incoming-weight norm (descending)."""
    sd = {k: v.clone() for k, v in state_dict.items()}
    for members, key in unit_groups(arch, kwargs, task):
        units = sd[key[0]].shape[0]
        norm = torch.cat([sd[name].reshape(units, -1) for name in key], 1).double().norm(dim=1)
        perm = torch.argsort(-norm, stable=True)
        for name, axis, block in members:
            sd[name] = _permute(sd[name], axis, block, perm, units)
    return sd


def random_permutation(arch: str, state_dict: Mapping[str, Tensor], generator: torch.Generator,
                       kwargs: Mapping[str, Any] | str | None = None, task: str | None = None) -> dict[str, Tensor]:
    """A copy of `state_dict` with each hidden layer's units randomly permuted: the same function
    at a different place in weight space (evaluate's "permuted copy" reference for samples)."""
    sd = {k: v.clone() for k, v in state_dict.items()}
    for members, key in unit_groups(arch, kwargs, task):
        units = sd[key[0]].shape[0]
        perm = torch.randperm(units, generator=generator)
        for name, axis, block in members:
            sd[name] = _permute(sd[name], axis, block, perm, units)
    return sd
