"""Evaluation of reconstructed and sampled weights, in weight space and *as networks*.

Pure functions: no file I/O, no global state. Flat weight vectors are float tensors `[N, L]`
of one layout (architecture); a layout's learned tensors are `slices: [(name, slice), ...]`
into the flat vector. Accuracy alone proves nothing on a model zoo (handing back any other
trained model keeps ~100 % of it), so this module also has the baselines a reconstruction must
beat (the mean model, noisy originals, a random and the nearest training model), prediction
agreement, fidelity gain over the nearest training model, and a memorisation check for samples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from weightvae.archs import build_model
from weightvae.pca import principal_components

Slices = Sequence[tuple[str, slice]]

#: Rows of the left-hand side per `torch.cdist` call: bounds memory at CHUNK x T distances.
CHUNK = 256


# ----------------------------------------------------------------------------- networks


@torch.no_grad()
def predictions(arch: str, kwargs: Mapping[str, Any] | None, state_dicts: Sequence[Mapping[str, Tensor]],
                x: Tensor) -> Tensor:
    """Class predictions `[N_models, N_inputs]` (int64) of each network on inputs `x`.

    One module is built and each state_dict loaded into it in turn: on CPU this beat both
    `vmap(functional_call)` and the zoo's grouped-convolution batched forward (1,000 digits
    CNNs on 539 inputs: ~0.65 s vs 1.2 s and 1.4 s), and it runs exactly the code that
    produced the zoo's stored `test_acc`, so accuracies reproduce bit for bit.
    """
    model = build_model(arch, kwargs).eval()
    out = torch.empty(len(state_dicts), len(x), dtype=torch.int64)
    for i, sd in enumerate(state_dicts):
        model.load_state_dict(sd)
        out[i] = model(x).argmax(1)
    return out


def accuracy(pred: Tensor, y: Tensor) -> Tensor:
    """Share of correct predictions per model: pred `[M, N]`, y `[N]` -> `[M]` (float64, as the zoo stores it)."""
    return (pred == y.unsqueeze(0)).double().mean(1)


def best_agreement(pred: Tensor, candidates: Tensor, exclude: Tensor | None = None,
                   exclude_b: Tensor | None = None, chunk: int = 64) -> tuple[Tensor, Tensor]:
    """For each row of `pred` `[A, N]`, the highest agreement with any row of `candidates` `[B, N]`
    and that row's index (ties: lowest index): (`[A]` float64, `[A]` int64).
    `exclude[i] == exclude_b[j]` masks pair (i, j)."""
    values = torch.empty(len(pred), dtype=torch.float64)
    idx = torch.empty(len(pred), dtype=torch.int64)
    for s in range(0, len(pred), chunk):
        agree = (pred[s:s + chunk, None, :] == candidates[None]).double().mean(-1)  # [chunk, B]
        if exclude is not None:
            agree = agree.masked_fill(exclude[s:s + chunk, None] == exclude_b[None, :], -1.0)
        values[s:s + chunk], idx[s:s + chunk] = agree.max(1)
    return values, idx


def best_error_overlap(pred: Tensor, candidates: Tensor, y: Tensor, chunk: int = 64) -> Tensor:
    """For each row of `pred` `[A, N]`, the highest overlap (intersection over union) of its set of misclassified
    inputs with any row of `candidates`' `[B, N]` (labels `y` `[N]`): `[A]` float64. Zeng et al. (2025)'s
    functional memorisation test: a copy, permuted or not, scores 1. Two empty error sets overlap fully (1)."""
    wrong, wrong_c = (pred != y).double(), (candidates != y).double()
    out = torch.empty(len(pred), dtype=torch.float64)
    for s in range(0, len(pred), chunk):
        inter = wrong[s:s + chunk] @ wrong_c.T  # [chunk, B]
        union = wrong[s:s + chunk].sum(1, keepdim=True) + wrong_c.sum(1)[None, :] - inter
        out[s:s + chunk] = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter)).max(1).values
    return out


def most_agreeing(pred: Tensor, candidates: Tensor, chunk: int = 64) -> Tensor:
    """Index of the candidate network whose predictions agree most with each row of `pred`:
    pred `[M, N]`, candidates `[T, N]` -> `[M]` (ties: lowest index). The best any substitute can do."""
    return best_agreement(pred, candidates, chunk=chunk)[1]


def agreement(pred_a: Tensor, pred_b: Tensor) -> Tensor:
    """Share of inputs on which two networks predict the same class, row by row: `[M, N]` x2 -> `[M]`."""
    if pred_a.shape != pred_b.shape:
        raise ValueError(f"prediction shapes differ: {tuple(pred_a.shape)} vs {tuple(pred_b.shape)}")
    return (pred_a == pred_b).double().mean(1)


def fidelity_gains(agree_recon: Tensor, agree_nearest: Tensor, eps: float) -> Tensor:
    """Per-model `1 - (1 - agree_recon) / max(1 - agree_nearest, eps)`, `[M]`.

    0: no better than handing back the nearest training model; 1: identical predictions;
    negative: worse than that substitute. Where the nearest training model already agrees
    on every input (denominator 0), the denominator is floored at `eps`, which should be one
    input's worth, `1 / N_inputs`: the reconstruction then scores 1 if it too agrees
    everywhere and `1 - k` if it misses k inputs the substitute got right. The floor never
    makes a reconstruction look better than it is; it only keeps the ratio finite (dropping
    those models instead would hide exactly the cases where substitutes are hardest to beat).
    """
    if not eps > 0:
        raise ValueError(f"eps must be > 0 (one input's worth, 1 / N_inputs); got {eps}")
    return 1 - (1 - agree_recon.double()) / (1 - agree_nearest.double()).clamp_min(eps)


def fidelity_gain(agree_recon: Tensor, agree_nearest: Tensor, eps: float) -> float:
    """Mean over models of `fidelity_gains` (see there for the zero-denominator rule; pass `eps=1/N_inputs`)."""
    return fidelity_gains(agree_recon, agree_nearest, eps).mean().item()


# ----------------------------------------------------------------------------- weight space


def r2(orig: Tensor, recon: Tensor, mean: Tensor, slices: Slices) -> dict[str, Any]:
    """R^2 = 1 - sum (recon - orig)^2 / sum (orig - mean)^2, pooled over models and entries.

    `mean` `[L]` is the TRAIN-split mean vector (Schürholt et al.): R^2 is 0 for handing back
    the zoo mean and 1 for a perfect reconstruction. Returns `{"overall": float, "layer_mean":
    float, "per_layer": {name: float}}`. `overall` pools raw units, so the largest layer dominates
    it and a bias's error all but vanishes; `layer_mean` averages the per-layer R^2 instead (every
    layer counts once; NaN layers left out). A layer whose originals all equal the mean gives NaN.
    Sums run in float64 so large zoos do not lose precision.
    """
    orig, recon, mean = orig.double(), recon.double(), mean.double()
    err = (recon - orig).pow(2).sum(0)  # [L]
    var = (orig - mean).pow(2).sum(0)  # [L]

    def score(e: Tensor, v: Tensor) -> float:
        v = v.sum().item()
        return 1 - e.sum().item() / v if v > 0 else float("nan")

    per_layer = {name: score(err[sl], var[sl]) for name, sl in slices}
    known = [v for v in per_layer.values() if not math.isnan(v)]
    return {"overall": score(err, var), "layer_mean": sum(known) / len(known) if known else float("nan"),
            "per_layer": per_layer}


def retention(acc: Tensor, acc_orig: Tensor) -> float:
    """Headline retention: mean accuracy over mean original accuracy (a ratio of means).

    A mean of per-model ratios would let near-chance originals (acc ~0.1) blow the ratio up:
    a substitute at 0.7 for an original at 0.1 counts 7.0.
    """
    return float(acc.double().mean() / acc_orig.double().mean())


def retention_median(acc: Tensor, acc_orig: Tensor, eps: float) -> float:
    """Median over models of acc / original acc (original floored at `eps`, one input's worth)."""
    return float((acc.double() / acc_orig.double().clamp_min(eps)).quantile(0.5))


def mse(orig: Tensor, recon: Tensor) -> Tensor:
    """Mean squared weight error per model: `[M, L]` x2 -> `[M]`."""
    return (recon.double() - orig.double()).pow(2).mean(1)


# ----------------------------------------------------------------------------- baselines


def mean_baseline(train: Tensor, m: int) -> Tensor:
    """The training-split mean model, repeated for `m` test models: `[m, L]`."""
    return train.mean(0, keepdim=True).expand(m, -1).clone()


def noise_baseline(test: Tensor, scale: Tensor, amplitude: float, generator: torch.Generator) -> Tensor:
    """The originals plus Gaussian noise of `amplitude` times each layer's training std
    (`scale` `[L]`, `weightvae.standardize.from_weights`): `[M, L]`.

    What a reconstruction with that much per-layer error would look like, for a few amplitudes.
    """
    noise = torch.randn(test.shape, generator=generator, dtype=test.dtype)
    return test + amplitude * scale.to(test.dtype) * noise


def pca_fit(train: Tensor, mean: Tensor, scale: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The top-`k` principal components of the per-layer standardised training models `[T, L]`:
    (centre `[L]`, basis `[k, L]`), float64. `mean`, `scale` `[L]`: the per-layer standardisation
    (`weightvae.standardize.from_weights`). Components come from an SVD of the centred training matrix;
    with `k` at or above its rank the basis keeps every direction the training models span."""
    centre, basis, _ = principal_components((train.double() - mean.double()) / scale.double(), k)
    return centre, basis


def pca_codes(x: Tensor, mean: Tensor, scale: Tensor, centre: Tensor, basis: Tensor) -> Tensor:
    """The PCA code `[M, k]` (float64) of models `x` `[M, L]`, with a `pca_fit` (centre, basis)."""
    return ((x.double() - mean.double()) / scale.double() - centre) @ basis.T


def pca_baseline(test: Tensor, train: Tensor, mean: Tensor, scale: Tensor, k: int) -> Tensor:
    """Each test model projected onto the top-`k` principal components of the per-layer
    standardised training models and back (`pca_fit`): the linear code of `k` values per model. `[M, L]`."""
    centre, basis = pca_fit(train, mean, scale, k)
    codes = pca_codes(test, mean, scale, centre, basis)  # [M, k]
    return ((codes @ basis + centre) * scale.double() + mean.double()).to(test.dtype)


def random_train_indices(test_meta: pd.DataFrame, train_meta: pd.DataFrame, generator: torch.Generator) -> Tensor:
    """For each test row, a uniformly drawn training row of the same (task, architecture) and
    another run, `[M]` (positions in `train_meta`). Raises if a test row has no such candidate."""
    groups = {key: idx.to_numpy() for key, idx in
              train_meta.reset_index(drop=True).groupby(["task", "architecture"]).groups.items()}
    train_runs = train_meta["run_id"].to_numpy()
    out = torch.empty(len(test_meta), dtype=torch.int64)
    for i, (task, arch, run_id) in enumerate(test_meta[["task", "architecture", "run_id"]].itertuples(index=False)):
        cand = groups.get((task, arch))
        if cand is not None:
            cand = cand[train_runs[cand] != run_id]  # a model's own run is no substitute for it
        if cand is None or len(cand) == 0:
            raise ValueError(f"no training model of task {task!r}, architecture {arch!r} from another run "
                             f"to substitute for test run {run_id!r}")
        out[i] = int(cand[torch.randint(len(cand), (), generator=generator).item()])
    return out


def random_train_baseline(test_meta: pd.DataFrame, train_meta: pd.DataFrame, train: Tensor,
                          generator: torch.Generator) -> Tensor:
    """A random training model of the same (task, architecture) per test model: `[M, L]`.

    Rows of `train` align with `train_meta`; `random_train_indices` with an identically seeded
    generator gives the rows drawn.
    """
    return train[random_train_indices(test_meta, train_meta, generator)].clone()


def _nearest(a: Tensor, b: Tensor, scale: Tensor, exclude: Tensor | None = None,
             exclude_b: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Nearest row of `b` for each row of `a` in L2 over `x / scale`: (indices `[A]`, distances `[A]`).

    float64 so `torch.cdist`'s fast matrix-product path stays accurate (an exact copy gets
    distance ~0, not float32 cancellation noise). `exclude[i] == exclude_b[j]` masks pair (i, j).
    """
    scale = scale.double()
    bs = b.double() / scale
    idx = torch.empty(len(a), dtype=torch.int64)
    dist = torch.empty(len(a), dtype=torch.float64)
    for s in range(0, len(a), CHUNK):
        d = torch.cdist(a[s:s + CHUNK].double() / scale, bs)  # [chunk, B]
        if exclude is not None:
            d = d.masked_fill(exclude[s:s + CHUNK, None] == exclude_b[None, :], float("inf"))
        dist[s:s + CHUNK], idx[s:s + CHUNK] = d.min(1)
    return idx, dist


def nearest_distances(a: Tensor, b: Tensor, scale: Tensor) -> Tensor:
    """`[A]`: each row of `a`'s L2 distance to its nearest row of `b` over `x / scale` (per-layer standardised)."""
    return _nearest(a, b, scale)[1]


def nearest_train_baseline(test: Tensor, train: Tensor, scale: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The training model nearest to each test model in per-layer standardised weights.

    Distance is L2 over `(w - mean) / scale` (the mean cancels in a difference, so only
    `scale` `[L]`, e.g. from `weightvae.standardize.from_weights`, is needed). Returns (vectors `[M, L]`,
    training indices `[M]`, distances `[M]`): the substitute a reconstruction must beat.
    """
    idx, dist = _nearest(test, train, scale)
    return train[idx].clone(), idx, dist


def _run_codes(train_run_ids: Sequence[str], n: int) -> Tensor:
    codes = torch.as_tensor(pd.factorize(pd.Series(list(train_run_ids)))[0])
    if len(codes) != n:
        raise ValueError(f"{len(codes)} run ids for {n} training models")
    if codes.unique().numel() < 2:
        raise ValueError("need training models from at least 2 runs")
    return codes


def train_nn_distances(train: Tensor, scale: Tensor, train_run_ids: Sequence[str]) -> Tensor:
    """`[T]`: each training model's distance (standardised space, as in `nearest_train_baseline`)
    to its nearest training model of *another* run (checkpoints of one run sit close together
    along a trajectory): the yardstick of `novelty_ratio`."""
    codes = _run_codes(train_run_ids, len(train))
    return _nearest(train, train, scale, exclude=codes, exclude_b=codes)[1]


def novelty_ratio(samples: Tensor, train: Tensor, scale: Tensor, reference: Tensor) -> dict[str, Any]:
    """Memorisation check for sampled networks (Zeng et al. 2025).

    Each sample's distance to its nearest training model over the median of `reference`, the
    same distance for a reference population of training models (`train_nn_distances`, or a
    subset of it: the pool the samples were drawn from). A freshly trained model sits near 1.0;
    copies of training models near 0, and samples shrunk toward the mean well below 1.

    Returns `ratio_median` = median(sample nn) / median(reference), `ratio_mean` = mean of the
    per-sample ratios, both medians (midpoint of the two middle values for even counts), and
    `ratios` `[S]` (sample nn / median reference).
    """
    _, sample_nn = _nearest(samples, train, scale)
    ref_med, sample_med = reference.quantile(0.5).item(), sample_nn.quantile(0.5).item()
    ratios = sample_nn / ref_med
    return {
        "ratio_median": sample_med / ref_med,
        "ratio_mean": ratios.mean().item(),
        "sample_nn_median": sample_med,
        "train_nn_median": ref_med,
        "ratios": ratios,
    }


def train_nn_disagreements(train_pred: Tensor, train_run_ids: Sequence[str]) -> Tensor:
    """`[T]`: the share of test inputs on which each training model disagrees with the training
    model of *another* run that agrees with it most: the yardstick of `functional_novelty_ratio`.
    Predictions `[T, N]`; computed once per zoo, it is the costly part."""
    codes = _run_codes(train_run_ids, len(train_pred))
    return 1 - best_agreement(train_pred, train_pred, codes, codes)[0]


def functional_novelty_ratio(samples_pred: Tensor, train_pred: Tensor, reference: float) -> dict[str, Any]:
    """Memorisation check in function space, blind to weight-space symmetries.

    `novelty_ratio` measures distance in weights, where a permuted or rescaled copy of a training
    network looks new. Here a sample's novelty is its disagreement (on the task's test inputs)
    with the training model it agrees with most, over `reference`, the median of
    `train_nn_disagreements` over a reference population of training models. Copies, permuted or
    not, score 0; a fresh network about 1. Only meaningful beside accuracy: a network at chance
    disagrees with everything. Predictions: `[S, N]`, `[T, N]`. As in `fidelity_gains`, the
    reference is floored at one input's worth (`1 / N`): on an easy task most training models
    predict exactly as another run's, and the ratio then counts the inputs a sample differs on.
    """
    sample_dis = (1 - best_agreement(samples_pred, train_pred)[0]).quantile(0.5).item()
    return {"ratio_median": sample_dis / max(reference, 1 / samples_pred.shape[1]),
            "sample_disagreement_median": sample_dis,
            "train_disagreement_median": reference}
