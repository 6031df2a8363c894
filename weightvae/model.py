"""The weight VAE as a Lightning module: losses, steps, optimiser, normalisation and export.

The networks (encoders, decoders, the posterior) are in `weightvae.nets`, the weight losses in
`weightvae.losses`, what a weight vector computes (probe outputs, the behavioural KL) in
`weightvae.behaviour`. This module wires them together: the normalisation statistics live here as
buffers, so a checkpoint alone turns outputs back into state_dicts, and `export`/`from_export` give a
self-describing file that loads without a Trainer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn

from weightvae import FORMAT_VERSION
from weightvae.config import TrainParams
from weightvae.losses import layerwise_mse, masked_mse
from weightvae.nets import DiagonalGaussian, VAEConfig, build_net


@dataclass(frozen=True)
class LossConfig:
    """The loss and optimiser settings a saved codec trained with; the defaults are `train:`'s (`TrainParams`)."""

    loss: Literal["layer", "mse", "l1_logvar"] = TrainParams.loss
    kl_weight: float = TrainParams.kl_weight
    learning_rate: float = TrainParams.learning_rate
    betas: tuple[float, float] = (0.9, 0.999)  # Adam's; not a train: setting
    weight_decay: float = TrainParams.weight_decay
    input_noise: float = TrainParams.input_noise  # std of Gaussian noise on (normalised) inputs in training (p-diff)
    latent_noise: float = TrainParams.latent_noise  # std of Gaussian noise on latents during training (p-diff)
    behaviour_weight: float = TrainParams.behaviour_weight  # weight of KL(original || reconstruction) on the probes
    probe_count: int = TrainParams.probe_count  # probe inputs (the task's training set) for the behavioural term
    encoder_probes: bool = TrainParams.encoder_probes  # feed the encoder the input network's outputs on the probes
    behaviour_batch: int = TrainParams.behaviour_batch  # training: inputs the behavioural term scores per step, drawn
    #                          afresh from the task's training inputs (0: the fixed `probe_count` probes)
    lr_schedule: Literal["constant", "cosine"] = TrainParams.lr_schedule  # cosine: 5 % warm-up, then down to 0


