"""Networks as a user of the seed's code defines them: their own classes, pickled whole into its zoo files.

Not part of weightvae: `tests/test_legacy.py` imports this folder with `import-legacy --path`, as a
user would point it at the folder holding their code.
"""

import os
from pathlib import Path

import torch
from torch import nn


class SeedCNN(nn.Module):
    """A small CNN of the seed's kind (conv, pool, two linear layers) on 8x8 inputs."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, width, 3), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(width * 9, 16), nn.ReLU(), nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Tattletale(SeedCNN):
    """Unpickling it runs code (as any pickled class may): it records which process loaded it."""

    def __setstate__(self, state):
        super().__setstate__(state)
        if os.environ.get("SEED_MODELS_EXHAUST"):  # as if the loading process ran out of memory here
            raise MemoryError("out of memory while unpickling")
        os.environ["SEED_MODELS_LOADED"] = "yes"
        marker = os.environ.get("SEED_MODELS_MARKER")
        if marker:
            Path(marker).write_text(str(os.getpid()))
