""".safetensors files of networks: deterministic bytes, the state_dict's order kept, metadata as strings.

safetensors is what code outside weightvae loads without pickle (`safetensors.torch.load_file`), but
the library's own writer is not byte-deterministic (its metadata map is a hash map: key order
changes from process to process) and its loader returns tensors in an arbitrary order, while a
state_dict's order is part of its layout (`weightvae.layout`). So this module writes the format
itself (https://huggingface.co/docs/safetensors: 8-byte little-endian header length, a JSON header
padded with spaces to a multiple of 8, then the raw little-endian tensor bytes), with sorted keys,
and records the order in the metadata key `state_dict_order`. Reading goes through the library
(which validates the file) and restores that order; a file without it is read in name order, the
same in every process.

Metadata of a network record (all strings, as the format requires; absent values are left out):
`format_version`, `run_id`, `task`, `architecture`, `arch_kwargs` (JSON), `epoch`, `layout_id`,
`source_id`, `split`, `sampler`, `anchor_id`, `model_properties` (the whole zoo-schema properties as
JSON: what `ingest` reads back) and `state_dict_order` (JSON list of names).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

ORDER_KEY = "state_dict_order"
PROPERTIES_KEY = "model_properties"

_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL"}
#: Flat metadata keys taken from `model_properties` (architecture is split into name and kwargs).
_FLAT = ("format_version", "run_id", "task", "epoch", "layout_id", "source_id", "split", "sampler", "anchor_id")


def to_bytes(tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """A safetensors file of `tensors` with string `metadata`, the same bytes for the same input.

    Data is laid out by decreasing element size, then name (as the library does, so every tensor
    is aligned for zero-copy loading); the state_dict order goes into `metadata[state_dict_order]`."""
    if sys.byteorder != "little":
        raise NotImplementedError("safetensors export writes the host's bytes and needs a little-endian host")
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta[ORDER_KEY] = json.dumps(list(tensors), separators=(",", ":"))
    header: dict[str, Any] = {"__metadata__": dict(sorted(meta.items()))}
    chunks, offset = [], 0
    for name in sorted(tensors, key=lambda n: (-tensors[n].element_size(), n)):
        t = tensors[name]
        if t.dtype not in _DTYPES:
            raise ValueError(f"tensor {name!r} has dtype {t.dtype}; safetensors export supports "
                             f"{sorted(str(d).removeprefix('torch.') for d in _DTYPES)}")
        data = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode()
    head += b" " * (-len(head) % 8)
    return len(head).to_bytes(8, "little") + head + b"".join(chunks)


def read_metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors file's bytes ({} if none)."""
    n = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8:8 + n]).get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise TypeError("__metadata__ is not a JSON object")
    return meta


def load(data: bytes) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file's bytes. Tensors come in their recorded
    `state_dict_order`, else sorted by name: never in the library's arbitrary order."""
    from safetensors.torch import load as st_load

    tensors = st_load(data)
    meta = read_metadata(data)
    order = sorted(tensors)
    if ORDER_KEY in meta:
        try:
            stored = json.loads(meta[ORDER_KEY])
        except json.JSONDecodeError as e:
            raise ValueError(f"metadata {ORDER_KEY!r} is not valid JSON: {e}") from None
        if not isinstance(stored, list) or sorted(map(str, stored)) != order:
            raise ValueError(f"metadata {ORDER_KEY!r} does not list exactly the file's tensors")
        order = stored
    return {k: tensors[k] for k in order}, meta


def record_metadata(record: Mapping[str, Any]) -> dict[str, str]:
    """String metadata of a zoo-schema record {"state_dict", "model_properties"}."""
    props = record["model_properties"]
    meta = {k: str(props[k]) for k in _FLAT if props.get(k) is not None}
    arch = props.get("architecture") or {}
    if arch:
        meta["architecture"] = str(arch["name"])
        meta["arch_kwargs"] = json.dumps(arch.get("kwargs", {}), sort_keys=True)
    meta[PROPERTIES_KEY] = json.dumps(props, sort_keys=True)
    return meta


def record_bytes(record: Mapping[str, Any]) -> bytes:
    """A zoo-schema record as safetensors bytes: its state_dict, its properties as metadata."""
    return to_bytes(record["state_dict"], record_metadata(record))


def load_record(data: bytes) -> dict[str, Any]:
    """Inverse of `record_bytes`: {"state_dict", "model_properties"} (properties {} if none stored)."""
    tensors, meta = load(data)
    props = json.loads(meta[PROPERTIES_KEY]) if PROPERTIES_KEY in meta else {}
    return {"state_dict": tensors, "model_properties": props}


def save_network(record: dict[str, Any], folder: Path, model_id: str) -> None:
    """A network record (zoo file schema) as `<id>.pt` and `<id>.safetensors` (same tensors and properties)."""
    from weightvae.records import file_name

    torch.save(record, folder / file_name(model_id))
    (folder / file_name(model_id, ".safetensors")).write_bytes(record_bytes(record))
