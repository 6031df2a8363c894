"""B networks of one architecture run at once, for any `nn.Module`: `torch.func.functional_call` vmapped over
the network axis.

The networks come as flat weight vectors `[B, length]` (real, not standardised) cut by their `Layout`: each
learned entry (parameters and float buffers, e.g. BatchNorm's running mean and variance) is a slice of the
vector; the integer buffers (BatchNorm's `num_batches_tracked`) are not in it and come from each network's
stored `buffers` (`Layout.buffers`), or the module's own when none are given. The module runs in eval mode:
BatchNorm normalises with each network's own running statistics, dropout is off. Differentiable in the
parameters and in BatchNorm's running statistics: the behavioural term and latent refinement take gradients
through it. PyTorch's batch norm gives no gradient for the running mean and variance, and a decoded network's
statistics are as much its function as its weights, so each BatchNorm that normalises with them computes that
normalisation itself in plain differentiable ops (`_eval_batch_norm`: the same outputs to float rounding). Other
float buffers enter as constants. A running variance is clamped at 0 (`weightvae.layout.is_variance`): a decoded
network's may be negative, which would give NaN.

A module vmap cannot run (data-dependent control flow on its weights, an in-place update of a buffer) falls
back to a loop over the networks, one `functional_call` each, after one printed line saying so; a module that
cannot run either way stops with one line naming it and why. The behavioural term is never silently lost.
"""

from __future__ import annotations

import copy
import functools
import json
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from weightvae.layout import Layout, is_variance, to_dtype

Buffers = Mapping[str, Mapping[str, Any]]  # one network's stored buffers: {name: {"dtype", "shape", "data"}}


PAIRS_PER_CALL = 16_384  # network x input pairs run at once: more inputs go in chunks, so that their activations
#                          stay small (encode runs 256 networks on all 1,258 probe inputs of digits at once)


class ForwardError(ValueError):
    """A module weightvae cannot run on flat weights; the message names the module and why."""


