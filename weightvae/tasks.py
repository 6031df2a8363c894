"""Tasks: the data a zoo's networks were trained on, with one fixed test set.

Every stage sees the same split and the same input scaling, so a checkpoint's stored
`test_acc` can be reproduced exactly by rebuilding the network and running it here.
The data ships inside scikit-learn: nothing is downloaded.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

#: Seed of the fixed train/test split of every built-in task. Never change it: stored
#: accuracies in existing zoos refer to this split.
SPLIT_SEED = 0
TEST_FRACTION = 0.3


@dataclass(frozen=True)
class TaskData:
    """Fixed train/test tensors of one task. Inputs are float32 `[N, ...]` (images `[N, C, H, W]`, tables
    `[N, F]`: whatever the task's networks take), labels int64 `[N]`."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int


def _stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class shuffled split; written out (not sklearn's) so it can never change under us."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(len(idx) * test_fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _digits(transform: Callable[[np.ndarray], np.ndarray] | None = None, name: str = "digits") -> TaskData:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]  # [N, 1, 8, 8], pixel values scaled to [0, 1]
    if transform is not None:
        x = transform(x)
    y = d.target.astype(np.int64)
    tr, te = _stratified_split(y, TEST_FRACTION, SPLIT_SEED)
    return TaskData(
        name=name,
        x_train=torch.from_numpy(np.ascontiguousarray(x[tr])),
        y_train=torch.from_numpy(y[tr]),
        x_test=torch.from_numpy(np.ascontiguousarray(x[te])),
        y_test=torch.from_numpy(y[te]),
        num_classes=10,
    )


def _digits_inverted() -> TaskData:
    """Digits with inverted intensities: a second offline task for joint zoos."""
    return _digits(lambda x: 1.0 - x, name="digits_inverted")


#: name -> loader. Loaders are cached by `get_task`, so each process builds a task once.
TASKS: dict[str, Callable[[], TaskData]] = {"digits": _digits, "digits_inverted": _digits_inverted}


@functools.cache
def get_task(name: str) -> TaskData:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    return TASKS[name]()
