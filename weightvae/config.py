"""The model's configuration, once: the `train:` section of params.yaml (`TrainParams`) owns every setting of the
codec, its loss and its training, with the defaults params.yaml has (tests/test_params_defaults.py keeps them
equal). The codecs' own configs (`weightvae.nets.VAEConfig`, `weightvae.model.LossConfig`) hold what a saved
model needs to be rebuilt; their defaults are read from here, so `VAEConfig(max_len=L)` is the default codec at
the default compression.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from weightvae.params import require

#: Lightning's precision names (`Trainer(precision=...)`).
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true")


@dataclass(frozen=True)
class TrainParams:
    """`train:` section of params.yaml; the defaults are params.yaml's (a test keeps them equal)."""

    codec: Literal["function", "linear", "conv", "chunk"] = "function"
    latent_dim: int | Literal["auto"] = "auto"  # flat latent values per model (function and linear codecs, or conv
    # with latent: flat); auto: the longest layout's learned weights / `compression`, rounded down (`latent_size`)
    compression: float = 16.0  # latent_dim: auto only: weights per latent value (1,706 / 16.0 -> 106)
    hidden: int = 512  # function codec: width of its encoder's and decoder's hidden layers
    chunk_size: int = 64  # chunk codec: values per chunk of a learned tensor
    chunk_latent: int = 16  # chunk codec: latent values per chunk
    window: int | None = None  # chunk codec: chunks per model in a training step (null: whole models)
    tensor_scales: bool = False  # linear codec: each tensor's log-std and mean lead the latent (README)
    scale_groups: Literal["tensor", "unit"] = "tensor"  # tensor_scales: a log-std and mean per tensor or per unit
    function_code: int = 0  # linear codec: latent values that code the network's predictions on the probes (README)
    preset: Literal["small", "d2nwg"] = "small"
    channels: tuple[int, ...] = (16,)
    blocks_per_level: int = 1
    latent: Literal["flat", "spatial"] = "spatial"
    latent_channels: int = 1
    loss: Literal["layer", "mse", "l1_logvar"] = "layer"
    kl_weight: float = 0.0
    input_noise: float = 0.0
    latent_noise: float = 0.0
    behaviour_weight: float = 100.0
    behaviour_batch: int = 64
    probe_count: int = 128
    encoder_probes: bool = False
    normalize: bool = True
    batch_size: int = 128
    learning_rate: float = 1e-3
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    weight_decay: float = 0.0
    max_epochs: int = 30
    autodecode_epochs: int = 60  # function codec: epochs of the decoder fitted with a free code per training
    # network after Lightning's (`weightvae.autodecode`); 0: off
    autodecode_code_lr: float = 0.1  # function codec: the free codes' first learning rate (Adam, cosine)
    seed: int = 0
    precision: str = "32-true"
    accelerator: str = "auto"
    devices: int | str = 1
    strategy: str = "auto"
    num_workers: int = 0
    gradient_checkpointing: bool = False
    dataset: str = "joint"
    topk: int | None = None
    limit_train_batches: int | float = 1.0
    resume: bool = False

    def __post_init__(self) -> None:
        require(len(self.channels) >= 1 and all(c >= 1 for c in self.channels), "train.channels",
                list(self.channels), "need one or more positive channel counts, one per level")
        require(self.codec in ("function", "linear", "conv", "chunk"), "train.codec", self.codec,
                "choose function, linear, conv or chunk")
        require(self.latent_dim == "auto" or isinstance(self.latent_dim, int), "train.latent_dim", self.latent_dim,
                "need 'auto' (weights / train.compression) or a count >= 1")
        require(self.compression > 0, "train.compression", self.compression,
                "need > 0 (weights per latent value; 16.0: a code 16x smaller than the network)")
        for key in ("blocks_per_level", *(("latent_dim",) if self.latent_dim != "auto" else ()), "latent_channels",
                    "batch_size", "max_epochs", "chunk_size", "chunk_latent", "hidden"):
            require(getattr(self, key) >= 1, f"train.{key}", getattr(self, key), "need >= 1")
        require(self.probe_count >= 1, "train.probe_count", self.probe_count, "need >= 1")
        for key in ("kl_weight", "input_noise", "latent_noise", "weight_decay", "num_workers", "behaviour_weight",
                    "behaviour_batch"):
            require(getattr(self, key) >= 0, f"train.{key}", getattr(self, key), "need >= 0")
        require(self.autodecode_epochs >= 0, "train.autodecode_epochs", self.autodecode_epochs, "need >= 0 (0: off)")
        require(self.autodecode_code_lr > 0, "train.autodecode_code_lr", self.autodecode_code_lr, "need > 0")
        require(self.learning_rate > 0, "train.learning_rate", self.learning_rate, "need > 0")
        require(self.lr_schedule in ("constant", "cosine"), "train.lr_schedule", self.lr_schedule,
                "choose constant or cosine")
        require(self.codec != "function" or self.behaviour_weight > 0, "train.behaviour_weight",
                self.behaviour_weight, "the function codec is trained through the networks' function: need > 0")
        require(self.preset == "small" or self.codec == "conv", "train.preset", self.preset,
                "the d2nwg preset is a conv codec: set train.codec: conv with it")
        require(self.chunk_latent <= self.chunk_size, "train.chunk_latent", self.chunk_latent,
                f"need <= train.chunk_size ({self.chunk_size}): a chunk's code is no longer than the chunk")
        require(self.codec == "chunk" or self.window is None, "train.window", self.window,
                "windows of chunks need train.codec: chunk (or set window: null)")
        require(self.window is None or self.window >= 1, "train.window", self.window, "need null or >= 1")
        require(self.window is None or self.behaviour_weight == 0 and self.loss in ("layer", "mse"), "train.window",
                self.window, "a window of chunks is not a whole network: set train.behaviour_weight: 0 and "
                "train.loss: layer or mse with it (or window: null)")
        require(self.codec == "linear" or not self.tensor_scales, "train.tensor_scales", self.tensor_scales,
                "per-tensor scales in the latent are a linear-codec feature: set train.codec: linear with it")
        require(self.function_code >= 0, "train.function_code", self.function_code, "need >= 0 (0: off)")
        require(self.codec == "linear" or not self.function_code, "train.function_code", self.function_code,
                "the function code is a linear-codec feature: set train.codec: linear with it (or function_code: 0)")
        require(not (self.function_code and self.encoder_probes), "train.function_code", self.function_code,
                "the function code and train.encoder_probes both give the encoder the network's outputs: "
                "set encoder_probes: false with it")
        require(self.latent_dim == "auto" or self.latent_dim > self.function_code, "train.latent_dim", self.latent_dim,
                f"the latent holds the {self.function_code} values of train.function_code plus the code: "
                f"need > {self.function_code}")
        require(self.scale_groups in ("tensor", "unit"), "train.scale_groups", self.scale_groups,
                "choose tensor or unit")
        require(self.scale_groups == "tensor" or self.tensor_scales, "train.scale_groups", self.scale_groups,
                "per-unit scales are a kind of tensor_scales: set train.tensor_scales: true with it")
        require(self.codec != "chunk" or not self.encoder_probes, "train.encoder_probes", self.encoder_probes,
                "the chunk codec encodes each chunk alone: set encoder_probes: false")
        require(self.topk is None or self.topk >= 1, "train.topk", self.topk, "need null or >= 1")
        require(self.precision in PRECISIONS, "train.precision", self.precision, f"choose one of {list(PRECISIONS)}")
        require(isinstance(self.limit_train_batches, int) and self.limit_train_batches >= 1
                or isinstance(self.limit_train_batches, float) and 0 < self.limit_train_batches <= 1,
                "train.limit_train_batches", self.limit_train_batches,
                "need a fraction in (0, 1] (e.g. 1.0: every batch) or a batch count >= 1")
        require(self.devices == "auto" or isinstance(self.devices, int) and (self.devices >= 1 or self.devices == -1),
                "train.devices", self.devices, "need a count >= 1, -1 (every device) or 'auto'")
        from lightning.pytorch.accelerators import AcceleratorRegistry
        from lightning.pytorch.strategies import StrategyRegistry

        accelerators = ["auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators())]
        require(self.accelerator in accelerators, "train.accelerator", self.accelerator,
                f"choose one of {accelerators}")
        strategies = ["auto", *StrategyRegistry.available_strategies()]
        require(self.strategy in strategies, "train.strategy", self.strategy,
                "choose 'auto', 'ddp', 'ddp_spawn' or another of Lightning's registered strategies")


def latent_size(p: TrainParams, length: int) -> int:
    """The latent values per model: `train.latent_dim`, or with `auto` the `length` learned weights (the longest
    layout's) / `train.compression`, rounded down so the code is at least that many times smaller (1,706 / 4.0 =
    426.5 -> 426), and at least 1."""
    if p.latent_dim != "auto":
        return int(p.latent_dim)
    return max(1, math.floor(length / p.compression + 1e-9))  # 1e-9: 3 / 0.3 = 9.999999999999998 is 10


def resolve_latent(p: TrainParams, length: int, log: Callable[[str], None] | None = None) -> TrainParams:
    """`p` with `latent_dim` a count (`latent_size`); `log` gets one line saying what `auto` chose."""
    if p.latent_dim != "auto":
        return p
    n = latent_size(p, length)
    flat = p.codec in ("linear", "function") or p.codec == "conv" and p.latent == "flat"  # the codecs it sizes
    if log is not None and flat:
        log(f"train: latent_dim auto: {n} latent values for the longest layout's {length:,} learned weights "
            f"(train.compression {p.compression:g}: {length / n:.2f}x)")
    return dataclasses.replace(p, latent_dim=n)
