"""`weightvae export ID --out FILE`: one network, by id, as a file that code without weightvae loads.

The id names an original (a row of the shards' `models.parquet`, e.g. `digits-cnn-0007/e004`, as ingest
stored it: with `ingest.canonicalize` a known architecture's hidden units are in canonical order, the
zoo file's function with its units sorted), its
reconstruction (`--kind reconstruction`; a reconstruction shares its original's id) or a sampled
network (`sample-digits-cnn-<layout>-0003`; found without `--kind`). The file holds the network's
state_dict and its properties: as a `.safetensors` file (tensors + string metadata,
`weightvae.tensorfile`; load it with `safetensors.torch.load_file` into the architecture's module,
`load_state_dict(strict=True)`), or a `.pt` file in the zoo file schema. Either kind of file
ingests back (`ingest.format: auto`) to the same vector.
"""

from __future__ import annotations

import argparse
import difflib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from weightvae import tensorfile
from weightvae.io import atomic_path
from weightvae.layout import Layout
from weightvae.params import StageError, add_inputs
from weightvae.records import file_name, zoo_record
from weightvae.shards import open_shard

FORMATS = ("safetensors", "pt")
KINDS = ("original", "reconstruction", "sample")


class ExportError(StageError):
    """A model that cannot be exported; the message names the id or file and what to do."""


def original_record(shards: str | Path, model_id: str) -> dict[str, Any]:
    """The original network `model_id` from the ingest shards, in the zoo file schema."""
    import pyarrow.parquet as pq

    shards = Path(shards)
    if not (shards / "models.parquet").exists():
        raise ExportError(f"{shards}: no models.parquet; run ingest (`dvc repro ingest`) or pass --shards")
    rows = pq.read_table(shards / "models.parquet", filters=[("id", "==", model_id)]).to_pylist()
    if not rows:
        ids = pq.read_table(shards / "models.parquet", columns=["id"]).column("id").to_pylist()
        raise ExportError(f"{model_id!r}: no such model in {shards / 'models.parquet'}" + _suggest(model_id, ids))
    r = rows[0]
    layout = Layout.from_dict(json.loads((shards / "layouts.json").read_text())[r["layout_id"]])
    vec = open_shard(shards, r["split"], r["layout_id"])[r["row"]]
    sd = layout.unflatten(torch.from_numpy(np.array(vec, dtype=np.float32)), json.loads(r["buffers"]))
    return zoo_record(sd, r["run_id"], r["task"], r["architecture"], json.loads(r["arch_kwargs"]), seed=r["seed"],
                      epoch=r["epoch"], hyperparameters=json.loads(r["hyperparameters"]),
                      metrics={k: r[k] for k in ("train_acc", "test_acc", "test_loss")}, layout_id=r["layout_id"],
                      split=r["split"])


def reconstructed_record(recon: str | Path, model_id: str, kind: str) -> dict[str, Any]:
    """A reconstruction (`kind="reconstruction"`, any split) or sample written by reconstruct."""

    recon = Path(recon)
    folders = ["samples"] if kind == "sample" else ["train", "val", "test"]
    for folder in folders:
        path = recon / folder / file_name(model_id)
        if path.exists():
            return torch.load(path, map_location="cpu", weights_only=True)
    known = [p.stem.replace("__", "/") for f in folders for p in sorted((recon / f).glob("*.pt"))]
    if not (recon / folders[0]).exists() and not known:
        raise ExportError(f"{recon}: no reconstructions; run reconstruct (`dvc repro reconstruct`) or pass --recon")
    raise ExportError(f"{model_id!r}: no {kind} of that id in {recon}" + _suggest(model_id, known))


def find_record(model_id: str, kind: str | None, shards: str | Path, recon: str | Path) -> dict[str, Any]:
    """The record of `model_id`; `kind=None`: a sample if reconstruct wrote one of that id, else the original."""
    if kind is None:
        from weightvae.records import file_name

        kind = "sample" if (Path(recon) / "samples" / file_name(model_id)).exists() else "original"
    if kind == "original":
        return original_record(shards, model_id)
    return reconstructed_record(recon, model_id, kind)


def write(record: dict[str, Any], out: str | Path, fmt: str) -> None:
    """Write `record` to `out` as `fmt` (safetensors | pt), atomically."""
    with atomic_path(out) as tmp:
        if fmt == "safetensors":
            tmp.write_bytes(tensorfile.record_bytes(record))
        else:
            torch.save(record, tmp)


def format_for(out: str | Path, fmt: str | None) -> str:
    """`--format`, else from the file's suffix (`.pt`/`.pth`: pt), else safetensors."""
    if fmt is not None:
        return fmt
    return "pt" if Path(out).suffix in (".pt", ".pth") else "safetensors"


def _suggest(model_id: str, ids: list[str]) -> str:
    close = difflib.get_close_matches(model_id, ids, n=3)
    if close:
        return f"; did you mean {', '.join(repr(c) for c in close)}?"
    return f" ({len(ids)} models there, e.g. {ids[0]!r})" if ids else ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", help="model id: an original (models.parquet `id`), a reconstruction or a sample")
    parser.add_argument("--out", required=True, help="file to write")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="file format (default: from --out's suffix; .pt/.pth -> pt, else safetensors)")
    parser.add_argument("--kind", choices=KINDS, default=None,
                        help="which network of that id (default: the sample of that id if any, else the original; "
                             "a reconstruction shares its original's id)")
    add_inputs(parser, "shards", "recon")


def run(args: argparse.Namespace) -> None:
    fmt = format_for(args.out, args.format)
    record = find_record(args.id, args.kind, args.shards, args.recon)  # an ExportError is one line (run_command)
    write(record, args.out, fmt)
    props = record["model_properties"]
    arch = props.get("architecture", {})
    print(f"export: {args.id} ({arch.get('name')}, task {props.get('task')}, "
          f"{sum(t.numel() for t in record['state_dict'].values())} values) -> {args.out} ({fmt})")
