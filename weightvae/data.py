"""Read the ingest shards: a `Dataset` over one split and a Lightning `DataModule`.

Both only read; `ingest` wrote the shards. A sample is one checkpoint's padded vector with
its mask, the index of the learned tensor (layer) each entry belongs to, and its properties.
Per-layer standardisation uses the train split's statistics of the model's own layout
(`stats.json`), so val/test models are normalised with numbers they did not contribute to.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pyarrow.parquet as pq
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from weightvae import FORMAT_VERSION, standardize
from weightvae.chunks import Chunking
from weightvae.layout import Layout, layer_info

SPLITS = ("train", "val", "test")


class ZooDataset(Dataset):
    """One split of the shards in `root`. Sample i is always the same model (index order = the
    shard's row order), so validation is deterministic and complete.

    dataset: "joint" for every task, else only the rows of that task.
    normalize: standardise each learned tensor with its layout's train mean/std; padding stays 0.
    topk: keep the k runs per task with the best final (highest-epoch) `train_acc`, with all their
        checkpoints. Ranked by training accuracy, never `test_acc`: the test set is what evaluate scores
        on. Only for split="train": filtering held-out splits by quality would bias evaluation, so other
        splits raise ValueError. Runs with unknown train_acc rank last.
    max_len: pad vectors to this length (>= the shards' max_len; None keeps the shards' own).
    window: a sample is `window` consecutive `chunk_size`-long chunks of the model (`weightvae.chunks`), at a
        random place, read from the shard without the rest of the model (`chunks`, `chunk_ids`), instead of the
        whole vector: what the chunk codec trains on, at a cost that does not grow with the model.
    """

    def __init__(self, root: str | Path, split: str, dataset: str = "joint", normalize: bool = True,
                 topk: int | None = None, max_len: int | None = None, window: int | None = None,
                 chunk_size: int = 64):
        self.root, self.split, self.dataset, self.normalize, self.topk = Path(root), split, dataset, normalize, topk
        self.window = window
        if split not in SPLITS:
            raise ValueError(f"split {split!r}: choose one of {list(SPLITS)}")
        if topk is not None and (split != "train" or topk < 1):
            raise ValueError(f"topk={topk} with split={split!r}: topk must be >= 1 and is only allowed for "
                             "split='train' (filtering held-out models by quality would bias evaluation)")
        manifest = json.loads((self.root / "manifest.json").read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{self.root}: shard format {manifest.get('format_version')}, this code reads "
                             f"{FORMAT_VERSION}; re-run ingest")
        self.stored_max_len = int(manifest["max_len"])
        self.max_len = self.stored_max_len if max_len is None else int(max_len)
        if self.max_len < self.stored_max_len:
            raise ValueError(f"max_len={max_len} is shorter than the shards' max_len={self.stored_max_len}; "
                             "vectors are never truncated (re-run ingest with a smaller ingest.max_len, or pad more)")

        table = pq.read_table(self.root / "models.parquet")
        tasks = sorted(set(table.column("task").to_pylist()))
        if dataset != "joint" and dataset not in tasks:
            raise ValueError(f"dataset={dataset!r}: choose 'joint' or one of the shards' tasks {tasks}")
        rows = [r for r in table.to_pylist() if r["split"] == split and dataset in ("joint", r["task"])]
        if topk is not None:
            rows = _top_runs(rows, topk)
        rows.sort(key=lambda r: r["row"])

        layout_dicts = json.loads((self.root / "layouts.json").read_text())
        stats = json.loads((self.root / "stats.json").read_text())
        self.layouts = {lid: Layout.from_dict(d) for lid, d in layout_dicts.items()}
        self._vectors = {lid: self._layout_vectors(self.layouts[lid], stats[lid]) for lid in self.layouts}
        infos = {lid: layer_info(lay) for lid, lay in self.layouts.items()}
        self._chunkings = {lid: Chunking([e.numel for e in lay.learned], chunk_size)
                           for lid, lay in self.layouts.items()} if window else {}
        for r in rows:
            r["layout"] = layout_dicts[r["layout_id"]]
            r["layer_info"] = infos[r["layout_id"]]  # the seed's (name, shape) list, for `reconstruct_weights`
            r["arch_kwargs"] = json.loads(r["arch_kwargs"])
            r["hyperparameters"] = json.loads(r["hyperparameters"])
            r["buffers"] = json.loads(r["buffers"])
        self.rows = rows
        self._shard_rows = [r["row"] for r in rows]
        self._data: np.ndarray | None = None

    def _layout_vectors(self, layout: Layout, stats: dict[str, Any]) -> dict[str, Tensor]:
        """mask, layer, mean, std `[max_len]` of a layout, computed once (padding: 0, -1, 0, 1)."""
        mask = torch.zeros(self.max_len)
        layer = torch.full((self.max_len,), -1, dtype=torch.long)
        for j, (_, s) in enumerate(layout.slices()):
            mask[s], layer[s] = 1.0, j
        mean, std = standardize.from_stats(stats["tensors"], layout.slices(), self.max_len)
        return {"mask": mask, "layer": layer, "mean": mean, "std": std}

    @property
    def data(self) -> np.ndarray:
        """The split's shard `[N, stored_max_len]`, memory-mapped on first use in each process."""
        if self._data is None:
            self._data = np.load(self.root / f"{self.split}.npy", mmap_mode="r")
        return self._data

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_data": None}  # spawned loader workers re-map the file, never copy it

    def __len__(self) -> int:
        return len(self.rows)

    def properties(self, i: int) -> dict[str, Any]:
        """The parquet row of sample i, plus `layout` (its layout dict) and `layer_info` (the seed's list of
        (name, shape) for `weightvae.layout.reconstruct_weights`); `arch_kwargs`, `hyperparameters` and
        `buffers` come parsed from their JSON, ready for `Layout.from_dict(...).unflatten(vec, buffers)`."""
        return dict(self.rows[i])

    def vector(self, i: int) -> Tensor:
        """Model i's whole (standardised, padded) vector `[max_len]`."""
        v = self._vectors[self.rows[i]["layout_id"]]
        w = torch.from_numpy(np.array(self.data[self._shard_rows[i]], dtype=np.float32))  # [stored_max_len]
        if self.max_len > self.stored_max_len:
            w = torch.nn.functional.pad(w, (0, self.max_len - self.stored_max_len))
        if self.normalize:
            w = (w - v["mean"]) / v["std"]  # padding: (0 - 0) / 1 = 0 exactly
        return w

    def _window(self, i: int) -> dict[str, Tensor]:
        row = self.rows[i]
        c, v = self._chunkings[row["layout_id"]], self._vectors[row["layout_id"]]
        count = min(self.window, c.count)
        first = int(torch.randint(c.count - count + 1, ()))
        lo, hi = c.span(first, count)
        w = torch.from_numpy(np.array(self.data[self._shard_rows[i], lo:hi], dtype=np.float32))
        if self.normalize:
            w = (w - v["mean"][lo:hi]) / v["std"][lo:hi]
        return {"chunks": c.cut_span(w, first, count), "chunk_ids": torch.arange(first, first + count)}

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} models")
        row = self.rows[i]
        if self.window:
            return {**self._window(i), "model_properties": dict(row), "dataset": []}
        v = self._vectors[row["layout_id"]]
        return {"weight": self.vector(i), "mask": v["mask"].clone(), "layer": v["layer"].clone(),
                "model_properties": dict(row), "dataset": []}

    def normalization(self, layout_id: str) -> tuple[Tensor, Tensor]:
        """(mean, std) `[max_len]` of a layout from the train split; padding has mean 0, std 1."""
        v = self._vectors[layout_id]
        return v["mean"].clone(), v["std"].clone()

    def denormalize(self, weights: Tensor, layout_ids: str | Sequence[str]) -> Tensor:
        """Inverse of the standardisation: weights `[B, max_len]` (or `[max_len]`) -> raw weights."""
        if isinstance(layout_ids, str):
            layout_ids = [layout_ids]
        single = weights.dim() == 1
        w = weights.reshape(1, -1) if single else weights
        if len(layout_ids) != len(w):
            raise ValueError(f"{len(layout_ids)} layout ids for {len(w)} rows")
        mean = torch.stack([self._vectors[lid]["mean"] for lid in layout_ids]).to(w)
        std = torch.stack([self._vectors[lid]["std"] for lid in layout_ids]).to(w)
        out = w * std + mean
        return out[0] if single else out


