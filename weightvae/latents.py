"""The latents table: one row per model with its code, written by the encode stage and read by reconstruct, probe
and the benchmarks. Its schema, writer and reader live here, apart from the codec, so a stage that reads codes
does not depend on the modules that make them.

Columns: id, split, task, architecture, layout_id, run_id, epoch, `latent` (the code, flattened, float32),
`latent_encoder` (the encoder's code before refinement, which evaluate scores as `vae_encoder`), and
`behaviour_kl_encoder` / `behaviour_kl` (on the probes, before and after refinement; null where the network
cannot be run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from weightvae.io import atomic_path

SCHEMA = pa.schema([("id", pa.string()), ("split", pa.string()), ("task", pa.string()),
                    ("architecture", pa.string()), ("layout_id", pa.string()), ("run_id", pa.string()),
                    ("epoch", pa.int64()), ("latent", pa.list_(pa.float32())),
                    ("latent_encoder", pa.list_(pa.float32())), ("behaviour_kl_encoder", pa.float64()),
                    ("behaviour_kl", pa.float64())])


def write_latents(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """The latents table, atomically, with a fixed schema (same rows -> same bytes)."""
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_latents(path: str | Path, split: str | None = None, layout_id: str | None = None,
                 column: str = "latent") -> tuple[list[dict[str, Any]], torch.Tensor]:
    """(rows without the codes, latents `[N, latent_size]` float32) of one split (or all) and one layout (or
    all), in file order. `column`: `latent` (refined: the codes) or `latent_encoder` (the encoder's alone). The
    chunk codec's codes on a joint zoo are as long as their network needs: read those a layout at a time."""
    table = pq.read_table(path)
    for key, value in (("split", split), ("layout_id", layout_id)):
        if value is not None:
            table = table.filter(pc.equal(table[key], value))
    latent = table.column(column).to_pylist()
    rows = table.drop([c for c in ("latent", "latent_encoder") if c in table.column_names]).to_pylist()
    if len({len(v) for v in latent}) > 1:
        raise ValueError(f"{path}: codes of {len({len(v) for v in latent})} lengths (a chunk codec on several "
                         "layouts); read one layout at a time (layout_id=...)")
    z = torch.tensor(np.asarray(latent, dtype=np.float32)) if latent else torch.zeros(0, 0)
    return rows, z
