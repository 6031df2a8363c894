"""How a state_dict maps to one flat weight vector and back.

Canonical order is the state_dict's own key order. That is the order in which the module
registered its parameters (for the zoo's networks: input layer to output layer, each weight
before its bias), the order `nn.Module.state_dict()` returns and `torch.save`/`torch.load`
keep. Sorting keys instead would put `fc10` before `fc2` and split layers apart. The order is
part of the layout's signature and is recorded in `to_dict()`, so nothing downstream relies on
dict ordering again: a state_dict with the same tensors in another order is another layout.
(safetensors files do not keep the saved order: a `.safetensors` file written by weightvae records it
in its metadata and is read back in that order (`weightvae.tensorfile`); any other is read in name
order, so the same network saved there by other code has a different layout than with `torch.save`.)

Floating tensors (float16/bfloat16/float32/float64) are *learned*: they form the vector, as
float32, which holds float16 and bfloat16 exactly (float64 is rounded). Other tensors
(integer and bool buffers such as BatchNorm's `num_batches_tracked`) stay out of the vector
and travel as JSON-friendly `buffers` so `unflatten` restores them.

Running variances (norm layers' `running_var`) are learned entries like any other, but a network never has a
negative one, and a decoded network may: BatchNorm would turn it into NaN outputs. `unflatten` and the batched
forward (`weightvae.functional`) clamp them at 0 (`is_variance`); the norm layer's `eps` keeps them usable.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

LEARNED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
BUFFER_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def to_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


@dataclass(frozen=True)
class TensorInfo:
    """One state_dict entry; `offset` is its start in the learned vector (-1 if not learned)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int
    numel: int
    learned: bool


def is_variance(name: str) -> bool:
    """A running variance: the `running_var` buffer PyTorch's norm layers (BatchNorm, InstanceNorm) keep."""
    return name.rsplit(".", 1)[-1] == "running_var"


