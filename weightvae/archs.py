"""Architectures of the zoo's networks, rebuildable from a name and kwargs.

Each entry has a plain `nn.Module` (used to evaluate any single network) and a hand-written *batched*
forward that runs M networks of the same architecture at once, each on its own batch (and its own
dropout mask), with parameters stacked along a leading model dimension. The batched forward is what
makes the zoo build in minutes; `tests/test_zoo.py` checks it against the module. What a network
computes on probe inputs (the behavioural term, latent refinement) runs through `weightvae.functional`,
for any architecture, except where `benchmarks/forward.py` measured the hand-written one faster
(`probe_forward`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CNN(nn.Module):
    """Small CNN in the spirit of the Model Zoos CNN: two 3x3 convs, a 2x2 max-pool, two linear layers.

    With the defaults on 8x8 digits: 1,706 parameters.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 8, channels: tuple[int, int] = (8, 8),
                 hidden: int = 24, num_classes: int = 10):
        super().__init__()
        c1, c2 = channels
        self.conv1 = nn.Conv2d(in_channels, c1, 3)
        self.conv2 = nn.Conv2d(c1, c2, 3)
        side = (image_size - 4) // 2
        self.fc1 = nn.Linear(c2 * side * side, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor, hidden_mask: Tensor | None = None) -> Tensor:
        """`hidden_mask` (already scaled) multiplies the hidden layer: dropout with a given mask."""
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2).flatten(1)
        h = F.relu(self.fc1(h))
        if hidden_mask is not None:
            h = h * hidden_mask
        return self.fc2(h)


class MLP(nn.Module):
    """Small MLP on flattened inputs; with the defaults on digits: 2,410 parameters."""

    def __init__(self, in_features: int = 64, hidden: int = 32, num_classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor, hidden_mask: Tensor | None = None) -> Tensor:
        h = F.relu(self.fc1(x.flatten(1)))
        if hidden_mask is not None:
            h = h * hidden_mask
        return self.fc2(h)


def _linear(p: Mapping[str, Tensor], name: str, h: Tensor) -> Tensor:
    """[M, B, in] -> [M, B, out] with per-model weights."""
    return torch.baddbmm(p[f"{name}.bias"].unsqueeze(1), h, p[f"{name}.weight"].transpose(1, 2))


def _cnn_batched(p: Mapping[str, Tensor], x: Tensor, hidden_mask: Tensor | None) -> Tensor:
    """M CNNs at once. x: [M, B, C, H, W]; returns logits [M, B, classes].

    The model dimension is folded into channels and run as a grouped convolution, which
    on CPU is several times faster than vmap or im2col at these sizes.
    """
    m, b, c, hh, ww = x.shape
    w1, w2 = p["conv1.weight"], p["conv2.weight"]  # [M, C1, C, 3, 3], [M, C2, C1, 3, 3]
    h = x.transpose(0, 1).reshape(b, m * c, hh, ww)
    h = F.relu(F.conv2d(h, w1.flatten(0, 1), p["conv1.bias"].flatten(), groups=m))
    h = F.relu(F.conv2d(h, w2.flatten(0, 1), p["conv2.bias"].flatten(), groups=m))
    h = F.max_pool2d(h, 2)  # [B, M*C2, S, S]
    h = h.reshape(b, m, -1).transpose(0, 1)  # [M, B, C2*S*S], same order as nn.Flatten
    h = F.relu(_linear(p, "fc1", h))
    if hidden_mask is not None:
        h = h * hidden_mask
    return _linear(p, "fc2", h)


def _mlp_batched(p: Mapping[str, Tensor], x: Tensor, hidden_mask: Tensor | None) -> Tensor:
    h = F.relu(_linear(p, "fc1", x.flatten(2)))
    if hidden_mask is not None:
        h = h * hidden_mask
    return _linear(p, "fc2", h)


@dataclass(frozen=True)
class Architecture:
    build: Callable[..., nn.Module]
    batched_forward: Callable[[Mapping[str, Tensor], Tensor, Tensor | None], Tensor] | None = None
    hidden_key: str = "hidden"  # kwarg that sets the width of the layer dropout acts on
    # the behavioural term and refinement run `batched_forward` instead of `weightvae.functional`'s generic one:
    # only where benchmarks/forward.py measured it faster in forward + backward (README, "Any architecture")
    probe_forward: bool = False


ARCHITECTURES: dict[str, Architecture] = {
    "cnn": Architecture(CNN, _cnn_batched),
    "mlp": Architecture(MLP, _mlp_batched, probe_forward=True),
}


def get_architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise KeyError(f"unknown architecture {name!r}; known architectures: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def build_model(name: str, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """Rebuild a network from the `architecture` entry stored in each zoo file."""
    kwargs = dict(kwargs or {})
    # YAML/torch round trips turn tuples into lists; modules take either.
    return get_architecture(name).build(**{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})


def hidden_width(name: str, kwargs: Mapping[str, Any]) -> int:
    import inspect

    arch = get_architecture(name)
    default = inspect.signature(arch.build).parameters[arch.hidden_key].default
    return int(kwargs.get(arch.hidden_key, default))


@torch.no_grad()
def evaluate_model(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Any]:
    """Accuracy, mean cross-entropy and predictions of one network on (x, y)."""
    model.eval()
    logits = model(x)
    pred = logits.argmax(1)
    return {
        "acc": (pred == y).double().mean().item(),
        "loss": F.cross_entropy(logits, y).item(),
        "pred": pred,
    }
