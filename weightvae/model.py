"""The weight VAE: a plain `nn.Module` (`WeightVAE`) and its thin Lightning wrapper (`VAE`).

A flat weight vector `[B, L]` is padded and reshaped into a one-channel image `[B, 1, H, W]`
so convolutions can share parameters across it (the field's usual recipe). Everything that
leaves the model is flat `[B, L]` again, and every loss takes a `mask` so padding never counts.

Image shape rule (`image_shape`): with `d = 2 ** (levels - 1)` (the total downsampling),
`W = ceil(sqrt(L))` rounded up to a multiple of `d`, then `H = ceil(L / W)` rounded up to a
multiple of `d`. So `H * W >= L`, the image is near square, and it halves cleanly at each level.
The `d2nwg` preset instead maps the vector with a linear layer to a fixed 1x64x64 image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from weightvae import FORMAT_VERSION

# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class VAEConfig:
    """Architecture of the VAE. `preset="d2nwg"` ignores the size fields and builds the seed's
    AutoencoderKL (linear to 4,096 -> 1x64x64, channels 128/128/256, 2 ResNet blocks per level,
    latent 4x16x16)."""

    max_len: int
    preset: Literal["small", "d2nwg"] = "small"
    channels: tuple[int, ...] = (16, 32, 64)
    blocks_per_level: int = 1
    latent_dim: int = 64
    gradient_checkpointing: bool = False
    cond_dim: int = 0  # size of the function signature fed to the encoder beside the weights (0 = off)
    latent: Literal["flat", "spatial"] = "flat"  # flat vector of latent_dim, or latent_channels per bottom pixel
    latent_channels: int = 1

    @staticmethod
    def d2nwg(max_len: int) -> VAEConfig:
        return VAEConfig(max_len=max_len, preset="d2nwg", channels=(128, 128, 256), blocks_per_level=2)


def image_shape(length: int, levels: int) -> tuple[int, int]:
    """Near-square `(H, W)` with `H * W >= length`, both multiples of `2 ** (levels - 1)`."""
    d = 2 ** (levels - 1)
    w = math.ceil(math.ceil(math.sqrt(length)) / d) * d
    h = math.ceil(math.ceil(length / w) / d) * d
    return h, w


# ----------------------------------------------------------------------------- posterior


class DiagonalGaussian:
    """q(z|x) = N(mean, diag(std^2)); `kl()` is KL(q || N(0, I)) summed over latent dims, `[B]`."""

    def __init__(self, params: Tensor):
        self.mean, logvar = params.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).flatten(1).sum(1)


# ----------------------------------------------------------------------------- blocks


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, c // 4) if c >= 8 else 1, c)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.body = nn.Sequential(_norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1),
                                  _norm(c_out), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


def _run(blocks: nn.ModuleList, x: Tensor, ckpt: bool) -> Tensor:
    for b in blocks:
        x = checkpoint(b, x, use_reentrant=False) if ckpt and torch.is_grad_enabled() else b(x)
    return x


# ----------------------------------------------------------------------------- plain model


class WeightVAE(nn.Module):
    """Conv VAE over weight vectors. `encode`/`decode` work on flat vectors; `get_input` does the
    reshape so callers never handle images."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        ch, levels = cfg.channels, len(cfg.channels)
        if cfg.preset == "d2nwg":
            self.image_hw = (64, 64)
            self.proj_in = nn.Linear(cfg.max_len, 64 * 64)  # the seed's input projection
            self.proj_out = nn.Linear(64 * 64, cfg.max_len)
            z_channels = 4
        else:
            self.image_hw = image_shape(cfg.max_len, levels)
            self.proj_in = self.proj_out = None
        h, w = self.image_hw
        d = 2 ** (levels - 1)
        bottom = (ch[-1], h // d, w // d)

        enc: list[nn.Module] = [nn.Conv2d(1, ch[0], 3, padding=1)]
        c = ch[0]
        for i, c_out in enumerate(ch):
            for _ in range(cfg.blocks_per_level):
                enc.append(ResBlock(c, c_out))
                c = c_out
            if i < levels - 1:
                enc.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        enc += [_norm(c), nn.SiLU()]
        self.encoder = nn.ModuleList(enc)

        dec: list[nn.Module] = []
        for i, c_out in reversed(list(enumerate(ch))):
            for _ in range(cfg.blocks_per_level):
                dec.append(ResBlock(c, c_out))
                c = c_out
            if i > 0:
                dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)]
        dec += [_norm(c), nn.SiLU(), nn.Conv2d(c, 1, 3, padding=1)]
        self.decoder = nn.ModuleList(dec)

        if cfg.preset == "d2nwg":  # latent is a 4 x 16 x 16 feature map
            self.to_latent = nn.Conv2d(bottom[0], 2 * z_channels, 1)
            self.from_latent = nn.Conv2d(z_channels, bottom[0], 1)
            self.latent_shape: tuple[int, ...] = (z_channels, bottom[1], bottom[2])
        else:
            cond = min(cfg.cond_dim, 256) if cfg.cond_dim else 0
            self.cond_proj = nn.Sequential(nn.Linear(cfg.cond_dim, cond), nn.SiLU()) if cfg.cond_dim else None
            if cfg.latent == "spatial":  # latent_channels per pixel of the bottom feature map: no global bottleneck
                self.to_latent = nn.Conv2d(bottom[0] + cond, 2 * cfg.latent_channels, 1)
                self.from_latent = nn.Conv2d(cfg.latent_channels, bottom[0], 1)
                self.latent_shape = (cfg.latent_channels, bottom[1], bottom[2])
            else:  # a flat latent vector
                n = math.prod(bottom)
                self.to_latent = nn.Linear(n + cond, 2 * cfg.latent_dim)
                self.from_latent = nn.Sequential(nn.Linear(cfg.latent_dim, n), nn.Unflatten(1, bottom))
                self.latent_shape = (cfg.latent_dim,)

    # [B, L] -> [B, 1, H, W]
    def get_input(self, x: Tensor) -> Tensor:
        assert x.dim() == 2 and x.shape[1] == self.cfg.max_len, \
            f"expected flat weights [B, {self.cfg.max_len}], got {list(x.shape)}"
        if self.proj_in is not None:
            return self.proj_in(x).view(-1, 1, *self.image_hw)
        h, w = self.image_hw
        return F.pad(x, (0, h * w - x.shape[1])).view(-1, 1, h, w)

    # [B, 1, H, W] -> [B, L]
    def _to_flat(self, img: Tensor) -> Tensor:
        flat = img.flatten(1)
        return self.proj_out(flat) if self.proj_out is not None else flat[:, : self.cfg.max_len]

    def encode(self, x: Tensor, cond: Tensor | None = None) -> DiagonalGaussian:
        """x: flat `[B, L]` (+ cond `[B, cond_dim]`, the function signature) -> posterior over `[B, *latent_shape]`."""
        h = _run(self.encoder, self.get_input(x), self.cfg.gradient_checkpointing)
        if self.cfg.preset == "d2nwg":
            return DiagonalGaussian(self.to_latent(h))
        c = None
        if self.cond_proj is not None:
            assert cond is not None and cond.shape == (len(x), self.cfg.cond_dim), \
                "encoder needs the function signature"
            c = self.cond_proj(cond)  # [B, cond]
        if self.cfg.latent == "spatial":
            if c is not None:
                h = torch.cat([h, c[:, :, None, None].expand(-1, -1, *h.shape[2:])], 1)
        else:
            h = h.flatten(1) if c is None else torch.cat([h.flatten(1), c], 1)
        return DiagonalGaussian(self.to_latent(h))

    def decode(self, z: Tensor) -> Tensor:
        """z: `[B, *latent_shape]` -> flat `[B, L]`."""
        h = _run(self.decoder, self.from_latent(z), self.cfg.gradient_checkpointing)
        return self._to_flat(h)

    def forward(self, x: Tensor, sample_posterior: bool = True, cond: Tensor | None = None
                ) -> tuple[Tensor, DiagonalGaussian]:
        posterior = self.encode(x, cond)
        z = posterior.sample() if sample_posterior else posterior.mode()
        recon = self.decode(z)
        assert recon.shape == x.shape, f"reconstruction {list(recon.shape)} != input {list(x.shape)}"
        return recon, posterior


