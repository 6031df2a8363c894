"""`ingest:` params, and the split of a run: a salted hash of its id, so it never depends on the rest of the zoo."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from weightvae.params import StageError, require
from weightvae.shards import SPLITS

RUN_ID_RULES = ("auto", "parent", "stem")


class IngestError(StageError):
    """A zoo that cannot be ingested; the message names the file and what to do."""


@dataclass(frozen=True)
class IngestParams:
    """`ingest:` section of params.yaml. `workers` and `chunk_size` change speed only, never the output."""

    zoo_dir: str = "model_data/weights"
    max_len: int | None = None  # longer models are refused; readers pad whole vectors to it (None: the longest)
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train, val, test fractions of *runs*
    split_salt: str = "weightvae"
    on_error: Literal["fail", "skip"] = "fail"
    format: Literal["auto", "weightvae", "modelzoo", "state_dict"] = "auto"
    workers: int = 2
    chunk_size: int = 512
    canonicalize: bool = True  # sort hidden units of known architectures (function-preserving), see canonical.py
    run_id_from: str = "auto"  # bare state_dicts: auto | parent | stem | a regex (see run_id_of)

    def __post_init__(self) -> None:
        if self.run_id_from not in RUN_ID_RULES:
            try:
                re.compile(self.run_id_from)
            except re.error as e:
                require(False, "ingest.run_id_from", self.run_id_from,
                        f"choose one of {list(RUN_ID_RULES)} or a valid regular expression ({e})")
        require(self.max_len is None or self.max_len >= 1, "ingest.max_len", self.max_len, "need null or >= 1")
        require(all(f >= 0 for f in self.split) and abs(sum(self.split) - 1) < 1e-6, "ingest.split",
                list(self.split), "need three fractions (train, val, test) >= 0 that sum to 1")
        require(self.workers >= 1, "ingest.workers", self.workers, "need >= 1")
        require(self.chunk_size >= 1, "ingest.chunk_size", self.chunk_size, "need >= 1")


def split_of(run_id: str, salt: str, fractions: Sequence[float]) -> str:
    """The split of a run: a function of (run_id, salt) alone, so it never depends on the rest of the zoo."""
    u = (int.from_bytes(hashlib.sha256(f"{salt}\0{run_id}".encode()).digest()[:8], "big") >> 11) / 2**53  # [0, 1)
    cum = 0.0
    for name, f in zip(SPLITS, fractions):
        cum += f
        if u < cum:
            return name
    return [name for name, f in zip(SPLITS, fractions) if f > 0][-1]  # u above a rounded-down sum
