"""Which files of a zoo folder are checkpoints, and the symlink policy: a link may point inside the folder,
never out of it (its reason is recorded, and ingest fails or skips it)."""

from __future__ import annotations

import os
from pathlib import Path

from weightvae.ingest.formats import MODELZOO_CHECKPOINT

SUFFIXES = (".pt", ".pth", ".safetensors")


def _wanted(rel: str, fmt: str) -> bool:
    """Is the file at `rel` a checkpoint in format `fmt`? Model Zoos checkpoints have no suffix."""
    if MODELZOO_CHECKPOINT.fullmatch(rel):
        return fmt in ("auto", "modelzoo")
    return fmt != "modelzoo" and rel.endswith(SUFFIXES)


def discover(root: Path, fmt: str = "auto") -> tuple[list[tuple[str, str | None]], int]:
    """Checkpoint files under `root` as sorted (relative path, rejection reason or None), and the
    number of other files ignored. Symlinks must stay inside `root`; symlinked folders inside it
    are not followed (their files are reached through their real path)."""
    real_root = os.path.realpath(root)
    found, ignored = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = Path(os.path.relpath(full, root)).as_posix()
            is_dir = name in dirnames
            if not is_dir and not _wanted(rel, fmt):
                ignored += 1
                continue
            reason = None
            if os.path.islink(full):
                target = os.path.realpath(full)
                if os.path.commonpath([real_root, target]) != real_root:
                    reason = f"is a symlink pointing outside the zoo folder (to {target}); copy the file in instead"
                elif not os.path.exists(target):
                    reason = "is a broken symlink"
                elif is_dir:
                    continue
            if reason or not is_dir:
                found.append((rel, reason))
    return sorted(found), ignored
