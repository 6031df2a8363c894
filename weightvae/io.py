"""File helpers shared by every stage: atomic writes, hashing, JSON.

Stages never leave a half-written output behind: everything is written to a temporary
sibling path first and renamed into place, which is atomic on POSIX file systems.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `path` (an empty folder if `is_dir`); on success it
    replaces `path`, on error it is removed.

    A process killed outright (SIGKILL, out of memory) cannot remove its temporary: the sibling
    `.<name>.<pid>.<random>.tmp` stays, and `path` is untouched or, if the kill fell between the two
    renames below, absent, never half-written. The next write of the same `path` removes such
    leftovers of dead processes (no DVC out or later stage reads them; they only take disk space)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        if is_dir:
            target.mkdir()
        yield target
        if path.is_dir() and not path.is_symlink():
            os.replace(path, tmp / f"{path.name}.old")  # the old folder aside in one rename; goes with tmp
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale_temporaries(path: Path) -> None:
    """Remove `atomic_path` temporaries of `path` left by processes that no longer run on this machine."""
    # mkdtemp's random part has no dots, so `.a.5.<pid>.<random>.tmp` (a temporary of `a.5`) never matches `a`
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[^.]+\.tmp")
    with os.scandir(path.parent) as entries:
        stale = [e.path for e in entries if (m := pattern.fullmatch(e.name)) and int(m[1]) != os.getpid()
                 and not _alive(int(m[1]))]
    for entry in stale:
        shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as sorted, indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
