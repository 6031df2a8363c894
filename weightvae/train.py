"""Train the weight VAE with Lightning: seeded, deterministic on CPU, logged with DVCLive.

Scale-out is Lightning's: `strategy: ddp` with `devices: 2` runs two CPU processes (gloo)
and Lightning's distributed sampler gives each rank a disjoint part of the data;
`accelerator: auto` uses a GPU when there is one. There is no CUDA-only code path.

Outputs: a self-describing export (`VAE.export()`: format version, hyperparameters,
state_dict) at `--out`, Lightning's own checkpoints (best and last, for `resume`) in
`--ckpt-dir`, and DVCLive's metrics and plots in `--live-dir`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import torch

from weightvae.io import atomic_path
from weightvae.params import load_section, require


@dataclass(frozen=True)
class TrainParams:
    """`train:` section of params.yaml."""

    preset: Literal["small", "d2nwg"] = "small"
    channels: tuple[int, ...] = (16, 32, 64)
    blocks_per_level: int = 1
    latent_dim: int = 64
    loss: Literal["layer", "mse", "l1_logvar"] = "layer"
    kl_weight: float = 1e-4
    input_noise: float = 0.0
    latent_noise: float = 0.0
    normalize: bool = True
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    max_epochs: int = 20
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
        for key in ("blocks_per_level", "latent_dim", "batch_size", "max_epochs"):
            require(getattr(self, key) >= 1, f"train.{key}", getattr(self, key), "need >= 1")
        for key in ("kl_weight", "input_noise", "latent_noise", "weight_decay", "num_workers"):
            require(getattr(self, key) >= 0, f"train.{key}", getattr(self, key), "need >= 0")
        require(self.learning_rate > 0, "train.learning_rate", self.learning_rate, "need > 0")
        require(self.topk is None or self.topk >= 1, "train.topk", self.topk, "need null or >= 1")


def build_module(p: TrainParams, max_len: int, layout_ids: list[str], n_layers: int):
    from weightvae.model import VAE, VAEConfig, vae_kwargs

    if p.preset == "d2nwg":
        cfg = VAEConfig.d2nwg(max_len)
    else:
        cfg = VAEConfig(max_len=max_len, channels=tuple(p.channels), blocks_per_level=p.blocks_per_level,
                        latent_dim=p.latent_dim, gradient_checkpointing=p.gradient_checkpointing)
    loss = {"loss": p.loss, "kl_weight": p.kl_weight, "learning_rate": p.learning_rate,
            "weight_decay": p.weight_decay, "input_noise": p.input_noise, "latent_noise": p.latent_noise}
    return VAE(vae_kwargs(cfg), loss, layout_ids=layout_ids, n_layers=n_layers, normalize=p.normalize)


class KeepBest(L.Callback):
    """Holds a copy of the weights at the best `val/loss` so far, in memory (no checkpoint re-load)."""

    def __init__(self) -> None:
        self.best, self.state = float("inf"), None

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        loss = trainer.callback_metrics.get("val/loss")
        if trainer.sanity_checking or loss is None or float(loss) >= self.best:
            return
        self.best = float(loss)
        self.state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def train(p: TrainParams, shards: str | Path, out: str | Path, ckpt_dir: str | Path, live_dir: str | Path,
          callbacks: list | None = None) -> dict[str, float]:
    """Fit the VAE on the shards' train split, validate on val; returns the final logged metrics."""
    from dvclive.lightning import DVCLiveLogger
    from lightning.pytorch.callbacks import ModelCheckpoint

    from weightvae.data import ZooDataModule
    from weightvae.model import VAE

    L.seed_everything(p.seed, workers=True)
    dm = ZooDataModule(shards, batch_size=p.batch_size, num_workers=p.num_workers, dataset=p.dataset,
                       normalize=p.normalize, topk=p.topk, seed=p.seed)
    dm.setup("fit")
    ds = dm.train_dataset
    layouts = json.loads((Path(shards) / "layouts.json").read_text())
    layout_ids = sorted(layouts)
    n_layers = max(sum(e["learned"] for e in lay["entries"]) for lay in layouts.values())
    model = build_module(p, ds.max_len, layout_ids, n_layers)
    if p.normalize:
        model.set_normalization({lid: ds.normalization(lid) for lid in layout_ids})

    ckpt_dir = Path(ckpt_dir)
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/loss", mode="min",
                           save_top_k=1, save_last=True, enable_version_counter=False)
    logger = DVCLiveLogger(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None)
    keep = KeepBest()
    trainer = L.Trainer(
        max_epochs=p.max_epochs, accelerator=p.accelerator, devices=p.devices, strategy=p.strategy,
        precision=p.precision, deterministic=True, logger=logger, callbacks=[best, keep, *(callbacks or [])],
        limit_train_batches=p.limit_train_batches, log_every_n_steps=1, enable_model_summary=False,
    )
    last = ckpt_dir / "last.ckpt"
    resume_from = str(last) if p.resume and last.exists() else None
    trainer.fit(model, datamodule=dm, ckpt_path=resume_from)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if trainer.is_global_zero:
        # Lightning's checkpoints carry paths and loop state; the export carries only what defines the model.
        if keep.state is not None:
            model.load_state_dict(keep.state)
        with atomic_path(out) as tmp:
            torch.save(model.export(), tmp)
    return metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    parser.add_argument("--shards", default="model_data/shards", help="ingest output (default: %(default)s)")
    parser.add_argument("--out", default="model_data/models/vae.ckpt", help="exported model (default: %(default)s)")
    parser.add_argument("--ckpt-dir", default="model_data/models/lightning",
                        help="Lightning checkpoints, kept for train.resume (default: %(default)s)")
    parser.add_argument("--live-dir", default="metrics/train", help="DVCLive folder (default: %(default)s)")


def run(args: argparse.Namespace) -> None:
    p = load_section(args.params, "train", TrainParams)
    metrics = train(p, args.shards, args.out, args.ckpt_dir, args.live_dir)
    print("train: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items())))