class VAE(L.LightningModule):
    """Lightning wrapper around `WeightVAE`: steps, losses, optimiser, and the normalisation
    statistics (buffers, so a checkpoint alone can turn outputs back into state_dicts)."""

    def __init__(self, vae: dict[str, Any], loss: dict[str, Any] | None = None,
                 layout_ids: Sequence[str] = (), n_layers: int = 1, normalize: bool = True,
                 functional: Mapping[str, Mapping[str, Any]] | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.cfg = VAEConfig(**{**vae, "channels": tuple(vae.get("channels", VAEConfig.channels)),
                                "tensor_sizes": tuple(vae.get("tensor_sizes", ())),
                                "layout_tensors": tuple(vae.get("layout_tensors", ()))})
        self.loss_cfg = LossConfig(**(loss or {}))
        self.net = build_net(self.cfg)
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
        self.fitted_codes: dict[str, Tensor] = {}  # network id -> the code auto-decoding fitted it (`export`)

    @property
    def measured_latent(self) -> int:
        """How many leading latent values are measured from the network rather than a learned code (the code of its
        predictions with `function_code`, each tensor's or unit's log-std and mean with `tensor_scales`; 0
        otherwise). Refinement keeps them."""
        return getattr(self.net, "n_func", 0) + getattr(self.net, "n_stats", 0)

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
        n = x.shape[1]  # the chunk codec on several layouts gives each layout's own length
        if len(set(layout_ids)) == 1:  # one layout: its buffers broadcast, no per-row copies
            r = self.layout_ids.index(layout_ids[0])
            return (x * self.norm_std[r, :n]).add_(self.norm_mean[r, :n])
        rows = torch.tensor([self.layout_ids.index(lid) for lid in layout_ids], device=x.device)
        return x * self.norm_std[rows, :n] + self.norm_mean[rows, :n]

    # ---- the interface researchers expect
    def get_input(self, batch: Mapping[str, Any] | Tensor) -> Tensor:
        """Batch dict (`weight` key) or flat tensor `[B, L]` -> what the encoder sees, on this device: the
        image `[B, 1, H, W]` (conv codec) or the flat vector `[B, L]` (linear codec)."""
        return self.net.get_input(self._flat(batch))

    def _flat(self, batch: Mapping[str, Any] | Tensor) -> Tensor:
        x = batch["weight"] if isinstance(batch, Mapping) else batch
        return x.to(self.device, torch.float32)

    def batch_layout_ids(self, batch: Mapping[str, Any] | Tensor, n: int) -> list[str]:
        props = batch.get("model_properties") if isinstance(batch, Mapping) else None
        if props and all("layout_id" in p for p in props):
            return [p["layout_id"] for p in props]
        assert len(self.layout_ids) <= 1, "a plain tensor batch is ambiguous in a joint zoo: pass the batch dict"
        return [self.layout_ids[0] if self.layout_ids else ""] * n

    def batch_function_keys(self, batch: Mapping[str, Any] | Tensor, layout_ids: Sequence[str]) -> list[str]:
        """`task/layout_id` of each row: which network runs on which probes."""
        props = batch.get("model_properties") if isinstance(batch, Mapping) else None
        if props and all("task" in p for p in props):
            return [function_key(p["task"], lid) for p, lid in zip(props, layout_ids, strict=True)]
        assert len(self.functional) <= 1, "a plain tensor batch is ambiguous in a joint zoo: pass the batch dict"
        return [next(iter(self.functional), "")] * len(layout_ids)

    def function_logits(self, x: Tensor, layout_ids: Sequence[str], keys: Sequence[str] | None = None,
                        probe_count: int | None = None) -> tuple[Tensor | None, Tensor]:
        """Logits `[B, P, K]` of each (normalised, flat) network on its task's probe inputs, and a
        `[B]` mask of the rows whose architecture and task could be run (zeros elsewhere).
        `keys`: each row's `task/layout_id` (default: the only one this model knows); `probe_count`:
        how many probe inputs (default: the training loss's)."""
        from weightvae.behaviour import probe_inputs

        keys = list(keys) if keys is not None else self.batch_function_keys(x, layout_ids)
        valid = torch.tensor([k in self.functional for k in keys], device=x.device, dtype=torch.bool)
        if not valid.any():
            return None, valid
        out = None
        for key in sorted(set(keys) & set(self.functional)):
            rows = torch.tensor([i for i, k in enumerate(keys) if k == key], device=x.device)
            probes = probe_inputs(self.functional[key]["task"], probe_count or self.loss_cfg.probe_count)
            logits = self.network_logits(x[rows], [layout_ids[i] for i in rows], key, probes)
            if out is None:
                out = x.new_zeros(len(x), *logits.shape[1:])
            elif logits.shape[1:] != out.shape[1:]:
                raise ValueError(f"{key}: outputs of {list(logits.shape[1:])} (probe inputs, classes), other tasks "
                                 f"in this batch have {list(out.shape[1:])}; the behavioural term needs one shape per "
                                 "codec (a task with fewer training inputs than train.probe_count has fewer probes)")
            out = out.index_copy(0, rows, logits)
        return out, valid

    def network_logits(self, x: Tensor, layout_ids: Sequence[str], key: str, probes: Tensor) -> Tensor:
        """Logits `[B, P, K]` on `probes` of (normalised, flat) networks `x` `[B, L]` that share one
        `task/layout_id` key (which says how to run them). Differentiable in `x`."""
        from weightvae.behaviour import flat_logits

        f, layout = self.functional[key], self._layouts[key]
        return flat_logits(f["arch"], layout, self.denormalize(x, layout_ids)[:, : layout.length], probes,
                           f.get("kwargs"), f.get("buffers"))

    def _cond(self, x: Tensor, layout_ids: Sequence[str],
              keys: Sequence[str]) -> tuple[Tensor | None, Tensor | None, Tensor]:
        """(function signature for the encoder or None, reference logits or None, valid rows). With
        `function_code` the signature is the one-hot class the network predicts on each probe input."""
        need = self.loss_cfg.encoder_probes or self.loss_cfg.behaviour_weight > 0 or self.cfg.function_code > 0
        if not need:
            return None, None, torch.zeros(len(x), dtype=torch.bool, device=x.device)
        with torch.no_grad():
            ref, valid = self.function_logits(x, layout_ids, keys)
        cond = None
        if self.cfg.function_code:
            assert ref is not None and bool(valid.all()), "the function code needs every network's predictions"
            cond = prediction_signature(ref)
        elif self.loss_cfg.encoder_probes:
            cond = ref.softmax(-1).flatten(1) * valid[:, None] if ref is not None else \
                x.new_zeros(len(x), self.cfg.cond_dim)
        return cond, ref, valid

    def _layout(self, layout_ids: Sequence[str] | None) -> dict[str, int]:
        """The chunk codec codes one layout at a time: `{"layout": its index}` for rows of one layout (other
        codecs: `{}`, every layout shares one padded length)."""
        if self.cfg.codec != "chunk":
            return {}
        if layout_ids is None and len(self.layout_ids) > 1:
            raise ValueError(f"this chunk codec knows {len(self.layout_ids)} layouts: say which (layout_ids)")
        lids = set(layout_ids) if layout_ids is not None else set(self.layout_ids[:1])
        if len(lids) != 1 or (self.layout_ids and not lids <= set(self.layout_ids)):
            raise ValueError(f"the chunk codec codes one layout at a time; got layouts {sorted(lids)} "
                             f"(this VAE knows {self.layout_ids}): batch networks by layout")
        return {"layout": self.layout_ids.index(lids.pop()) if self.layout_ids else 0}

    def latent_size(self, layout_id: str | None = None) -> int:
        """Latent values per model (of `layout_id`: the chunk codec's codes are as long as their network needs)."""
        if self.cfg.codec == "chunk":
            return self.net.latent_shapes[self._layout(None if layout_id is None else [layout_id])["layout"]][0]
        return math.prod(self.net.latent_shape)

    def encode(self, batch: Mapping[str, Any] | Tensor) -> DiagonalGaussian:
        """Batch dict or flat `[B, L]` -> posterior (the function signature is computed here if used)."""
        x = self._flat(batch)
        lids = self.batch_layout_ids(batch, len(x))
        cond, _, _ = self._cond(x, lids, self.batch_function_keys(batch, lids))
        return self.net.encode(x, cond, **self._layout(lids))

    def decode(self, z: Tensor, layout_ids: Sequence[str] | None = None) -> Tensor:
        """Codes `[B, *latent_shape]`, or flat `[B, latent values]` as the latents table stores them -> `[B, L]`.
        The chunk codec on several layouts needs the rows' `layout_ids` (one layout per call)."""
        if self.cfg.codec == "chunk":
            return self.net.decode(z.reshape(len(z), -1), **self._layout(layout_ids))
        return self.net.decode(z.reshape(len(z), *self.net.latent_shape))

    def forward(self, batch: Mapping[str, Any] | Tensor, sample_posterior: bool = True):
        """-> (inputs `[B, L]`, reconstructions `[B, L]`, posterior[, model_properties])."""
        x = self._flat(batch)
        lids = self.batch_layout_ids(batch, len(x))
        cond, _, _ = self._cond(x, lids, self.batch_function_keys(batch, lids))
        recon, posterior = self.net(x, sample_posterior, cond, **self._layout(lids))
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

    def prior_latents(self, n: int, generator: torch.Generator | None = None, layout_id: str | None = None) -> Tensor:
        """n codes drawn from the prior N(0, I), `[n, *latent_shape]` (of `layout_id`: the chunk codec)."""
        shape = (self.latent_size(layout_id),) if self.cfg.codec == "chunk" else self.net.latent_shape
        return torch.randn((n, *shape), generator=generator)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, layout_id: str | None = None) -> Tensor:
        """n draws from the prior, decoded to flat normalised vectors `[n, L]` (of `layout_id`: chunk codec)."""
        z = self.prior_latents(n, generator, layout_id).to(self.device)
        return self.decode(z, None if layout_id is None else [layout_id] * n)

    # ---- training
    def _masks(self, batch: Mapping[str, Any] | Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        if isinstance(batch, Mapping) and "mask" in batch:
            return batch["mask"].to(x), batch["layer"].to(x.device)
        return torch.ones_like(x), torch.zeros_like(x, dtype=torch.long)

    def loss_terms(self, batch: Mapping[str, Any] | Tensor, sample_posterior: bool = True) -> dict[str, Tensor]:
        if isinstance(batch, Mapping) and "chunks" in batch:
            return self._window_terms(batch, sample_posterior)
        x = self._flat(batch)
        mask, layer = self._masks(batch, x)
        layout_ids = self.batch_layout_ids(batch, len(x))
        keys = self.batch_function_keys(batch, layout_ids)
        cond, ref, valid = self._cond(x, layout_ids, keys)
        inp = x
        if self.training and self.loss_cfg.input_noise > 0:
            inp = x + self.loss_cfg.input_noise * torch.randn_like(x) * mask
        posterior = self.net.encode(inp, cond, **self._layout(layout_ids))
        z = posterior.sample() if sample_posterior else posterior.mode()
        if self.training and self.loss_cfg.latent_noise > 0:
            z = z + self.loss_cfg.latent_noise * torch.randn_like(z)
        recon = self.net.decode(z, **self._layout(layout_ids))
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
            if self.training and self.loss_cfg.behaviour_batch:
                terms["behaviour"] = self._behaviour_on_fresh_inputs(x, recon, layout_ids, keys)
            else:
                from weightvae.behaviour import behaviour_kl

                logits, _ = self.function_logits(recon, layout_ids, keys)
                terms["behaviour"] = behaviour_kl(ref[valid], logits[valid])
            terms["loss"] = terms["loss"] + self.loss_cfg.behaviour_weight * terms["behaviour"]
        return terms

    def _behaviour_on_fresh_inputs(self, x: Tensor, recon: Tensor, layout_ids: Sequence[str],
                                   keys: Sequence[str]) -> Tensor:
        """The behavioural KL, mean over the networks that can be run, each group scored on `behaviour_batch`
        training inputs of its task drawn afresh (the global generator, which the trainer seeds): training sees
        every training input over the epochs, not only the fixed probes, so the decoder cannot fit just those."""
        from weightvae.behaviour import behaviour_kl_per_network, probe_inputs

        total, count = x.new_zeros(()), 0
        for key in sorted(set(keys) & set(self.functional)):
            rows = torch.tensor([i for i, k in enumerate(keys) if k == key], device=x.device)
            ids = [layout_ids[i] for i in rows]
            pool = probe_inputs(self.functional[key]["task"], None)
            probes = pool[torch.randint(len(pool), (self.loss_cfg.behaviour_batch,))]
            with torch.no_grad():
                ref = self.network_logits(x[rows], ids, key, probes)
            total = total + behaviour_kl_per_network(ref, self.network_logits(recon[rows], ids, key, probes)).sum()
            count += len(rows)
        return total / max(count, 1)

    def _window_terms(self, batch: Mapping[str, Any], sample_posterior: bool) -> dict[str, Tensor]:
        """The weight losses on windows of chunks (`batch["chunks"]` `[B, W, size]`, numbered `batch["chunk_ids"]`
        `[B, W]`; `ZooDataset(window=...)` reads them): the chunk codec's training step, whose memory does not
        grow with the model. Each row's KL is scaled by its model's chunks / window, an unbiased estimate of the
        whole code's."""
        chunking = self.net.chunking
        chunks = batch["chunks"].to(self.device, torch.float32)
        ids = batch["chunk_ids"].to(self.device).expand(*chunks.shape[:2])
        mean, logvar = self.net.encode_chunks(chunks, ids)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean) if sample_posterior else mean
        recon = self.net.decode_chunks(z, ids)
        mask = chunking.mask.to(self.device)[ids]  # [B, W, size]
        layer = torch.where(mask, chunking.tensor.to(self.device)[ids][..., None], -1)
        flat, rflat = chunks.flatten(1), recon.flatten(1)
        layout = self.net.chunk_layout.to(self.device)[ids[:, 0]]  # [B] each row's layout
        counts = torch.tensor(self.net.chunk_counts, device=self.device)[layout]
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)  # [B]
        terms = {"mse": masked_mse(flat, rflat, mask.flatten(1).to(flat)),
                 "kl": (kl * counts / ids.shape[1]).mean()}
        terms["recon"] = (layerwise_mse(flat, rflat, layer.flatten(1), self.n_layers)
                          if self.loss_cfg.loss == "layer" else terms["mse"])
        terms["loss"] = terms["recon"] + self.loss_cfg.kl_weight * terms["kl"]
        return terms

    def _common_step(self, batch: Mapping[str, Any], stage: str) -> Tensor:
        terms = self.loss_terms(batch, sample_posterior=stage == "train")
        if not torch.isfinite(terms["loss"]):  # one NaN step and every weight of the codec is NaN from then on
            bad = ", ".join(k for k, v in terms.items() if not torch.isfinite(v))
            hint = ("the networks' outputs on the probe inputs are not finite: run your architecture on its task's "
                    "inputs with a zoo network's weights" if "behaviour" in bad else "try a lower train.learning_rate")
            raise FloatingPointError(f"{stage}: the codec's loss is {terms['loss'].item()} in epoch "
                                     f"{self.current_epoch} (non-finite: {bad}); {hint}")
        bs = len(batch["chunks"] if "chunks" in batch else batch["weight"])
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

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        c = self.loss_cfg
        opt = torch.optim.AdamW(self.parameters(), lr=c.learning_rate, betas=c.betas, weight_decay=c.weight_decay)
        if c.lr_schedule == "constant" or self._trainer is None:  # no Trainer (a benchmark's loop): no schedule
            return opt
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, c.learning_rate, pct_start=0.05, anneal_strategy="cos",
                                                    total_steps=max(int(self.trainer.estimated_stepping_batches), 1))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---- self-describing export, loadable without a Trainer
    def export(self) -> dict[str, Any]:
        """The hyperparameters, the weights and, after auto-decoding, the code it fitted to each training network
        (`fitted_codes`: `{"ids": [...], "codes": [N, *latent]}`; the encode stage starts those networks there)."""
        out = {"format_version": FORMAT_VERSION, "hyper_parameters": dict(self.hparams),
               "state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}}
        if self.fitted_codes:
            ids = sorted(self.fitted_codes)
            out["fitted_codes"] = {"ids": ids, "codes": torch.stack([self.fitted_codes[i] for i in ids]).cpu()}
        return out

    @classmethod
    def from_export(cls, path: str) -> VAE:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: format_version {blob.get('format_version')} != {FORMAT_VERSION}; "
                             "retrain with this version of weightvae (dvc repro train)")
        model = cls(**blob["hyper_parameters"])
        model.load_state_dict(blob["state_dict"])
        if "fitted_codes" in blob:
            fitted = blob["fitted_codes"]
            model.fitted_codes = dict(zip(fitted["ids"], fitted["codes"], strict=True))
        return model.eval()


def prediction_signature(logits: Tensor) -> Tensor:
    """Logits `[B, P, K]` -> `[B, P * K]`: the one-hot class each network predicts on each probe input (what the
    function code codes: which classes it picks, so that how often it is right is a linear function of it)."""
    return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).flatten(1).to(logits)


def function_key(task: str, layout_id: str) -> str:
    """Key of `VAE.functional`: networks of one layout, run on one task's probes."""
    return f"{task}/{layout_id}"