class Layout:
    """The signature (names, shapes, dtypes, in order) of a state_dict."""

    def __init__(self, entries: list[TensorInfo] | tuple[TensorInfo, ...]):
        self.entries = tuple(entries)
        offset = 0
        for e in self.entries:
            if e.offset != (offset if e.learned else -1):
                raise ValueError(f"entry {e.name!r} has offset {e.offset}; expected {offset if e.learned else -1}")
            offset += e.numel if e.learned else 0
        self.learned = tuple(e for e in self.entries if e.learned)
        self.length = sum(e.numel for e in self.learned)
        sig = [[e.name, list(e.shape), e.dtype] for e in self.entries]
        # sha256 of the canonical JSON: stable across processes, Python versions and machines
        self.layout_id = hashlib.sha256(json.dumps(sig, separators=(",", ":")).encode()).hexdigest()[:16]
        self._learned_names = [e.name for e in self.learned]

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, Tensor]) -> Layout:
        entries, offset = [], 0
        for name, t in sd.items():
            if not isinstance(name, str):
                raise ValueError(f"state_dict key {name!r} is not a string")
            if not isinstance(t, Tensor):
                raise ValueError(f"state_dict[{name!r}] is a {type(t).__name__}, not a tensor")
            if t.layout != torch.strided or t.is_quantized:
                raise ValueError(f"state_dict[{name!r}] is a {t.layout} tensor; only dense tensors are supported")
            learned = t.dtype in LEARNED_DTYPES
            if not learned and t.dtype not in BUFFER_DTYPES:
                raise ValueError(f"state_dict[{name!r}] has dtype {dtype_name(t.dtype)}; supported: "
                                 f"{[dtype_name(d) for d in LEARNED_DTYPES + BUFFER_DTYPES]}")
            entries.append(TensorInfo(name, tuple(t.shape), dtype_name(t.dtype), offset if learned else -1,
                                      t.numel(), learned))
            offset += t.numel() if learned else 0
        return cls(entries)

    def slices(self) -> list[tuple[str, slice]]:
        """(name, slice into the flat vector) of each learned tensor, in layout order."""
        return [(e.name, slice(e.offset, e.offset + e.numel)) for e in self.learned]

    def check(self, sd: Mapping[str, Tensor]) -> None:
        """Raise ValueError unless `sd` has exactly this layout."""
        other = Layout.from_state_dict(sd)
        if other.layout_id != self.layout_id:
            raise ValueError(f"state_dict has layout {other.layout_id}, expected {self.layout_id}")

    def flatten(self, sd: Mapping[str, Tensor], check: bool = True) -> Tensor:
        """The learned tensors, in layout order, as one float32 vector `[length]`.
        `check=False` skips the layout check, for a state_dict this layout was just built from."""
        if check:
            self.check(sd)
        parts = [sd[n].detach().reshape(-1).float() for n in self._learned_names]
        return torch.cat(parts) if parts else torch.zeros(0)

    def buffers(self, sd: Mapping[str, Tensor]) -> dict[str, dict[str, Any]]:
        """The non-learned tensors as {name: {"dtype", "shape", "data": flat list}} (JSON-friendly)."""
        return {e.name: {"dtype": e.dtype, "shape": list(e.shape), "data": sd[e.name].reshape(-1).tolist()}
                for e in self.entries if not e.learned}

    def unflatten(self, vec: Tensor, buffers: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Tensor]:
        """Inverse of `flatten` + `buffers`: every tensor with its original dtype and shape (running variances
        clamped at 0: a decoded vector's may be negative)."""
        vec = vec.detach().reshape(-1)
        if vec.numel() != self.length:
            raise ValueError(f"vector has {vec.numel()} entries, layout {self.layout_id} needs {self.length}")
        buffers = buffers or {}
        out = {}
        for e in self.entries:
            if e.learned:
                t = vec[e.offset:e.offset + e.numel].to(to_dtype(e.dtype)).reshape(e.shape).clone()
                out[e.name] = t.clamp(min=0) if is_variance(e.name) else t
            else:
                if e.name not in buffers:
                    raise ValueError(f"buffer {e.name!r} of layout {self.layout_id} is missing")
                b = buffers[e.name]
                out[e.name] = torch.tensor(b["data"], dtype=to_dtype(b.get("dtype", e.dtype))).reshape(e.shape)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"layout_id": self.layout_id, "length": self.length, "order": "state_dict key order",
                "entries": [{"name": e.name, "shape": list(e.shape), "dtype": e.dtype, "offset": e.offset,
                             "numel": e.numel, "learned": e.learned} for e in self.entries]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Layout:
        layout = cls([TensorInfo(e["name"], tuple(e["shape"]), e["dtype"], e["offset"], e["numel"], e["learned"])
                      for e in d["entries"]])
        if "layout_id" in d and d["layout_id"] != layout.layout_id:
            raise ValueError(f"layout dict says id {d['layout_id']} but its entries hash to {layout.layout_id}")
        return layout

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Layout) and other.entries == self.entries

    def __hash__(self) -> int:
        return hash(self.layout_id)

    def __repr__(self) -> str:
        return f"Layout({self.layout_id}, {len(self.entries)} tensors, length {self.length})"


LayerInfo = list[tuple[str, tuple[int, ...]]]


def layer_info(layout: Layout) -> LayerInfo:
    """The seed's `layer_info`: (name, shape) of each learned tensor, in vector order."""
    return [(e.name, e.shape) for e in layout.learned]


def reconstruct_weights(flat: Tensor | Any, layer_info: LayerInfo) -> dict[str, Tensor]:
    """The seed's `reconstruct_weights(flat, layer_info)`: cut one flat vector into its state_dict.

    `flat` is one raw (not standardised) vector, e.g. `ZooDataset(..., normalize=False)[i]["weight"]`
    or `ds.denormalize(...)`; entries past the layer_info's total are padding and must be zero.
    Integer buffers are not in the vector: `Layout.unflatten(vec, buffers)` restores those too.
    """
    vec = torch.as_tensor(flat)
    if vec.dim() != 1:
        raise ValueError(f"flat has shape {list(vec.shape)}; pass one vector (for a batch, call once per row)")
    need = sum(math.prod(shape) for _, shape in layer_info)
    if vec.numel() < need:
        raise ValueError(f"flat has {vec.numel()} entries, layer_info needs {need}")
    if bool((vec[need:] != 0).any()):
        raise ValueError(f"flat has non-zero entries past the layer_info's {need} (padding is zero): "
                         "wrong layer_info for this vector?")
    out, offset = {}, 0
    for name, shape in layer_info:
        n = math.prod(shape)
        out[name] = vec[offset:offset + n].reshape(tuple(shape)).clone()
        offset += n
    return out
