"""What `train` hands Lightning's Trainer besides the model: checkpoints whose bytes do not depend on the folder
they are in, and a log without the two lines of Lightning's that no user can act on."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint


class FolderCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, saving its own state with paths relative to its folder: the checkpoint's bytes
    do not name the clone's folder (dvc.lock records them), and a resume in another folder keeps the best score
    (Lightning's own drops it, with a warning, when the folder it saved differs)."""

    @property
    def state_key(self) -> str:  # ModelCheckpoint's: a checkpoint saved before this class resumes as it did
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    @staticmethod
    def _map_paths(state: dict[str, Any], f: Callable[[str], str]) -> dict[str, Any]:
        out = {**state, **{k: f(state[k]) for k in ("best_model_path", "kth_best_model_path", "last_model_path")
                           if state.get(k)}}
        if "best_k_models" in state:
            out["best_k_models"] = {f(path): score for path, score in state["best_k_models"].items()}
        return out

    def state_dict(self) -> dict[str, Any]:
        return {**self._map_paths(super().state_dict(), lambda path: os.path.relpath(path, self.dirpath)),
                "dirpath": "."}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("dirpath") == ".":  # saved by this class: its paths are relative to the folder
            state_dict = {**self._map_paths(state_dict, lambda path: os.path.join(self.dirpath, path)),
                          "dirpath": self.dirpath}
        super().load_state_dict(state_dict)


def _not_the_litlogger_tip(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("💡 Tip: For seamless cloud logging")


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's tip to install litlogger, and torch's deprecation of `LeafSpec` (which Lightning's own code
    uses), left out of the log while Lightning runs; every other line and warning stays."""
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    log.addFilter(_not_the_litlogger_tip)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning)
            yield
    finally:
        log.removeFilter(_not_the_litlogger_tip)