# ----------------------------------------------------------------------------- losses


def masked_mse(x: Tensor, recon: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over real (mask=1) entries only. All `[B, L]`."""
    assert x.shape == recon.shape == mask.shape, f"{list(x.shape)} {list(recon.shape)} {list(mask.shape)}"
    return ((recon - x).pow(2) * mask).sum() / mask.sum().clamp_min(1)


def layerwise_mse(x: Tensor, recon: Tensor, layer: Tensor, n_layers: int) -> Tensor:
    """MSE averaged within each layer, then over the layers present, then over the batch, so a
    10-weight bias counts as much as a 600-weight kernel (Schürholt et al.). `layer` is `[B, L]`,
    the layer index of each entry, -1 for padding."""
    assert x.shape == recon.shape == layer.shape, f"{list(x.shape)} {list(recon.shape)} {list(layer.shape)}"
    assert int(layer.max()) < n_layers, f"layer index {int(layer.max())} >= n_layers {n_layers}"
    b = x.shape[0]
    real = layer >= 0
    idx = (torch.arange(b, device=x.device).unsqueeze(1) * n_layers + layer.clamp_min(0))[real]
    sq = (recon - x).pow(2)[real]
    sums = torch.zeros(b * n_layers, device=x.device, dtype=sq.dtype).index_add_(0, idx, sq)
    counts = torch.zeros(b * n_layers, device=x.device, dtype=sq.dtype).index_add_(0, idx, torch.ones_like(sq))
    present = counts > 0
    per_layer = sums[present] / counts[present]
    # average over layers within each sample, then over samples
    sample = torch.div(torch.nonzero(present).squeeze(1), n_layers, rounding_mode="floor")
    per_sample = torch.zeros(b, device=x.device, dtype=sq.dtype).index_add_(0, sample, per_layer)
    n_present = torch.zeros(b, device=x.device, dtype=sq.dtype).index_add_(0, sample, torch.ones_like(per_layer))
    return (per_sample / n_present.clamp_min(1)).mean()


# ----------------------------------------------------------------------------- Lightning wrapper


@dataclass(frozen=True)
class LossConfig:
    loss: Literal["layer", "mse", "l1_logvar"] = "layer"
    kl_weight: float = 1e-4
    learning_rate: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    input_noise: float = 0.0  # std of Gaussian noise on (normalised) inputs during training (p-diff)
    latent_noise: float = 0.0  # std of Gaussian noise on latents during training (p-diff)
    behaviour_weight: float = 0.0  # weight of KL(original || reconstruction) of outputs on probe inputs
    probe_count: int = 128  # probe inputs (from the task's training set) for the behavioural term / signature
    encoder_probes: bool = False  # feed the encoder the input network's outputs on the probes


class VAE(L.LightningModule):
    """Lightning wrapper around `WeightVAE`: steps, losses, optimiser, and the normalisation
    statistics (buffers, so a checkpoint alone can turn outputs back into state_dicts)."""

    def __init__(self, vae: dict[str, Any], loss: dict[str, Any] | None = None,
                 layout_ids: Sequence[str] = (), n_layers: int = 1, normalize: bool = True,
                 functional: Mapping[str, Mapping[str, Any]] | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.cfg = VAEConfig(**{**vae, "channels": tuple(vae.get("channels", VAEConfig.channels))})
        self.loss_cfg = LossConfig(**(loss or {}))
        self.net = WeightVAE(self.cfg)
        self.layout_ids = list(layout_ids)
        self.n_layers = n_layers
        self.normalize = normalize  # inputs are per-layer standardised; outputs are undone with norm_*
        n = max(1, len(self.layout_ids))
        self.register_buffer("norm_mean", torch.zeros(n, self.cfg.max_len))
        self.register_buffer("norm_std", torch.ones(n, self.cfg.max_len))
        if self.loss_cfg.loss == "l1_logvar":  # D2NWG: L1 scaled by a learned log-variance
            self.logvar = nn.Parameter(torch.zeros(()))
        # "task/layout_id" -> {"arch", "kwargs", "task", "layout"}: what is needed to run the networks
        # of one layout on one task (a layout can be trained on several tasks; each has its own probes)
        self.functional = {k: dict(v) for k, v in (functional or {}).items()}
        self._layouts = {}
        if self.functional:
            from weightvae.layout import Layout

            self._layouts = {k: Layout.from_dict(v["layout"]) for k, v in self.functional.items()}

    # ---- normalisation
    def set_normalization(self, stats: Mapping[str, tuple[Tensor, Tensor]]) -> None:
        """stats: layout_id -> (mean `[L]`, std `[L]`), as the dataset computed them on train."""
        for i, lid in enumerate(self.layout_ids):
            mean, std = stats[lid]
            self.norm_mean[i] = mean[: self.cfg.max_len]
            self.norm_std[i] = std[: self.cfg.max_len]

    def denormalize(self, x: Tensor, layout_ids: Sequence[str]) -> Tensor:
        if not self.normalize:
            return x
        rows = torch.tensor([self.layout_ids.index(lid) for lid in layout_ids], device=x.device)
        return x * self.norm_std[rows] + self.norm_mean[rows]

    # ---- the interface researchers expect
    def get_input(self, batch: Mapping[str, Any] | Tensor) -> Tensor:
        """Batch dict (`weight` key) or flat tensor `[B, L]` -> image `[B, 1, H, W]` on this device."""
        return self.net.get_input(self._flat(batch))

    def _flat(self, batch: Mapping[str, Any] | Tensor) -> Tensor:
        x = batch["weight"] if isinstance(batch, Mapping) else batch
        return x.to(self.device, torch.float32)

    def _layout_ids(self, batch: Mapping[str, Any] | Tensor, n: int) -> list[str]:
        props = batch.get("model_properties") if isinstance(batch, Mapping) else None
        if props and all("layout_id" in p for p in props):
            return [p["layout_id"] for p in props]
        assert len(self.layout_ids) <= 1, "a plain tensor batch is ambiguous in a joint zoo: pass the batch dict"
        return [self.layout_ids[0] if self.layout_ids else ""] * n

    def _function_keys(self, batch: Mapping[str, Any] | Tensor, layout_ids: Sequence[str]) -> list[str]:
        """`task/layout_id` of each row: which network runs on which probes."""
        props = batch.get("model_properties") if isinstance(batch, Mapping) else None
        if props and all("task" in p for p in props):
            return [function_key(p["task"], lid) for p, lid in zip(props, layout_ids, strict=True)]
        assert len(self.functional) <= 1, "a plain tensor batch is ambiguous in a joint zoo: pass the batch dict"
        return [next(iter(self.functional), "")] * len(layout_ids)

    def function_logits(self, x: Tensor, layout_ids: Sequence[str],
                        keys: Sequence[str] | None = None) -> tuple[Tensor | None, Tensor]:
        """Logits `[B, P, K]` of each (normalised, flat) network on its task's probe inputs, and a
        `[B]` mask of the rows whose architecture and task could be run (zeros elsewhere).
        `keys`: each row's `task/layout_id` (default: the only one this model knows)."""
        from weightvae.behaviour import flat_logits, probe_inputs

        keys = list(keys) if keys is not None else self._function_keys(x, layout_ids)
        valid = torch.tensor([k in self.functional for k in keys], device=x.device, dtype=torch.bool)
        if not valid.any():
            return None, valid
        real = self.denormalize(x, layout_ids)
        out = None
        for key in sorted(set(keys) & set(self.functional)):
            rows = torch.tensor([i for i, k in enumerate(keys) if k == key], device=x.device)
            f, layout = self.functional[key], self._layouts[key]
            probes = probe_inputs(f["task"], self.loss_cfg.probe_count)
            logits = flat_logits(f["arch"], layout, real[rows, : layout.length], probes)
            if out is None:
                out = x.new_zeros(len(x), *logits.shape[1:])
            elif logits.shape[1:] != out.shape[1:]:
                raise ValueError(f"{key}: {logits.shape[-1]} classes, other tasks in this batch have "
                                 f"{out.shape[-1]}; the behavioural term needs one class count per VAE")
            out = out.index_copy(0, rows, logits)
        return out, valid

    def _cond(self, x: Tensor, layout_ids: Sequence[str],
              keys: Sequence[str]) -> tuple[Tensor | None, Tensor | None, Tensor]:
        """(function signature for the encoder or None, reference logits or None, valid rows)."""
        need = self.loss_cfg.encoder_probes or self.loss_cfg.behaviour_weight > 0
        if not need:
            return None, None, torch.zeros(len(x), dtype=torch.bool, device=x.device)
        with torch.no_grad():
            ref, valid = self.function_logits(x, layout_ids, keys)
        cond = None
        if self.loss_cfg.encoder_probes:
            cond = ref.softmax(-1).flatten(1) * valid[:, None] if ref is not None else \
                x.new_zeros(len(x), self.cfg.cond_dim)
        return cond, ref, valid

    def encode(self, batch: Mapping[str, Any] | Tensor) -> DiagonalGaussian:
        """Batch dict or flat `[B, L]` -> posterior (the function signature is computed here if used)."""
        x = self._flat(batch)
        lids = self._layout_ids(batch, len(x))
        cond, _, _ = self._cond(x, lids, self._function_keys(batch, lids))
        return self.net.encode(x, cond)

    def decode(self, z: Tensor) -> Tensor:
        return self.net.decode(z)

    def forward(self, batch: Mapping[str, Any] | Tensor, sample_posterior: bool = True):
        """-> (inputs `[B, L]`, reconstructions `[B, L]`, posterior[, model_properties])."""
        x = self._flat(batch)
        lids = self._layout_ids(batch, len(x))
        cond, _, _ = self._cond(x, lids, self._function_keys(batch, lids))
        recon, posterior = self.net(x, sample_posterior, cond)
        if isinstance(batch, Mapping):
            return x, recon, posterior, batch.get("model_properties")
        return x, recon, posterior

    def reconstruct_to_model_weights(self, reconstructions: Tensor,
                                     model_properties: Sequence[Mapping[str, Any]]) -> list[dict[str, Tensor]]:
        """Flat (normalised, padded) outputs -> real state_dicts through each model's stored layout.
        Integer buffers come back from `model_properties["buffers"]`."""
        from weightvae.layout import Layout

        assert reconstructions.dim() == 2 and len(reconstructions) == len(model_properties)
        flat = self.denormalize(reconstructions.detach().float(), [p["layout_id"] for p in model_properties])
        out = []
        for vec, props in zip(flat.cpu(), model_properties):
            layout = Layout.from_dict(props["layout"])
            out.append(layout.unflatten(vec[: layout.length], props.get("buffers") or {}))
        return out

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws from the prior, decoded to flat normalised vectors `[n, L]`."""
        z = torch.randn((n, *self.net.latent_shape), generator=generator).to(self.device)
        return self.decode(z)

    # ---- training
    def _masks(self, batch: Mapping[str, Any] | Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        if isinstance(batch, Mapping) and "mask" in batch:
            return batch["mask"].to(x), batch["layer"].to(x.device)
        return torch.ones_like(x), torch.zeros_like(x, dtype=torch.long)

    def loss_terms(self, batch: Mapping[str, Any] | Tensor, sample_posterior: bool = True) -> dict[str, Tensor]:
        x = self._flat(batch)
        mask, layer = self._masks(batch, x)
        layout_ids = self._layout_ids(batch, len(x))
        keys = self._function_keys(batch, layout_ids)
        cond, ref, valid = self._cond(x, layout_ids, keys)
        inp = x
        if self.training and self.loss_cfg.input_noise > 0:
            inp = x + self.loss_cfg.input_noise * torch.randn_like(x) * mask
        posterior = self.net.encode(inp, cond)
        z = posterior.sample() if sample_posterior else posterior.mode()
        if self.training and self.loss_cfg.latent_noise > 0:
            z = z + self.loss_cfg.latent_noise * torch.randn_like(z)
        recon = self.net.decode(z)
        assert recon.shape == x.shape
        terms = {"mse": masked_mse(x, recon, mask), "kl": posterior.kl().mean()}
        if self.loss_cfg.loss == "layer":
            terms["recon"] = layerwise_mse(x, recon, layer, self.n_layers)
        elif self.loss_cfg.loss == "mse":
            terms["recon"] = terms["mse"]
        else:
            l1 = ((recon - x).abs() * mask).sum() / mask.sum().clamp_min(1)
            terms["recon"] = l1 / self.logvar.exp() + self.logvar
        terms["loss"] = terms["recon"] + self.loss_cfg.kl_weight * terms["kl"]
        if self.loss_cfg.behaviour_weight > 0 and ref is not None:
            from weightvae.behaviour import behaviour_kl

            logits, _ = self.function_logits(recon, layout_ids, keys)
            terms["behaviour"] = behaviour_kl(ref[valid], logits[valid])
            terms["loss"] = terms["loss"] + self.loss_cfg.behaviour_weight * terms["behaviour"]
        return terms

    def _common_step(self, batch: Mapping[str, Any], stage: str) -> Tensor:
        terms = self.loss_terms(batch, sample_posterior=stage == "train")
        bs = len(batch["weight"])
        for k, v in terms.items():
            self.log(f"{stage}/{k}", v, prog_bar=k == "loss", on_step=False, on_epoch=True,
                     batch_size=bs, sync_dist=stage != "train")
        return terms["loss"]

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        return self._common_step(batch, "train")

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        return self._common_step(batch, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        return self._common_step(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        c = self.loss_cfg
        return torch.optim.AdamW(self.parameters(), lr=c.learning_rate, betas=c.betas, weight_decay=c.weight_decay)

    # ---- self-describing export, loadable without a Trainer
    def export(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "hyper_parameters": dict(self.hparams),
                "state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}}

    @classmethod
    def from_export(cls, path: str) -> VAE:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: format_version {blob.get('format_version')} != {FORMAT_VERSION}; "
                             "retrain with this version of weightvae (dvc repro train)")
        model = cls(**blob["hyper_parameters"])
        model.load_state_dict(blob["state_dict"])
        return model.eval()


def function_key(task: str, layout_id: str) -> str:
    """Key of `VAE.functional`: networks of one layout, run on one task's probes."""
    return f"{task}/{layout_id}"


def vae_kwargs(cfg: VAEConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["channels"] = list(d["channels"])
    return d
