"""The codecs: encoders and decoders over flat, standardised weight vectors.

Everything enters and leaves as flat `[B, L]` (L = the longest layout, shorter ones zero-padded; the chunk
codec on several layouts: each layout's own length); the posterior is a `DiagonalGaussian` over
`[B, *latent_shape]` (a point for the function codec). Four codecs; `FunctionAutoencoder` (`codec: function`,
the default, an autoencoder trained through the networks' function) and `ChunkVAE` (`codec: chunk`) are
described at their classes, the two others here:

`LinearVAE` (`codec: linear`): an affine map each way between the weights and a flat latent, started
as whitened PCA of the training weights, so at step 0 the code is the top `latent_dim` principal
components scaled to unit variance (the prior N(0, I) then matches where training networks land) and
the decoder its inverse. Training moves it with the weight and behavioural losses. A flat affine
decoder is what latent refinement (`weightvae.refine`) needs: every latent decodes to a network, and
the code can be moved toward any function the span of the decoder holds. With `tensor_scales` the latent
leads with each learned tensor's own log-std and mean, and the affine maps code the tensors standardised
by them (a scale and direction per tensor, as in weight normalisation): the decoder multiplies each
tensor's decoded direction by exp(its log-std value), so how large each layer is, which the zoo's
accuracy and training state show in, is a latent value a linear probe reads directly. The groups are
`tensor_sizes`, consecutive runs of the flat vector: each learned tensor, or (`train.scale_groups: unit`)
each output unit's incoming weights, weight normalisation's per-unit g. With `function_code` the latent
leads with a code of what the network predicts: the one-hot classes it picks on the probe inputs, projected
on their top `function_code` principal directions over the train split (whitened; `init_function_code`),
a fingerprint of the function that the decoder reads through its own affine map (`from_func`, started at 0).

`ConvVAE` (`codec: conv`): the vector reshaped into a one-channel image `[B, 1, H, W]` so convolutions
share parameters across it (the field's usual recipe). Image shape rule (`image_shape`): with
`d = 2 ** (levels - 1)` (the total downsampling), `W = ceil(sqrt(L))` rounded up to a multiple of `d`,
then `H = ceil(L / W)` rounded up to a multiple of `d`. So `H * W >= L`, the image is near square, and it
halves cleanly at each level. The `d2nwg` preset instead maps the vector with a linear layer to a fixed
1x64x64 image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from weightvae.config import TrainParams, latent_size
from weightvae.pca import principal_components, spanned, whitened_pca

TENSOR_STD_EPS = 1e-6  # tensor_scales: keeps a constant tensor's log-std finite
STATS_LOGVAR = -9.0  # tensor_scales: posterior log-variance of the statistics' latent values (std 0.011)

# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class VAEConfig:
    """What a saved codec needs to be rebuilt. The settings are `train:`'s (`TrainParams`, whose defaults these
    read: `VAEConfig(max_len=L)` is the default codec at the default compression); the rest is derived from the
    zoo (`weightvae.train.build_module` fills it in).

    `codec="function"` (`FunctionAutoencoder`), `"linear"` (`LinearVAE`), `"chunk"` (`ChunkVAE`) or `"conv"`
    (`ConvVAE`: the weight vector as an image through conv ResNet levels, with a `flat` or `spatial` latent;
    `preset="d2nwg"` ignores the size fields and builds the seed's AutoencoderKL: linear to 4,096 -> 1x64x64,
    channels 128/128/256, 2 ResNet blocks per level, latent 4x16x16)."""

    max_len: int
    codec: Literal["conv", "linear", "chunk", "function"] = TrainParams.codec
    preset: Literal["small", "d2nwg"] = TrainParams.preset
    channels: tuple[int, ...] = TrainParams.channels
    blocks_per_level: int = TrainParams.blocks_per_level
    latent_dim: int = 0  # flat latent values; 0: `max_len` / train.compression (`weightvae.config.latent_size`)
    gradient_checkpointing: bool = TrainParams.gradient_checkpointing
    cond_dim: int = 0  # size of the function signature fed to the encoder beside the weights (0 = off)
    latent: Literal["flat", "spatial"] = TrainParams.latent  # flat vector of latent_dim, or latent_channels per pixel
    latent_channels: int = TrainParams.latent_channels
    chunk_size: int = TrainParams.chunk_size  # chunk codec: values per chunk
    chunk_latent: int = TrainParams.chunk_latent  # chunk codec: latent values per chunk (~ chunk_size / chunk_latent)
    tensor_sizes: tuple[int, ...] = ()  # chunk codec: numel of each learned tensor, layout after layout
    layout_tensors: tuple[int, ...] = ()  # chunk codec: learned tensors of each layout (() = one layout)
    tensor_scales: bool = TrainParams.tensor_scales  # linear codec: the latent carries each group's log-std and mean
    function_code: int = TrainParams.function_code  # linear codec: leading latent values coding the predictions
    function_dim: int = 0  # function_code: length of the prediction signature (probe inputs x classes, one-hot)
    hidden: int = TrainParams.hidden  # function codec: width of the encoder's and decoder's two hidden layers

    def __post_init__(self) -> None:
        if not self.latent_dim:  # the default compression (train.latent_dim: auto)
            object.__setattr__(self, "latent_dim", latent_size(TrainParams(), self.max_len))

    @staticmethod
    def d2nwg(max_len: int) -> VAEConfig:
        return VAEConfig(max_len=max_len, codec="conv", preset="d2nwg", channels=(128, 128, 256), blocks_per_level=2)


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


class ConvVAE(nn.Module):
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


class LinearVAE(nn.Module):
    """Affine encoder and decoder: `[B, L] (+ cond [B, cond_dim]) -> posterior over [B, latent_dim]`,
    `[B, latent_dim] -> [B, L]`. `init_pca` starts them as whitened PCA of the training weights."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        cond = min(cfg.cond_dim, 256) if cfg.cond_dim else 0
        self.cond_proj = nn.Sequential(nn.Linear(cfg.cond_dim, cond), nn.SiLU()) if cfg.cond_dim else None
        sizes = cfg.tensor_sizes if cfg.tensor_scales else ()
        self.n_stats = 2 * len(sizes)  # [log-std of each tensor | mean of each tensor] lead the latent
        self.n_func = cfg.function_code  # ... after the function code: [function code | statistics | code]
        assert cfg.latent_dim > self.n_func + self.n_stats and sum(sizes) <= cfg.max_len, \
            f"latent_dim {cfg.latent_dim} must exceed {self.n_func} + 2 x {len(sizes)} tensors, " \
            "tensors must fit max_len"
        assert not self.n_func or cfg.function_dim > 0, "function_code needs the signature's length (function_dim)"
        code = cfg.latent_dim - self.n_func - self.n_stats
        self.to_latent = nn.Linear(cfg.max_len + cond, 2 * code)  # [mean | logvar]
        self.from_latent = nn.Linear(code, cfg.max_len)
        self.latent_shape: tuple[int, ...] = (cfg.latent_dim,)
        if sizes:  # each weight's tensor; the padded tail (if any) is tensor len(sizes), left as it is
            tensor_of = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
            tensor_of = torch.cat([tensor_of, torch.full((cfg.max_len - len(tensor_of),), len(sizes))])
            self.register_buffer("tensor_of", tensor_of, persistent=False)
            self.register_buffer("tensor_numel", torch.bincount(tensor_of, minlength=len(sizes) + 1).clamp(min=1)
                                 .float(), persistent=False)
        if self.n_func:  # the projection of a signature onto the code; saved with the model
            self.register_buffer("func_mean", torch.zeros(cfg.function_dim))
            self.register_buffer("func_basis", torch.zeros(self.n_func, cfg.function_dim))
            self.from_func = nn.Linear(self.n_func, cfg.max_len, bias=False)
            nn.init.zeros_(self.from_func.weight)

    @torch.no_grad()
    def init_pca(self, x: Tensor, logvar: float = -9.0) -> None:
        """Encoder mean = the coordinates of training vectors `x` `[N, L]` along their top `latent_dim`
        principal directions, each divided by its std over `x` (whitened: unit-variance codes, so the prior
        N(0, I) matches where training networks land, and a step of the same size in any latent value moves
        the weights in proportion to how much the zoo varies along it); decoder = the inverse map;
        posterior log-variance `logvar` everywhere (a near-deterministic code to start from). Directions
        beyond the rank of `x` are random ones orthogonal to the rest, with the smallest kept std. With
        `tensor_scales` the PCA is of each tensor standardised by its own mean and std."""
        k = self.to_latent.out_features // 2
        x = x.double()
        if self.n_stats:
            x = self.tensor_standardise(x)[0]
        centre, basis, scale = whitened_pca(x, k)
        length = x.shape[1]
        w = self.to_latent.weight
        w.zero_()
        w[:k, :length] = (basis / scale[:, None]).to(w)
        self.to_latent.bias[:k] = (-(centre @ basis.T) / scale).to(w)
        self.to_latent.bias[k:] = logvar
        self.from_latent.weight.copy_((basis.T * scale).to(w))
        self.from_latent.bias.copy_(centre.to(w))

    @torch.no_grad()
    def init_function_code(self, signatures: Tensor) -> None:
        """`function_code`: the projection that codes a network's signature (its one-hot predictions on the probe
        inputs, flat `[N, function_dim]`, of the train split): its top principal directions, each divided by its
        std over `signatures`, so the function code is whitened like the rest. Directions beyond the signatures'
        rank stay 0 (a value every network shares)."""
        centre, directions, std = principal_components(signatures, self.n_func)
        keep = spanned(std)
        self.func_mean.copy_(centre.to(self.func_mean))
        self.func_basis.zero_()
        self.func_basis[:keep] = (directions[:keep] / std[:keep, None]).to(self.func_basis)

    def get_input(self, x: Tensor) -> Tensor:
        """The encoder's input: the flat vector itself, `[B, L]`, shape checked."""
        assert x.dim() == 2 and x.shape[1] == self.cfg.max_len, \
            f"expected flat weights [B, {self.cfg.max_len}], got {list(x.shape)}"
        return x

    def tensor_standardise(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """`tensor_scales`: each learned tensor of `x` `[B, L]` standardised by its own mean and std (population;
        the padded tail as it is), and the `[B, 2 * tensors]` statistics `[log(std + 1e-6) | mean]` that undo it."""
        t, idx = self.n_stats // 2, self.tensor_of
        numel = self.tensor_numel.to(x.dtype)
        mean = x.new_zeros(len(x), t + 1).index_add_(1, idx, x) / numel
        mean = torch.cat([mean[:, :t], mean.new_zeros(len(x), 1)], 1)
        dev = x - mean[:, idx]
        std = (x.new_zeros(len(x), t + 1).index_add_(1, idx, dev * dev) / numel).sqrt() + TENSOR_STD_EPS
        std = torch.cat([std[:, :t], std.new_ones(len(x), 1)], 1)
        return dev / std[:, idx], torch.cat([std[:, :t].log(), mean[:, :t]], 1)

    def encode(self, x: Tensor, cond: Tensor | None = None) -> DiagonalGaussian:
        """x: flat `[B, L]` (+ cond: `[B, cond_dim]`, the function signature the encoder reads, or with
        `function_code` `[B, function_dim]`, the one-hot predictions it codes) -> posterior over `[B, latent_dim]`."""
        x = self.get_input(x)
        stats = None
        if self.n_stats:
            x, stats = self.tensor_standardise(x)
        if self.n_func:
            assert cond is not None and cond.shape == (len(x), self.cfg.function_dim), \
                "the function code needs the network's one-hot predictions on the probes"
            func = (cond.to(self.func_basis) - self.func_mean) @ self.func_basis.T
            stats = func if stats is None else torch.cat([func, stats], 1)
        elif self.cond_proj is not None:
            assert cond is not None and cond.shape == (len(x), self.cfg.cond_dim), \
                "encoder needs the function signature"
            x = torch.cat([x, self.cond_proj(cond)], 1)
        params = self.to_latent(x)
        if stats is not None:  # measured values (function code, statistics): (near-)deterministic latent values
            mean, logvar = params.chunk(2, dim=1)
            params = torch.cat([stats, mean, torch.full_like(stats, STATS_LOGVAR), logvar], 1)
        return DiagonalGaussian(params)

    def decode(self, z: Tensor) -> Tensor:
        """z: `[B, latent_dim]` -> flat `[B, L]` (`function_code`: the leading values through `from_func` added to the
        code's decoding; `tensor_scales`: each tensor's decoded direction times exp(its log-std value) plus its mean
        value)."""
        if not self.n_stats and not self.n_func:
            return self.from_latent(z)
        f, n = self.n_func, self.n_func + self.n_stats
        x = self.from_latent(z[:, n:])
        if f:
            x = x + self.from_func(z[:, :f])
        if not self.n_stats:
            return x
        t = self.n_stats // 2
        scale = torch.cat([z[:, f:f + t].exp(), z.new_ones(len(z), 1)], 1)
        shift = torch.cat([z[:, f + t:n], z.new_zeros(len(z), 1)], 1)
        return x * scale[:, self.tensor_of] + shift[:, self.tensor_of]

    def forward(self, x: Tensor, sample_posterior: bool = True, cond: Tensor | None = None
                ) -> tuple[Tensor, DiagonalGaussian]:
        posterior = self.encode(x, cond)
        recon = self.decode(posterior.sample() if sample_posterior else posterior.mode())
        assert recon.shape == x.shape, f"reconstruction {list(recon.shape)} != input {list(x.shape)}"
        return recon, posterior


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    """Two hidden layers (LayerNorm, GELU); the output layer starts at 0, so the MLP adds nothing at first."""
    mlp = nn.Sequential(nn.Linear(n_in, hidden), nn.LayerNorm(hidden), nn.GELU(),
                        nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, n_out))
    nn.init.zeros_(mlp[-1].weight)
    nn.init.zeros_(mlp[-1].bias)
    return mlp


