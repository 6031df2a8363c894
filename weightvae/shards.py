"""The shard format that `ingest` writes and every stage reads: one place for its schema.

A shard folder holds::

    models.parquet             one row per checkpoint (`SCHEMA`), sorted by split (train, val, test) then id
    <split>/<layout_id>.npy    float32 [N, length]: the vectors of one split's models of one layout, no padding;
                               a model is row `row` of `<split>/<layout_id>.npy`
    layouts.json               {layout_id: Layout.to_dict()}
    stats.json                 {layout_id: per learned tensor mean/std over the train split}
    manifest.json              format version, max_len, the params that define the data, counts

One array per (split, layout): a joint zoo of a 2k- and a 1M-weight architecture stores each model at its own
length, never padded to the longest (readers that need one length pad in memory, per batch). The writer
streams row blocks and sums the train statistics in a fixed order, so the same data gives the same bytes.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from weightvae.layout import Layout

SPLITS = ("train", "val", "test")
#: Version of the shard folder (`manifest.json`'s `shard_format`); 2: one unpadded array per split and layout.
VERSION = 2

SCHEMA = pa.schema([
    ("id", pa.string()), ("run_id", pa.string()), ("split", pa.string()), ("task", pa.string()),
    ("architecture", pa.string()), ("arch_kwargs", pa.string()), ("layout_id", pa.string()),
    ("epoch", pa.int64()), ("seed", pa.int64()), ("hyperparameters", pa.string()),
    ("train_acc", pa.float64()), ("test_acc", pa.float64()), ("test_loss", pa.float64()),
    ("source_path", pa.string()), ("sha256", pa.string()), ("length", pa.int64()), ("row", pa.int64()),
    ("buffers", pa.string()),
])

BLOCK = 256  # rows per write block; set by the data alone so stats sum in the same order whatever the params
BLOCK_VALUES = 2**20  # ... and fewer rows for long models: a block's float64 statistics stay ~30 MiB


def shard_path(root: str | Path, split: str, layout_id: str) -> Path:
    """Where the vectors of `split`'s models of one layout live."""
    return Path(root) / split / f"{layout_id}.npy"


def open_shard(root: str | Path, split: str, layout_id: str) -> np.ndarray:
    """`[N, length]` float32, memory-mapped (no file: no model of that layout in that split, `[0, 0]`)."""
    path = shard_path(root, split, layout_id)
    return np.load(path, mmap_mode="r") if path.exists() else np.zeros((0, 0), dtype="<f4")


class Row(Protocol):
    """What the writer needs of a model: its split, layout, length, and where its vector is in the scratch file."""

    split: str
    layout_id: str
    length: int
    offset: int  # in float32 entries


def write_parquet(path: Path, rows: list[Any], row_index: list[int], group: int = 8192) -> None:
    """Fixed-size row groups: arrow holds one group at a time, and the file depends on the rows alone."""
    with pq.ParquetWriter(path, SCHEMA) as w:
        for s in range(0, len(rows), group):
            part = rows[s:s + group]
            w.write_table(pa.table({name: row_index[s:s + group] if name == "row" else [getattr(r, name) for r in part]
                                    for name in SCHEMA.names}, schema=SCHEMA))


def write_shards(out: Path, scratch: Path, rows: list[Row],
                 layouts: dict[str, Layout]) -> tuple[dict[str, Any], list[int]]:
    """Write `<split>/<layout_id>.npy` block by block from the scratch file (rows in their final order); returns
    the per-layout, per-tensor train statistics and each row's index in its shard."""
    acc: dict[str, dict[str, Any]] = {}
    row_index = [0] * len(rows)
    fd = os.open(scratch, os.O_RDONLY)
    try:
        parts: dict[tuple[str, str], list[int]] = {}  # (split, layout) -> its rows, in order
        for i, r in enumerate(rows):
            parts.setdefault((r.split, r.layout_id), []).append(i)
        for split in SPLITS:
            for lid in sorted(layouts):
                part = parts.get((split, lid))
                if not part:
                    continue
                length = layouts[lid].length
                (out / split).mkdir(exist_ok=True)
                with open(shard_path(out, split, lid), "wb") as f:
                    np.lib.format.write_array_header_1_0(
                        f, {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False,
                            "shape": (len(part), length)})
                    per_block = max(1, min(BLOCK, BLOCK_VALUES // max(length, 1)))
                    for start in range(0, len(part), per_block):
                        block = [rows[i] for i in part[start:start + per_block]]
                        buf = np.empty((len(block), length), dtype="<f4")  # [b, length]
                        for i, r in enumerate(block):
                            buf[i] = np.frombuffer(os.pread(fd, 4 * length, 4 * r.offset), dtype="<f4")
                        if split == "train":
                            _accumulate(acc, lid, buf, layouts[lid])
                        f.write(buf.tobytes())
                for k, i in enumerate(part):
                    row_index[i] = k
    finally:
        os.close(fd)
    return _stats(acc, layouts), row_index


def _stats(acc: dict[str, dict[str, Any]], layouts: dict[str, Layout]) -> dict[str, Any]:
    stats = {}
    for lid in sorted(layouts):
        lay, a = layouts[lid], acc.get(lid)
        tensors = {}
        for j, e in enumerate(lay.learned):
            if a is None or e.numel == 0:  # no training model of this layout (or no entry): identity
                mean, std = 0.0, 1.0
            else:
                n = a["count"] * e.numel
                m1, m2 = a["s1"][j] / n, a["s2"][j] / n
                # the raw std: readers floor it with weightvae.standardize.layer_scale
                mean, std = float(a["shift"][j] + m1), math.sqrt(max(m2 - m1 * m1, 0.0))
            tensors[e.name] = {"mean": mean, "std": std}
        stats[lid] = {"train_count": 0 if a is None else a["count"], "tensors": tensors}
    return stats


def _accumulate(acc: dict[str, dict[str, Any]], lid: str, buf: np.ndarray, lay: Layout) -> None:
    """Add a block `[b, length]` of one layout's train vectors to its per-tensor sums; shifted sums (shift = the
    layout's first train model) keep the variance free of cancellation."""
    starts = np.array([e.offset for e in lay.learned])
    sizes = np.array([e.numel for e in lay.learned])
    x = buf.astype(np.float64)  # [b, length]
    nz = sizes > 0  # reduceat cannot sum an empty segment (a zero-element tensor): leave those at 0

    def sums(v: np.ndarray) -> np.ndarray:
        out = np.zeros(len(sizes))
        out[nz] = np.add.reduceat(v, starts[nz])
        return out

    if lid not in acc:
        shift = sums(x[0]) / np.maximum(sizes, 1)
        acc[lid] = {"count": 0, "shift": shift, "s1": np.zeros(len(sizes)), "s2": np.zeros(len(sizes))}
    a = acc[lid]
    d = x - np.repeat(a["shift"], sizes)
    a["s1"] += sums(d.sum(0))
    a["s2"] += sums((d * d).sum(0))
    a["count"] += len(buf)
