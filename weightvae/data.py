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
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from weightvae import shards, standardize
from weightvae.chunks import Chunking
from weightvae.layout import Layout, layer_info
from weightvae.shards import SPLITS

#: Whole networks per batch are capped at this many weights in all (encode, reconstruct): a batch of 1M-weight
#: networks holds a few of them, so memory does not grow with the network's size beyond one or two networks.
BATCH_VALUES = 2**20


def rows_per_batch(batch_size: int, length: int) -> int:
    """`batch_size` whole networks of `length` weights, or fewer so that a batch holds at most `BATCH_VALUES`."""
    return max(1, min(batch_size, BATCH_VALUES // max(length, 1)))


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
    layout_id: only the models of this layout, at its own length (max_len: None) or padded to max_len.
    window: a sample is `window` consecutive `chunk_size`-long chunks of the model (`weightvae.chunks`) read from
        the shard without the rest of the model (`chunks`, `chunk_ids`), instead of the whole vector: what the
        chunk codec trains on, at a cost that does not grow with the model. A window sits at a random place in
        the train split, and at a fixed place per model (seeded by its index) in val and test. Chunks are
        numbered over every layout of the shards (sorted by id), as `weightvae.nets.ChunkVAE` numbers them; a
        window is at most as long as the shortest layout's chunks, so windows of any models stack.
    """

    def __init__(self, root: str | Path, split: str, dataset: str = "joint", normalize: bool = True,
                 topk: int | None = None, max_len: int | None = None, window: int | None = None,
                 chunk_size: int = 64, layout_id: str | None = None):
        self.root, self.split, self.dataset, self.normalize, self.topk = Path(root), split, dataset, normalize, topk
        self.window, self.layout_id = window, layout_id
        if split not in SPLITS:
            raise ValueError(f"split {split!r}: choose one of {list(SPLITS)}")
        if topk is not None and (split != "train" or topk < 1):
            raise ValueError(f"topk={topk} with split={split!r}: topk must be >= 1 and is only allowed for "
                             "split='train' (filtering held-out models by quality would bias evaluation)")
        manifest = json.loads((self.root / "manifest.json").read_text())
        if manifest.get("shard_format") != shards.VERSION:
            raise ValueError(f"{self.root}: shard format {manifest.get('shard_format')}, this code reads "
                             f"{shards.VERSION}; re-run ingest (dvc repro ingest)")
        layout_dicts = json.loads((self.root / "layouts.json").read_text())
        if layout_id is not None and layout_id not in layout_dicts:
            raise ValueError(f"layout_id={layout_id!r}: choose one of the shards' layouts {sorted(layout_dicts)}")
        self.stored_max_len = int(manifest["max_len"]) if layout_id is None else \
            Layout.from_dict(layout_dicts[layout_id]).length
        self.max_len = self.stored_max_len if max_len is None else int(max_len)
        if self.max_len < self.stored_max_len:
            raise ValueError(f"max_len={max_len} is shorter than the shards' max_len={self.stored_max_len}; "
                             "vectors are never truncated (re-run ingest with a smaller ingest.max_len, or pad more)")

        table = pq.read_table(self.root / "models.parquet")
        tasks = sorted(set(table.column("task").to_pylist()))
        if dataset != "joint" and dataset not in tasks:
            raise ValueError(f"dataset={dataset!r}: choose 'joint' or one of the shards' tasks {tasks}")
        keep = pc.equal(table["split"], split)  # filtered in Arrow: only this dataset's rows become Python dicts
        for column, value in (("task", None if dataset == "joint" else dataset), ("layout_id", layout_id)):
            if value is not None:
                keep = pc.and_(keep, pc.equal(table[column], value))
        rows = table.filter(keep).to_pylist()
        if topk is not None:
            rows = _top_runs(rows, topk)
        rows.sort(key=lambda r: r["row"])

        stats = json.loads((self.root / "stats.json").read_text())
        self.layouts = {lid: Layout.from_dict(d) for lid, d in layout_dicts.items() if layout_id in (None, lid)}
        self._stats = {lid: stats[lid]["tensors"] for lid in self.layouts}
        self._scalars = {lid: self._tensor_scalars(lay, stats[lid]["tensors"]) for lid, lay in self.layouts.items()}
        # per weight: only what whole vectors need (windows take their layer and mask from the chunking)
        self._vectors = {} if window else {lid: self._layout_vectors(lay) for lid, lay in self.layouts.items()}
        infos = {lid: layer_info(lay) for lid, lay in self.layouts.items()}
        self._chunkings, self._first_chunk, first = {}, {}, 0
        for lid in sorted(layout_dicts) if window else ():  # every layout: chunk numbers do not depend on filters
            c = Chunking([e["numel"] for e in layout_dicts[lid]["entries"] if e["learned"]], chunk_size)
            self._chunkings[lid], self._first_chunk[lid], first = c, first, first + c.count
        # one window length for every model (a batch stacks): at most the shortest layout's chunk count
        self._window_len = min(window, *(c.count for c in self._chunkings.values())) if window else 0
        for r in rows:
            r["layout"] = layout_dicts[r["layout_id"]]
            r["layer_info"] = infos[r["layout_id"]]  # the seed's (name, shape) list, for `reconstruct_weights`
            r["arch_kwargs"] = json.loads(r["arch_kwargs"])
            r["hyperparameters"] = json.loads(r["hyperparameters"])
            r["buffers"] = json.loads(r["buffers"])
        self.rows = rows
        self._shard_rows = [r["row"] for r in rows]
        self._data: dict[str, np.ndarray] = {}

    def _layout_vectors(self, layout: Layout) -> dict[str, Tensor]:
        """mask, layer `[max_len]` of a layout, computed once (padding: 0, -1)."""
        mask = torch.zeros(self.max_len)
        layer = torch.full((self.max_len,), -1, dtype=torch.long)
        for j, (_, s) in enumerate(layout.slices()):
            mask[s], layer[s] = 1.0, j
        return {"mask": mask, "layer": layer}

    @staticmethod
    def _tensor_scalars(layout: Layout, stats: dict[str, Any]) -> tuple[list[slice], Tensor, Tensor]:
        """Per learned tensor: its slice, train mean and (floored) std as float32, the numbers the per-weight
        vectors of `standardize.from_stats` repeat; standardising slice by slice keeps memory per layout flat."""
        slices = [s for _, s in layout.slices()]
        mean = torch.tensor([stats[name]["mean"] for name, _ in layout.slices()], dtype=torch.float32)
        scale = torch.tensor([standardize.layer_scale(stats[name]["mean"], stats[name]["std"])
                              for name, _ in layout.slices()], dtype=torch.float32)
        return slices, mean, scale

    def data(self, layout_id: str) -> np.ndarray:
        """The split's shard of one layout `[N, length]`, memory-mapped on first use in each process."""
        if layout_id not in self._data:
            self._data[layout_id] = shards.open_shard(self.root, self.split, layout_id)
        return self._data[layout_id]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_data": {}}  # spawned loader workers re-map the files, never copy them

    def __len__(self) -> int:
        return len(self.rows)

    def properties(self, i: int) -> dict[str, Any]:
        """The parquet row of sample i, plus `layout` (its layout dict) and `layer_info` (the seed's list of
        (name, shape) for `weightvae.layout.reconstruct_weights`); `arch_kwargs`, `hyperparameters` and
        `buffers` come parsed from their JSON, ready for `Layout.from_dict(...).unflatten(vec, buffers)`."""
        return dict(self.rows[i])

    def vector(self, i: int, pad: bool = True) -> Tensor:
        """Model i's whole (standardised) vector, padded `[max_len]` or at its own length `[length]`."""
        lid = self.rows[i]["layout_id"]
        n = self.layouts[lid].length
        w = torch.zeros(self.max_len if pad else n)  # padding: 0
        w.numpy()[:n] = self.data(lid)[self._shard_rows[i]]  # one copy, from the memory map
        if self.normalize:
            slices, mean, scale = self._scalars[lid]
            for j, s in enumerate(slices):
                w[s] = (w[s] - mean[j]) / scale[j]
        return w

    def _window(self, i: int) -> dict[str, Tensor]:
        row = self.rows[i]
        c = self._chunkings[row["layout_id"]]
        count = self._window_len
        gen = None if self.split == "train" else torch.Generator().manual_seed(i)  # held out: the same every epoch
        first = int(torch.randint(c.count - count + 1, (), generator=gen))
        lo, hi = c.span(first, count)
        w = torch.from_numpy(np.array(self.data(row["layout_id"])[self._shard_rows[i], lo:hi], dtype=np.float32))
        chunks = c.cut_span(w, first, count)  # [count, size]
        if self.normalize:  # each chunk lies in one tensor: its mean and std; padding stays 0
            _, mean, scale = self._scalars[row["layout_id"]]
            t = c.tensor[first:first + count, None]
            chunks = torch.where(c.mask[first:first + count], (chunks - mean[t]) / scale[t], 0.0)
        base = self._first_chunk[row["layout_id"]]
        return {"chunks": chunks, "chunk_ids": torch.arange(base + first, base + first + count)}

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} models")
        row = self.rows[i]
        if self.window:
            return {**self._window(i), "model_properties": dict(row), "dataset": []}
        v = self._vectors[row["layout_id"]]
        # mask and layer are the layout's own tensors, shared by its samples (read-only; collate stacks copies)
        return {"weight": self.vector(i), "mask": v["mask"], "layer": v["layer"],
                "model_properties": dict(row), "dataset": []}

    def normalization(self, layout_id: str) -> tuple[Tensor, Tensor]:
        """(mean, std) `[max_len]` of a layout from the train split; padding has mean 0, std 1."""
        return standardize.from_stats(self._stats[layout_id], self.layouts[layout_id].slices(), self.max_len)

    def denormalize(self, weights: Tensor, layout_ids: str | Sequence[str]) -> Tensor:
        """Inverse of the standardisation: weights `[B, max_len]` (or `[max_len]`) -> raw weights."""
        if isinstance(layout_ids, str):
            layout_ids = [layout_ids]
        single = weights.dim() == 1
        w = weights.reshape(1, -1) if single else weights
        if len(layout_ids) != len(w):
            raise ValueError(f"{len(layout_ids)} layout ids for {len(w)} rows")
        norm = {lid: self.normalization(lid) for lid in set(layout_ids)}
        mean = torch.stack([norm[lid][0] for lid in layout_ids]).to(w)
        std = torch.stack([norm[lid][1] for lid in layout_ids]).to(w)
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
    """Stack the tensors; keep `model_properties` and `dataset` as lists. A mask or layer tensor that every item
    shares (one layout) is expanded, not copied: `[B, L]` views of one `[L]` (read-only, as they are)."""
    keys = ("chunks", "chunk_ids") if "chunks" in items[0] else ("weight", "mask", "layer")
    out: dict[str, Any] = {}
    for k in keys:
        first = items[0][k]
        same = k in ("mask", "layer") and all(it[k] is first for it in items)
        out[k] = first.expand(len(items), *first.shape) if same else torch.stack([it[k] for it in items])
    out["model_properties"] = [it["model_properties"] for it in items]
    out["dataset"] = [it["dataset"] for it in items]
    return out


def split_properties(root: str | Path, split: str) -> dict[str, dict[str, Any]]:
    """id -> the properties (`ZooDataset.properties`: layout, buffers, ...) of every model of `split`."""
    ds = ZooDataset(root, split)
    return {r["id"]: r for r in (ds.properties(i) for i in range(len(ds)))}


class ZooDataModule(L.LightningDataModule):
    """Train/val/test loaders over the shards in `root`; `topk` applies to the train split only. With `window`
    (windows of chunks) every split gives windows, so no step holds a whole network (validation: at a fixed
    place per model)."""

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
            self.val_dataset = ZooDataset(self.root, "val", window=self.window, chunk_size=self.chunk_size,
                                          **self.kwargs)
        if stage in ("test", "predict", None) and self.test_dataset is None:
            self.test_dataset = ZooDataset(self.root, "test", window=self.window, chunk_size=self.chunk_size,
                                           **self.kwargs)

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