def _top_runs(rows: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    final: dict[tuple[str, str], tuple[int, float]] = {}  # (task, run) -> (epoch, train_acc) of its last checkpoint
    for r in rows:
        key, epoch = (r["task"], r["run_id"]), -1 if r["epoch"] is None else r["epoch"]
        acc = r["train_acc"]
        acc = float("-inf") if acc is None or math.isnan(acc) else acc
        if key not in final or epoch > final[key][0]:
            final[key] = (epoch, acc)
    keep = set()
    for task in {t for t, _ in final}:
        runs = sorted((run for t, run in final if t == task), key=lambda run: (-final[task, run][1], run))
        keep.update((task, run) for run in runs[:k])
    return [r for r in rows if (r["task"], r["run_id"]) in keep]


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the tensors; keep `model_properties` and `dataset` as lists."""
    keys = ("chunks", "chunk_ids") if "chunks" in items[0] else ("weight", "mask", "layer")
    out: dict[str, Any] = {k: torch.stack([it[k] for it in items]) for k in keys}
    out["model_properties"] = [it["model_properties"] for it in items]
    out["dataset"] = [it["dataset"] for it in items]
    return out


class ZooDataModule(L.LightningDataModule):
    """Train/val/test loaders over the shards in `root`; `topk` and `window` (windows of chunks) apply to the
    train split only: validation always sees whole models."""

    def __init__(self, root: str | Path, batch_size: int = 64, num_workers: int = 0, dataset: str = "joint",
                 normalize: bool = True, topk: int | None = None, max_len: int | None = None, seed: int = 0,
                 window: int | None = None, chunk_size: int = 64):
        super().__init__()
        self.save_hyperparameters()
        self.root, self.batch_size, self.num_workers, self.seed = root, batch_size, num_workers, seed
        self.kwargs = {"dataset": dataset, "normalize": normalize, "max_len": max_len}
        self.topk, self.window, self.chunk_size = topk, window, chunk_size
        self.train_dataset = self.val_dataset = self.test_dataset = None

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", None) and self.train_dataset is None:
            self.train_dataset = ZooDataset(self.root, "train", topk=self.topk, window=self.window,
                                            chunk_size=self.chunk_size, **self.kwargs)
        if stage in ("fit", "validate", None) and self.val_dataset is None:
            self.val_dataset = ZooDataset(self.root, "val", **self.kwargs)
        if stage in ("test", "predict", None) and self.test_dataset is None:
            self.test_dataset = ZooDataset(self.root, "test", **self.kwargs)

    @staticmethod
    def loader(ds: Dataset, batch_size: int = 64, shuffle: bool = False, num_workers: int = 0,
               seed: int = 0) -> DataLoader:
        """A loader with the zoo collate; shuffling draws from a generator seeded with `seed`."""
        gen = torch.Generator().manual_seed(seed) if shuffle else None
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, collate_fn=collate,
                          generator=gen, persistent_workers=num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.train_dataset, self.batch_size, True, self.num_workers, self.seed)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.val_dataset, self.batch_size, False, self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return self.loader(self.test_dataset, self.batch_size, False, self.num_workers)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
