"""Files inspected by worker processes, in chunks, at most two chunks per worker in flight: results come
back in the files' order whatever the number of workers, and memory does not grow with the zoo."""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from itertools import islice
from pathlib import Path

import torch

from weightvae.ingest.files import Loaded, Rejected, inspect_file
from weightvae.ingest.params import IngestParams


def _inspect_chunk(root: str, items: list[tuple[str, str | None]], fmt: str,
                   canonicalize: bool = False) -> list[Loaded | Rejected]:
    return [Rejected(rel, reason) if reason else inspect_file(root, rel, fmt, canonicalize) for rel, reason in items]


def _worker_init(parent: int) -> None:
    torch.set_num_threads(1)  # one process per core; nested threads would only contend
    if sys.platform.startswith("linux"):
        # A main process killed outright (SIGKILL, out of memory) would leave its workers waiting for work
        # forever, holding memory and the scratch file: have the kernel kill them with it.
        import ctypes
        import signal

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        except (AttributeError, OSError):  # no prctl in this C library: workers just may outlive a killed main
            return
        if os.getppid() != parent:  # the main process died before prctl
            os._exit(1)


def results(root: Path, items: list[tuple[str, str | None]], p: IngestParams) -> Iterator[Loaded | Rejected]:
    """Each file's result, in `items` order, whatever the number of workers. At most two chunks per
    worker are in flight, so memory does not grow with the zoo."""
    size = max(1, min(p.chunk_size, math.ceil(len(items) / p.workers)))
    chunks = [items[i:i + size] for i in range(0, len(items), size)]
    if p.workers == 1 or len(chunks) == 1:
        for c in chunks:
            yield from _inspect_chunk(str(root), c, p.format, p.canonicalize)
        return
    # fork: workers start in milliseconds; spawned ones would spend seconds importing torch
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    pool = ProcessPoolExecutor(p.workers, mp_context=ctx, initializer=_worker_init, initargs=(os.getpid(),))
    try:
        todo = iter(chunks)
        pending = deque(pool.submit(_inspect_chunk, str(root), c, p.format, p.canonicalize)
                        for c in islice(todo, 2 * p.workers))
        while pending:
            done = pending.popleft().result()
            if (c := next(todo, None)) is not None:
                pending.append(pool.submit(_inspect_chunk, str(root), c, p.format, p.canonicalize))
            yield from done
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
