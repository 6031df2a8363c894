"""Chunked weights: a model's flat vector cut into fixed-size chunks, and put back exactly.

Each learned tensor of a layout is cut, in the layout's flat order, into `size`-long chunks; the last
chunk of a tensor is zero-padded, so a chunk never mixes two tensors and every chunk has one layer
identity (`tensor`) and a position inside it (`index`). A row-major `[out, in]` weight with `in = size`
gives one chunk per unit. Integer buffers are not in the vector (`weightvae.layout` keeps them aside),
so they never enter a chunk. The `chunk` codec (`weightvae.nets.ChunkVAE`) encodes each chunk on its own,
so a training step can take a window of chunks and its memory does not depend on the model's size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


class Chunking:
    """How vectors of tensors with `sizes` (numel per learned tensor, in layout order) are cut into chunks of
    `size` values."""

    def __init__(self, sizes: Sequence[int], size: int):
        if size < 1:
            raise ValueError(f"chunk size {size}: need >= 1")
        if not sizes or any(n < 1 for n in sizes):
            raise ValueError(f"tensor sizes {list(sizes)}: need one or more tensors of >= 1 value")
        self.sizes, self.size = tuple(int(n) for n in sizes), int(size)
        self.length = sum(self.sizes)
        counts = [math.ceil(n / size) for n in self.sizes]
        self.count = sum(counts)  # chunks per model
        #: [count] the learned tensor (layer) each chunk belongs to, and its position inside that tensor
        self.tensor = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
        self.index = torch.cat([torch.arange(c) for c in counts])
        #: [count] where each chunk starts in the flat vector, and how many real values it holds
        self.start = torch.tensor([0, *self.sizes[:-1]]).cumsum(0)[self.tensor] + self.index * size
        self.valid = torch.minimum(torch.tensor(self.sizes)[self.tensor] - self.index * size, torch.tensor(size))
        self.mask = torch.arange(size)[None, :] < self.valid[:, None]  # [count, size] True for real values

    def _gather(self, chunks: slice | Tensor) -> Tensor:
        """`[n, size]` where each entry of the chunks `chunks` comes from in the flat vector (`length`: the zero
        pad slot). Computed per call from per-chunk numbers: nothing per weight is kept but the bool mask."""
        pos = self.start[chunks][:, None] + torch.arange(self.size)[None, :]
        return torch.where(self.mask[chunks], pos, self.length)

    def cut(self, x: Tensor, chunks: Tensor | None = None) -> Tensor:
        """Flat vectors `[B, length]` -> chunks `[B, count, size]` (or only the chunks numbered `chunks`,
        `[B, W, size]`); padding is 0."""
        if x.dim() != 2 or x.shape[1] != self.length:
            raise ValueError(f"expected flat vectors [B, {self.length}], got {list(x.shape)}")
        padded = torch.cat([x, x.new_zeros(len(x), 1)], 1)
        idx = self._gather(slice(None) if chunks is None else chunks.cpu())
        return padded[:, idx.to(x.device)]

    def span(self, first: int, count: int) -> tuple[int, int]:
        """The flat range `[lo, hi)` that chunks `first .. first + count - 1` cover (what a window reads)."""
        last = first + count - 1
        return int(self.start[first]), int(self.start[last] + self.valid[last])

    def cut_span(self, values: Tensor, first: int, count: int) -> Tensor:
        """Chunks `first .. first + count - 1` `[count, size]` from `values`, the flat range `span(first, count)`
        alone: a window is read without the rest of the model."""
        lo, hi = self.span(first, count)
        if values.shape != (hi - lo,):
            raise ValueError(f"expected the {hi - lo} values of flat range [{lo}, {hi}), got {list(values.shape)}")
        idx = self._gather(slice(first, first + count))
        idx = torch.where(self.mask[first:first + count], idx - lo, hi - lo)
        return torch.cat([values, values.new_zeros(1)])[idx]

    def join(self, chunks: Tensor) -> Tensor:
        """Inverse of `cut`: chunks `[B, count, size]` -> flat vectors `[B, length]` (padding dropped)."""
        if chunks.dim() != 3 or tuple(chunks.shape[1:]) != (self.count, self.size):
            raise ValueError(f"expected chunks [B, {self.count}, {self.size}], got {list(chunks.shape)}")
        return chunks.reshape(len(chunks), -1)[:, self.mask.flatten().nonzero().squeeze(1).to(chunks.device)]