class FunctionAutoencoder(nn.Module):
    """A deterministic autoencoder trained through the networks' function (`codec: function`).

    Encoder: the weights `[B, L]` and what the network computes (its class probabilities on the probe inputs,
    `[B, cond_dim]`) -> the code `[B, latent_dim]`, in one pass. Decoder: a hypernetwork from the code to the
    weights `[B, L]`. Each is an affine map plus an MLP: the affine maps start as whitened PCA of the training
    weights (`init_pca`, as `LinearVAE`), the MLPs at 0, so training starts from the PCA codec and learns what it
    adds. Trained on the behavioural loss (the decoded network must give the original's outputs), the decoder's
    image becomes a manifold of working networks and the encoder lands near where latent refinement would land.
    No KL and no prior: the posterior is a point (log-variance fixed at `STATS_LOGVAR`), so it is not a VAE;
    samples come from the codes (`reconstruct.sampler: kde`), not from N(0, I)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        if cfg.hidden < 1 or cfg.cond_dim < 1:
            raise ValueError(f"the function codec (hidden={cfg.hidden}, cond_dim={cfg.cond_dim}) reads each network's "
                             "outputs on the probe inputs: need hidden >= 1 and cond_dim = probe inputs x classes "
                             "(weightvae.train.build_module sets it from the zoo's task), or codec='linear'")
        self.cfg = cfg
        self.to_latent = nn.Linear(cfg.max_len, cfg.latent_dim)  # affine parts: whitened PCA at the start
        self.from_latent = nn.Linear(cfg.latent_dim, cfg.max_len)
        self.encoder = _mlp(cfg.max_len + cfg.cond_dim, cfg.hidden, cfg.latent_dim)  # [weights | function] -> code
        self.decoder = _mlp(cfg.latent_dim, cfg.hidden, cfg.max_len)  # code -> weights
        self.latent_shape: tuple[int, ...] = (cfg.latent_dim,)

    @torch.no_grad()
    def init_pca(self, x: Tensor) -> None:
        """The affine maps as whitened PCA of the training vectors `x` `[N, L]` (`whitened_pca`)."""
        centre, basis, scale = whitened_pca(x, self.cfg.latent_dim)
        self.to_latent.weight.copy_((basis / scale[:, None]).to(self.to_latent.weight))
        self.to_latent.bias.copy_((-(centre @ basis.T) / scale).to(self.to_latent.bias))
        self.from_latent.weight.copy_((basis.T * scale).to(self.from_latent.weight))
        self.from_latent.bias.copy_(centre.to(self.from_latent.bias))

    def get_input(self, x: Tensor) -> Tensor:
        assert x.dim() == 2 and x.shape[1] == self.cfg.max_len, \
            f"expected flat weights [B, {self.cfg.max_len}], got {list(x.shape)}"
        return x

    def encode(self, x: Tensor, cond: Tensor | None = None) -> DiagonalGaussian:
        """x: flat `[B, L]`, cond: the network's class probabilities on the probes `[B, cond_dim]` -> the code
        (a point: a `DiagonalGaussian` of fixed tiny variance, for the interface the other codecs share)."""
        x = self.get_input(x)
        assert cond is not None and cond.shape == (len(x), self.cfg.cond_dim), \
            "the function codec's encoder reads the network's outputs on the probes"
        z = self.to_latent(x) + self.encoder(torch.cat([x, cond.to(x)], 1))
        return DiagonalGaussian(torch.cat([z, torch.full_like(z, STATS_LOGVAR)], 1))

    def decode(self, z: Tensor) -> Tensor:
        """z: `[B, latent_dim]` -> flat `[B, L]`."""
        return self.from_latent(z) + self.decoder(z)

    def forward(self, x: Tensor, sample_posterior: bool = True, cond: Tensor | None = None
                ) -> tuple[Tensor, DiagonalGaussian]:
        posterior = self.encode(x, cond)
        return self.decode(posterior.mode()), posterior


class ChunkVAE(nn.Module):
    """Per-chunk affine codec (`codec: chunk`): each `chunk_size`-long chunk of a learned tensor
    (`weightvae.chunks`) maps to `chunk_latent` values and back through that tensor's own affine maps, around
    the train split's mean of that chunk. Parameters and activations per chunk do not depend on the model's
    size, so training can take windows of chunks (`encode_chunks`/`decode_chunks`); `encode`/`decode` run
    every chunk of whole models of one layout, `[B, L]` <-> `[B, chunks * chunk_latent]`. `init_pca` starts
    each tensor's maps as whitened PCA of its chunks, as `LinearVAE` does for whole vectors.

    Several layouts (a joint zoo): the tensors of every layout, one layout after the other, are cut by one
    `Chunking`, so a chunk's number says its layout and tensor; each model is coded at its own length (a code
    of its layout's chunks: codes are as long as their network needs), never padded to the longest."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        from weightvae.chunks import Chunking

        self.cfg = cfg
        self.chunking = Chunking(cfg.tensor_sizes, cfg.chunk_size)
        t, s, d = len(cfg.tensor_sizes), cfg.chunk_size, cfg.chunk_latent
        self.enc_weight, self.enc_bias = nn.Parameter(torch.zeros(t, s, d)), nn.Parameter(torch.zeros(t, d))
        self.logvar = nn.Parameter(torch.full((t, d), -9.0))  # per tensor, not per input: the posterior's spread
        self.dec_weight, self.dec_bias = nn.Parameter(torch.zeros(t, d, s)), nn.Parameter(torch.zeros(t, s))
        self.register_buffer("centre", torch.zeros(self.chunking.count, s))  # train mean of each chunk, fixed
        counts = cfg.layout_tensors or (t,)
        assert sum(counts) == t and all(n > 0 for n in counts), f"layout_tensors {counts} for {t} tensors"
        #: per layout, per learned tensor: (first chunk, chunk count, first flat position in the model, numel, tensor)
        self.spans: list[list[tuple[int, int, int, int, int]]] = []
        t0 = c0 = 0
        for n_t in counts:
            spans, f0 = [], 0
            for j in range(t0, t0 + n_t):
                k = math.ceil(cfg.tensor_sizes[j] / s)
                spans.append((c0, k, f0, cfg.tensor_sizes[j], j))
                c0, f0 = c0 + k, f0 + cfg.tensor_sizes[j]
            t0 += n_t
            self.spans.append(spans)
        #: [chunks] the layout of each chunk; per layout: its first chunk, chunk count and length
        self.first_chunk = [sp[0][0] for sp in self.spans]
        self.chunk_counts = [sum(k for _, k, _, _, _ in sp) for sp in self.spans]
        self.lengths = [sum(n for _, _, _, n, _ in sp) for sp in self.spans]
        self.chunk_layout = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(self.chunk_counts))
        self.latent_shapes = [(k * d,) for k in self.chunk_counts]
        self.latent_shape: tuple[int, ...] = self.latent_shapes[0] if len(counts) == 1 else (-1,)

    @torch.no_grad()
    def init_pca(self, x: Tensor | Sequence[Tensor], layout: int = 0) -> None:
        """`centre` = the mean chunk of training vectors `x` of one layout (`[N, L]`, or N vectors `[L]` read
        as needed); each of its tensors' encoder = the coordinates of its centred chunks along their top
        `chunk_latent` principal directions, divided by their std (a floor of 1e-3 of the largest keeps
        directions the data hardly spans from amplifying noise); decoder = the inverse. Two passes, one model
        and one tensor at a time through slices, in float64: memory grows with neither N nor the model's size
        beyond a tensor. Call once per layout."""
        s, d, spans = self.cfg.chunk_size, self.cfg.chunk_latent, self.spans[layout]
        first, count = self.first_chunk[layout], self.chunk_counts[layout]
        mask = self.chunking.mask[first:first + count]

        def parts():  # (first chunk in the layout, chunks, tensor, the chunks [k, s] float64): every model's
            for i in range(len(x)):  # tensors, in pieces of at most 4,096 chunks
                v = x[i]
                for c0, k, f0, n, j in spans:
                    for a in range(0, k, 4096):
                        b, lo = min(k, a + 4096), f0 + a * s
                        hi = min(f0 + n, f0 + b * s)
                        yield c0 - first + a, b - a, j, F.pad(v[lo:hi].double(), (0, (b - a) * s - (hi - lo))
                                                              ).reshape(b - a, s)

        centre = torch.zeros(count, s, dtype=torch.float64)
        for o, k, _, part in parts():
            centre[o:o + k] += part
        centre /= max(len(x), 1)
        cov = {j: torch.zeros(s, s, dtype=torch.float64) for *_, j in spans}
        for o, k, j, part in parts():
            r = (part - centre[o:o + k]) * mask[o:o + k]
            cov[j] += r.T @ r
        for c0, k, _, _, j in spans:
            eig, vec = torch.linalg.eigh(cov[j] / max(k * len(x) - 1, 1))  # ascending
            eig, vec = eig.flip(0)[:d], vec.flip(1)[:, :d]  # [d], [s, d]
            std = eig.clamp_min(0).sqrt()
            std = std.clamp_min(1e-3 * float(std[0]) if float(std[0]) > 0 else 1.0)
            self.enc_weight[j] = (vec / std).float()
            self.dec_weight[j] = (vec * std).T.float()
            self.enc_bias[j] = 0.0
            self.dec_bias[j] = 0.0
        self.centre[first:first + count] = centre.float()

    def encode_chunks(self, chunks: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Chunks `[B, W, chunk_size]` numbered `ids` (`[W]`, or `[B, W]`: a window per row) -> posterior mean and
        log-variance `[B, W, chunk_latent]`."""
        ids = ids.expand(*chunks.shape[:2])
        tensor = self.chunking.tensor.to(ids.device)[ids]
        centred = (chunks - self.centre[ids]) * self.chunking.mask.to(chunks.device)[ids]
        mean = chunks.new_zeros(*chunks.shape[:2], self.cfg.chunk_latent)
        for j in torch.unique(tensor).tolist():
            sel = tensor == j
            mean[sel] = centred[sel] @ self.enc_weight[j] + self.enc_bias[j]
        return mean, self.logvar[tensor]

    def decode_chunks(self, z: Tensor, ids: Tensor) -> Tensor:
        """Codes `[B, W, chunk_latent]` of the chunks numbered `ids` (`[W]` or `[B, W]`) -> chunks
        `[B, W, chunk_size]` (padding 0)."""
        ids = ids.expand(*z.shape[:2])
        tensor = self.chunking.tensor.to(ids.device)[ids]
        out = z.new_zeros(*z.shape[:2], self.cfg.chunk_size)
        for j in torch.unique(tensor).tolist():
            sel = tensor == j
            out[sel] = z[sel] @ self.dec_weight[j] + self.dec_bias[j]
        return (out + self.centre[ids]) * self.chunking.mask.to(z.device)[ids]

    def get_input(self, x: Tensor, layout: int = 0) -> Tensor:
        """The encoder's input: flat vectors `[B, >= L]` of one layout (shape checked), cut tensor by tensor in
        `encode`; entries past the layout's length are padding and never read."""
        assert x.dim() == 2 and x.shape[1] >= self.lengths[layout], \
            f"expected flat weights [B, >= {self.lengths[layout]}], got {list(x.shape)}"
        return x

    def encode(self, x: Tensor, cond: Tensor | None = None, layout: int = 0) -> DiagonalGaussian:
        """x: flat `[B, L]` of one layout -> posterior over `[B, chunks * chunk_latent]` (its chunks, in order);
        the same numbers as `encode_chunks` on every chunk. A tensor's chunks are consecutive, so whole models
        are coded tensor by tensor with slices and no gathers."""
        assert cond is None, "the chunk codec has no function-aware encoder (train.encoder_probes: false)"
        x, s, mask = self.get_input(x, layout), self.cfg.chunk_size, self.chunking.mask.to(x.device)
        means = []
        for c0, k, f0, n, j in self.spans[layout]:
            part = F.pad(x[:, f0:f0 + n], (0, k * s - n)).reshape(len(x), k, s)
            centred = (part - self.centre[c0:c0 + k]) * mask[c0:c0 + k]
            means.append(centred @ self.enc_weight[j] + self.enc_bias[j])
        mean = torch.cat(means, 1)  # [B, chunks, chunk_latent]
        first, count = self.first_chunk[layout], self.chunk_counts[layout]
        logvar = self.logvar[self.chunking.tensor[first:first + count].to(x.device)].expand_as(mean)
        return DiagonalGaussian(torch.cat([mean.flatten(1), logvar.flatten(1)], 1))

    def decode(self, z: Tensor, layout: int = 0) -> Tensor:
        """z: `[B, chunks * chunk_latent]` of one layout -> flat `[B, L]`; the same numbers as `decode_chunks` on
        every chunk, joined. One layout: padded with zeros to `max_len`, as the other codecs; several: the
        layout's own length."""
        zc, parts = z.reshape(len(z), self.chunk_counts[layout], -1), []
        for c0, k, _, n, j in self.spans[layout]:
            i = c0 - self.first_chunk[layout]
            out = zc[:, i:i + k] @ self.dec_weight[j] + self.dec_bias[j] + self.centre[c0:c0 + k]
            parts.append(out.reshape(len(z), -1)[:, :n])
        out = torch.cat(parts, 1)
        pad = self.cfg.max_len - out.shape[1] if len(self.spans) == 1 else 0
        return F.pad(out, (0, pad)) if pad else out

    def forward(self, x: Tensor, sample_posterior: bool = True, cond: Tensor | None = None, layout: int = 0
                ) -> tuple[Tensor, DiagonalGaussian]:
        posterior = self.encode(x, cond, layout)
        recon = self.decode(posterior.sample() if sample_posterior else posterior.mode(), layout)
        assert recon.shape[1] <= x.shape[1], f"reconstruction {list(recon.shape)} longer than input {list(x.shape)}"
        return recon, posterior


def build_net(cfg: VAEConfig) -> ConvVAE | LinearVAE | ChunkVAE | FunctionAutoencoder:
    return {"linear": LinearVAE, "chunk": ChunkVAE, "function": FunctionAutoencoder}.get(cfg.codec, ConvVAE)(cfg)


def vae_kwargs(cfg: VAEConfig) -> dict:
    """`cfg` as plain JSON-able kwargs (what the Lightning module saves as hyperparameters)."""
    d = asdict(cfg)
    d["channels"] = list(d["channels"])
    d["tensor_sizes"] = list(d["tensor_sizes"])
    d["layout_tensors"] = list(d["layout_tensors"])
    if not cfg.function_code:  # left out when off: a default model's export keeps the bytes dvc.lock records
        del d["function_code"], d["function_dim"]
    if cfg.codec != "function":  # the others have no hidden layers
        del d["hidden"]
    return d
