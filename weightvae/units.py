"""Which hidden units of a network can be permuted without changing what it computes, read off its forward.

The built-in architectures list their unit groups by hand (`canonical.GROUPS`); a registered one has its
forward traced (`torch.fx`) on a few of its task's inputs, and each layer's output units are followed through
what keeps them apart (elementwise activations, dropout, pooling, BatchNorm and LayerNorm with their
parameters, flattening, residual sums) to the layers that read them. A group is what must be permuted
together: the producing layer's rows (and bias), the norms' entries, the reading layer's columns (in blocks of
the flattened positions). Units that reach the output (the classes), or pass through an op not listed here,
are left alone. `canonical.unit_groups` then checks every group by running the network permuted.
"""

from __future__ import annotations

import inspect
import math
import operator

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

Member = tuple[str, int, int]  # (tensor, axis, block): permuted along `axis`, each unit `block` entries there

#: ops a unit passes through on its own (elementwise: its index stays where it is)
ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh,
               nn.Sigmoid, nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Identity,
               nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
               F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.tanh, F.sigmoid,
               F.softplus, F.softsign, F.hardtanh, F.hardswish, F.hardsigmoid, F.dropout, torch.relu, torch.tanh,
               torch.sigmoid, torch.exp, torch.abs, operator.neg,
               "relu", "tanh", "sigmoid", "exp", "abs", "neg", "contiguous", "clone")
#: ops that mix positions but keep each channel (axis 1) apart
POOLING = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
           nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
           nn.AdaptiveMaxPool3d, F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
           F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
           F.adaptive_max_pool2d, F.adaptive_max_pool3d)
#: elementwise ops of two tensors: two carriers of units merge their groups (a residual sum); a scalar passes
BINARY = (operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul, torch.div,
          "add", "sub", "mul", "div")
RESHAPES = (torch.flatten, nn.Flatten, "flatten", "view", "reshape")


def _is(op, kinds) -> bool:
    """Is `op` (a module, a function or a method's name) one of `kinds` (module classes, functions, names)?"""
    return any(op == k if isinstance(k, str) else isinstance(op, k) if isinstance(k, type) else op is k
               for k in kinds)


class _Groups:
    """Groups of units under construction: merged as residual sums tie them; a spoiled one is dropped."""

    def __init__(self):
        self.parent: list[int] = []
        self.members: list[list[Member]] = []
        self.key: list[list[str]] = []
        self.ok: list[bool] = []
        self.read: list[bool] = []

    def new(self, members: list[Member]) -> int:
        self.parent.append(len(self.parent))
        self.members.append(members)
        self.key.append([name for name, _, _ in members])
        self.ok.append(True)
        self.read.append(False)
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            g = self.parent[g]
        return g

    def merge(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[b] = a
            self.members[a] += self.members[b]
            self.key[a] += self.key[b]
            self.ok[a] = self.ok[a] and self.ok[b]
            self.read[a] = self.read[a] or self.read[b]
        return a


def trace_groups(model: nn.Module, example: Tensor) -> list[tuple[list[Member], list[str]]]:
    """The hidden-unit groups of `model` as its forward on `example` `[B, ...]` wires them: for each, the
    members permuted together and the key (the producing layers' weight and bias, whose rows sort the units).
    Raises what `torch.fx` raises on a forward it cannot trace (control flow on the data)."""
    params = inspect.signature(model.forward).parameters
    optional = {n: p.default for i, (n, p) in enumerate(params.items()) if i > 0 and p.default is not p.empty}
    gm = fx.symbolic_trace(model, concrete_args=optional or None)
    ShapeProp(gm).propagate(example)
    modules = dict(gm.named_modules())
    state = model.state_dict()
    groups = _Groups()
    units: dict[fx.Node, tuple[int, int, int]] = {}  # node -> (group, axis of its output, block)

    def shape(n) -> tuple[int, ...] | None:
        meta = n.meta.get("tensor_meta") if isinstance(n, fx.Node) else None
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def spoil(node: fx.Node) -> None:
        for a in node.all_input_nodes:
            if a in units:
                groups.ok[groups.find(units[a][0])] = False

    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            continue
        if node.op == "output":
            spoil(node)  # units that reach the output are the classes
            continue
        op = modules[node.target] if node.op == "call_module" else node.target
        carriers = [a for a in node.all_input_nodes if a in units]
        first = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        out = shape(node)
        if isinstance(op, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and node.op == "call_module":
            conv = not isinstance(op, nn.Linear)
            if (conv and op.groups != 1) or f"{node.target}.weight" not in state:  # grouped, or parametrised
                spoil(node)
                continue
            if first in units:
                g, axis, block = units[first]
                if axis != (1 if conv else len(shape(first)) - 1) or (conv and block != 1):
                    spoil(node)
                else:
                    g = groups.find(g)
                    groups.members[g].append((f"{node.target}.weight", 1, block))
                    groups.read[g] = True
            elif carriers:
                spoil(node)
            produced = [(f"{node.target}.{t}", 0, 1) for t in ("weight", "bias") if f"{node.target}.{t}" in state]
            units[node] = (groups.new(produced), 1 if conv else len(out) - 1, 1)
        elif isinstance(op, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm)):
            if first not in units:
                continue
            g, axis, block = units[first]
            layer = isinstance(op, nn.LayerNorm)
            if block != 1 or (axis != len(shape(first)) - 1 or len(op.normalized_shape) != 1 if layer else axis != 1):
                spoil(node)
                continue
            names = ("weight", "bias") if layer else ("weight", "bias", "running_mean", "running_var")
            groups.members[groups.find(g)] += [(f"{node.target}.{t}", 0, 1) for t in names
                                               if f"{node.target}.{t}" in state]
            units[node] = units[first]
        elif _is(op, ELEMENTWISE) and first in units and carriers == [first]:
            units[node] = units[first]
        elif _is(op, POOLING) and first in units and carriers == [first]:
            if units[first][1:] == (1, 1):
                units[node] = units[first]
            else:
                spoil(node)
        elif _is(op, RESHAPES) and first in units:
            g, axis, block = units[first]
            src = shape(first)
            if out == src:
                units[node] = units[first]
            elif out is not None and len(out) == 2 and out[0] == src[0] and axis == 1 and math.prod(src[1:]) == out[1]:
                units[node] = (g, 1, block * math.prod(src[2:]))  # channel-major: each unit's positions in a row
            else:
                spoil(node)
        elif op in (getattr, "size", "dim"):
            continue
        elif _is(op, BINARY) and carriers:
            others = [a for a in node.args if a not in units]
            scalars = all(not isinstance(a, fx.Node) or (shape(a) is not None and math.prod(shape(a)) == 1)
                          for a in others)
            a = carriers[0]
            if len(carriers) == 2 and units[a][1:] == units[carriers[1]][1:] and shape(a) == shape(carriers[1]):
                units[node] = (groups.merge(units[a][0], units[carriers[1]][0]), *units[a][1:])
            elif len(carriers) == 1 and scalars:
                units[node] = units[a]
            else:
                spoil(node)
        else:
            spoil(node)
    return [(groups.members[g], groups.key[g]) for g in range(len(groups.parent))
            if groups.find(g) == g and groups.ok[g] and groups.read[g]]