class BatchedForward:
    """`forward(flat [B, length], x [N, ...], buffers) -> outputs [B, N, ...]` for one module and layout."""

    def __init__(self, module: nn.Module, layout: Layout, name: str | None = None,
                 log: Callable[[str], None] = print):
        self.module = copy.deepcopy(module).eval()  # its BatchNorms are rewired below; the caller's stays as it is
        self.layout = layout
        self.name = name or type(module).__name__
        self.log = log
        own = {**dict(module.named_parameters(remove_duplicate=False)),
               **dict(module.named_buffers(remove_duplicate=False))}
        for e in layout.entries:
            if e.name not in own:
                raise ForwardError(f"{self.name}: the layout's {e.name!r} is not a parameter or buffer of "
                                   f"{type(module).__name__} (its state_dict keys: {sorted(own)[:6]}...); "
                                   "is this the architecture the networks were saved from?")
            if tuple(own[e.name].shape) != e.shape:
                raise ForwardError(f"{self.name}: {e.name!r} has shape {list(e.shape)} in the layout but "
                                   f"{list(own[e.name].shape)} in the module built from the stored kwargs")
        # each tensor runs in the module's own dtype (a float16 zoo is stored as float16, loaded as the module's)
        self._dtype = {n: own[n].dtype for n in (e.name for e in layout.entries)}
        self._buffer = {n for n, _ in module.named_buffers(remove_duplicate=False)}
        self._differentiable = set()  # the running statistics of the BatchNorms that compute themselves
        for prefix, m in self.module.named_modules(remove_duplicate=False):
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.forward = types.MethodType(_eval_batch_norm, m)
                self._differentiable |= {f"{prefix}.running_mean".lstrip("."), f"{prefix}.running_var".lstrip(".")}
        self.vmapped: bool | None = None  # None: not tried yet

    def tensors(self, flat: Tensor) -> dict[str, Tensor]:
        """The learned entries `[B, *shape]` of the vectors `flat` `[B, length]` (views, differentiable; float
        buffers other than BatchNorm's running statistics detached; running variances clamped at 0)."""
        b = flat.shape[0]
        out = {}
        for e in self.layout.learned:
            t = flat[:, e.offset:e.offset + e.numel].reshape(b, *e.shape).to(self._dtype[e.name])
            if e.name in self._buffer and e.name not in self._differentiable:
                t = t.detach()
            out[e.name] = t.clamp(min=0) if is_variance(e.name) else t
        return out

    def buffer_tensors(self, buffers: Buffers | Sequence[Buffers] | None,
                       device: torch.device) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(per-network `[B, *shape]`, shared `[*shape]`) integer buffers: a list gives each network its own
        (stacked, unless all equal), one mapping is shared by all, None keeps the module's."""
        names = [e for e in self.layout.entries if not e.learned]
        if buffers is None or not names:
            return {}, {}
        if isinstance(buffers, Mapping):
            buffers = [buffers]
        per: dict[str, Tensor] = {}
        shared: dict[str, Tensor] = {}
        for e in names:
            values = []
            for i, b in enumerate(buffers):
                if e.name not in b:
                    raise ForwardError(f"{self.name}: network {i}'s stored buffers lack {e.name!r}")
                values.append(tuple(b[e.name]["data"]))
            dtype = self._dtype[e.name] if e.dtype not in ("bool",) else to_dtype(e.dtype)
            if len(set(values)) == 1:
                shared[e.name] = torch.tensor(values[0], dtype=dtype, device=device).reshape(e.shape)
            else:
                per[e.name] = torch.tensor(values, dtype=dtype, device=device).reshape(len(values), *e.shape)
        return per, shared

    def __call__(self, flat: Tensor, x: Tensor, buffers: Buffers | Sequence[Buffers] | None = None) -> Tensor:
        if flat.dim() != 2 or flat.shape[1] != self.layout.length:
            raise ForwardError(f"{self.name}: flat weights of shape {list(flat.shape)}; expected "
                               f"[networks, {self.layout.length}] (layout {self.layout.layout_id})")
        self.module.to(flat.device)
        params = self.tensors(flat)
        per, shared = self.buffer_tensors(buffers, flat.device)
        if per and len(next(iter(per.values()))) != len(flat):
            raise ForwardError(f"{self.name}: {len(next(iter(per.values())))} networks' buffers for {len(flat)} "
                               "networks")
        x = x.to(flat.device)
        step = max(1, PAIRS_PER_CALL // len(flat))
        if len(x) > step:
            return torch.cat([self._run(params, per, shared, x[i:i + step]) for i in range(0, len(x), step)], 1)
        return self._run(params, per, shared, x)

    def _run(self, params, per, shared, x) -> Tensor:
        if self.vmapped is not False:
            try:
                out = self._vmapped(params, per, shared, x)
                self.vmapped = True
                return out
            except Exception as e:  # vmap's refusals are RuntimeErrors, ValueErrors, NotImplementedErrors...
                if self.vmapped:
                    raise  # it ran before: this is the inputs' fault, not vmap's
                reason = _first_line(e)
                self.vmapped = False
                self.log(f"weightvae: {self.name} cannot be vmapped ({reason}); running its networks one at a "
                         "time (same outputs and gradients, slower)")
        return self._loop(params, per, shared, x)

    def _call(self, params: Mapping[str, Tensor], per: Mapping[str, Tensor], shared: Mapping[str, Tensor],
              x: Tensor) -> Tensor:
        return functional_call(self.module, {**params, **per, **shared}, (x,), strict=False)

    def _vmapped(self, params, per, shared, x) -> Tensor:
        return vmap(self._call, in_dims=(0, 0, None, None))(params, per, shared, x)

    def _loop(self, params, per, shared, x) -> Tensor:
        outs = []
        for i in range(len(next(iter(params.values())))):
            try:
                outs.append(self._call({k: v[i] for k, v in params.items()}, {k: v[i] for k, v in per.items()},
                                       shared, x))
            except Exception as e:  # noqa: BLE001 - any failure of the user's module becomes one named line
                raise ForwardError(f"{self.name} cannot be run on flat weights: {_first_line(e)}") from None
        return torch.stack(outs)


def _eval_batch_norm(self: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    """A BatchNorm's eval-mode forward, (x - running mean) / sqrt(running var + eps) * weight + bias over the
    channel axis (1), in ops autograd differentiates in all four (PyTorch's own gives the statistics none)."""
    if self.training:
        return type(self).forward(self, x)
    self._check_input_dim(x)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    y = (x - self.running_mean.reshape(shape)) * torch.rsqrt(self.running_var.reshape(shape) + self.eps)
    return y * self.weight.reshape(shape) + self.bias.reshape(shape) if self.affine else y


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


@functools.cache
def _cached(arch: str, kwargs_json: str, layout_json: str) -> BatchedForward:
    from weightvae.archs import build_model

    return BatchedForward(build_model(arch, json.loads(kwargs_json)), Layout.from_dict(json.loads(layout_json)),
                          name=f"architecture {arch!r}")


def forward_for(arch: str, kwargs: Mapping[str, Any] | None, layout: Layout) -> BatchedForward:
    """The (cached, per process) batched forward of architecture `arch` built with `kwargs`, on `layout`."""
    return _cached(arch, json.dumps(dict(kwargs or {}), sort_keys=True),
                   json.dumps(layout.to_dict(), sort_keys=True))


def batched_forward(arch: str, kwargs: Mapping[str, Any] | None, layout: Layout, flat: Tensor, x: Tensor,
                    buffers: Buffers | Sequence[Buffers] | None = None) -> Tensor:
    """Outputs `[B, N, ...]` of the B networks `flat` `[B, length]` of architecture `arch` on inputs `x`
    `[N, ...]` (shared by all): `vmap(functional_call)`, in eval mode, differentiable in `flat`."""
    return forward_for(arch, kwargs, layout)(flat, x, buffers)
