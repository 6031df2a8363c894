import math

import pandas as pd
import pytest
import torch

from weightvae.archs import build_model, evaluate_model
from weightvae.metrics import (
    accuracy,
    agreement,
    fidelity_gain,
    fidelity_gains,
    functional_novelty_ratio,
    mean_baseline,
    mse,
    nearest_train_baseline,
    noise_baseline,
    novelty_ratio,
    pca_baseline,
    predictions,
    r2,
    random_train_baseline,
    random_train_indices,
    retention,
    retention_median,
    train_nn_disagreements,
    train_nn_distances,
)
from weightvae.standardize import from_weights
from weightvae.tasks import get_task


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_cnns(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    out = []
    for i in range(n):
        torch.manual_seed(seed + i)
        out.append(build_model("cnn").state_dict())
    return out


def flatten(sds):
    """State dicts -> flat `[N, L]` and the layout's slices (state_dict order)."""
    slices, start = [], 0
    for k, v in sds[0].items():
        slices.append((k, slice(start, start + v.numel())))
        start += v.numel()
    return torch.stack([torch.cat([sd[k].flatten() for k in sd]) for sd in sds]), slices


def unflatten(vec, sds, slices):
    return {k: vec[sl].view_as(sds[0][k]).clone() for k, sl in slices}


# ----------------------------------------------------------------------------- R^2 and MSE


def test_r2_perfect_is_one_and_mean_is_zero():
    x = torch.randn(20, 7, generator=gen())
    mean = torch.randn(20, 7, generator=gen(1)).mean(0)
    slices = [("a", slice(0, 3)), ("b", slice(3, 7))]
    perfect = r2(x, x.clone(), mean, slices)
    assert perfect["overall"] == 1.0 and perfect["per_layer"] == {"a": 1.0, "b": 1.0}
    at_mean = r2(x, mean.expand_as(x), mean, slices)
    assert at_mean["overall"] == pytest.approx(0.0, abs=1e-12)
    assert all(v == pytest.approx(0.0, abs=1e-12) for v in at_mean["per_layer"].values())


def test_r2_and_mse_hand_checked():
    mean = torch.tensor([1.0, 1.0, 1.0])
    orig = torch.tensor([[0.0, 2.0, 0.0], [2.0, 0.0, 2.0]])  # every (orig - mean)^2 is 1
    recon = orig + torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # one unit error in layer a
    out = r2(orig, recon, mean, [("a", slice(0, 2)), ("b", slice(2, 3))])
    assert out["per_layer"]["a"] == pytest.approx(1 - 1 / 4)
    assert out["per_layer"]["b"] == pytest.approx(1.0)
    assert out["overall"] == pytest.approx(1 - 1 / 6)
    assert torch.allclose(mse(orig, recon), torch.tensor([1 / 3, 0.0], dtype=torch.float64))


def test_r2_constant_layer_is_nan():
    orig = torch.ones(3, 2)
    assert math.isnan(r2(orig, orig, torch.ones(2), [("a", slice(0, 2))])["per_layer"]["a"])


# ----------------------------------------------------------------------------- networks


def test_predictions_match_module_and_agreement():
    task = get_task("digits")
    sds = random_cnns(3)
    pred = predictions("cnn", {}, sds, task.x_test)
    assert pred.shape == (3, len(task.y_test)) and pred.dtype == torch.int64
    for i, sd in enumerate(sds):
        model = build_model("cnn")
        model.load_state_dict(sd)
        ref = evaluate_model(model, task.x_test, task.y_test)
        assert torch.equal(pred[i], ref["pred"])
        assert accuracy(pred, task.y_test)[i].item() == ref["acc"]  # exact, as the zoo stores it
    assert torch.equal(agreement(pred, pred), torch.ones(3, dtype=torch.float64))
    manual = (pred[0] == pred[1]).sum().item() / pred.shape[1]
    assert agreement(pred[:1], pred[1:2]).item() == pytest.approx(manual)
    with pytest.raises(ValueError):
        agreement(pred, pred[:2])


def test_nearest_and_noise_baselines_on_real_cnns():
    """Noisy copies of training CNNs: nearest-train finds their source, and predicts like them."""
    task = get_task("digits")
    sds = random_cnns(8)
    train, slices = flatten(sds)
    _, std = from_weights(train, slices)
    test = noise_baseline(train[[2, 5]], std, 0.05, gen())
    vecs, idx, dist = nearest_train_baseline(test, train, std)
    assert idx.tolist() == [2, 5] and torch.equal(vecs, train[[2, 5]])
    score = r2(test, noise_baseline(test, std, 0.1, gen(1)), train.mean(0), slices)
    assert 0.97 < score["overall"] < 1.0
    assert set(score["per_layer"]) == {k for k, _ in slices}
    p_test = predictions("cnn", {}, [unflatten(v, sds, slices) for v in test], task.x_test)
    p_near = predictions("cnn", {}, [unflatten(v, sds, slices) for v in vecs], task.x_test)
    assert agreement(p_test, p_near).min() > 0.8


# ----------------------------------------------------------------------------- fidelity gain


def test_fidelity_gain():
    n = 539
    near = torch.tensor([0.9, 0.8])
    assert fidelity_gain(torch.ones(2), near, 1 / n) == 1.0
    assert fidelity_gain(near.clone(), near, 1 / n) == pytest.approx(0.0)
    assert fidelity_gain(torch.tensor([0.8, 0.7]), near, 1 / n) < 0
    assert fidelity_gains(torch.tensor([0.95, 0.8]), near, 1 / n).tolist() == pytest.approx([0.5, 0.0])
    # Nearest training model already agrees everywhere: denominator floored at one input's worth.
    perfect = torch.ones(1)
    assert fidelity_gain(torch.ones(1), perfect, 1 / n) == 1.0
    assert fidelity_gain(torch.tensor([1 - 2 / n], dtype=torch.float64), perfect, 1 / n) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        fidelity_gain(near, near, 0.0)


# ----------------------------------------------------------------------------- baselines


def test_mean_baseline():
    train = torch.tensor([[0.0, 2.0, 5.0], [2.0, 0.0, 5.0]])
    assert torch.equal(mean_baseline(train, 4), torch.tensor([[1.0, 1.0, 5.0]] * 4))


def test_retention_is_a_ratio_of_means_not_a_mean_of_ratios():
    """A substitute at 0.7 for a near-chance original at 0.1 must not count 7.0."""
    orig = torch.tensor([0.1, 0.9, 0.8], dtype=torch.float64)
    sub = torch.tensor([0.7, 0.6, 0.8], dtype=torch.float64)
    assert retention(sub, orig) == pytest.approx(2.1 / 1.8)  # (0.7 + 0.6 + 0.8) / (0.1 + 0.9 + 0.8)
    assert retention_median(sub, orig, 1 / 500) == pytest.approx(1.0)  # ratios 7, 2/3, 1
    assert retention_median(torch.tensor([0.5]), torch.tensor([0.0]), 0.01) == pytest.approx(50.0)  # floored


def test_r2_overall_pools_raw_units_and_layer_mean_counts_each_layer_once():
    orig = torch.tensor([[10.0, -10.0, 1.0], [-10.0, 10.0, -1.0]])
    mean = torch.zeros(3)
    recon = orig.clone()
    recon[:, 2] = 0.0  # the small layer 'b' entirely lost: its R^2 is 0
    slices = [("a", slice(0, 2)), ("b", slice(2, 3))]
    score = r2(orig, recon, mean, slices)
    assert score["per_layer"] == {"a": 1.0, "b": 0.0}
    assert score["overall"] == pytest.approx(1 - 2 / 402)  # dominated by the large layer
    assert score["layer_mean"] == 0.5


def test_pca_baseline_keeps_the_top_components_and_undoes_the_standardisation():
    g = gen(0)
    basis = torch.randn(2, 6, generator=g, dtype=torch.float64)
    train = torch.randn(50, 2, generator=g, dtype=torch.float64) @ basis  # rank 2
    mean = torch.tensor([1.0, 1, 1, -2, -2, -2], dtype=torch.float64)
    scale = torch.tensor([2.0, 2, 2, 0.5, 0.5, 0.5], dtype=torch.float64)
    train, test = train * scale + mean, (torch.randn(5, 2, generator=g, dtype=torch.float64) @ basis) * scale + mean
    assert torch.allclose(pca_baseline(test, train, mean, scale, 2), test)  # in the span: exact
    zero = pca_baseline(test, train, mean, scale, 0)  # k = 0: the training mean for every model
    assert torch.allclose(zero, train.mean(0).expand_as(test))
    one = pca_baseline(test, train, mean, scale, 1)
    z = (train - mean) / scale
    top = torch.linalg.svd(z - z.mean(0), full_matrices=False)[2][0]
    expect = (((test - mean) / scale - z.mean(0)) @ top)[:, None] * top + z.mean(0)
    assert torch.allclose(one, expect * scale + mean)


def test_noise_baseline_scale_and_determinism():
    test = torch.zeros(400, 3)
    std = torch.tensor([1.0, 2.0, 0.0])
    a = noise_baseline(test, std, 0.5, gen(3))
    assert torch.equal(a, noise_baseline(test, std, 0.5, gen(3)))
    assert not torch.equal(a, noise_baseline(test, std, 0.5, gen(4)))
    assert a.std(0)[:2].tolist() == pytest.approx([0.5, 1.0], rel=0.15)
    assert torch.equal(a[:, 2], torch.zeros(400))


def test_nearest_train_is_brute_force_nearest():
    train = torch.randn(300, 50, generator=gen())
    test = torch.randn(40, 50, generator=gen(1))
    scale = torch.rand(50, generator=gen(2)) + 0.1
    vecs, idx, dist = nearest_train_baseline(test, train, scale)
    brute = torch.stack([((t - train) / scale).double().norm(dim=1) for t in test])  # [40, 300]
    assert torch.equal(idx, brute.argmin(1))
    assert torch.allclose(dist, brute.min(1).values)
    assert torch.equal(vecs, train[idx])


def _meta(n_per: int, tag: str) -> pd.DataFrame:
    rows = [{"task": t, "architecture": a, "run_id": f"{t}-{a}-{tag}{i // 2}"}
            for t in ("digits", "digits_inverted") for a in ("cnn", "mlp") for i in range(n_per)]
    return pd.DataFrame(rows)


def test_random_train_stays_within_task_and_architecture():
    train_meta = _meta(10, "r")
    train_meta = train_meta.sample(frac=1, random_state=0).reset_index(drop=True)  # shuffled rows
    test_meta = pd.concat([_meta(4, "t"), train_meta.iloc[:3]], ignore_index=True)  # also rows from train runs
    train = torch.arange(len(train_meta), dtype=torch.float32)[:, None].expand(-1, 3)
    idx = random_train_indices(test_meta, train_meta, gen(7))
    chosen = train_meta.iloc[idx.numpy()].reset_index(drop=True)
    assert (chosen["task"] == test_meta["task"]).all()
    assert (chosen["architecture"] == test_meta["architecture"]).all()
    assert (chosen["run_id"] != test_meta["run_id"]).all()
    vecs = random_train_baseline(test_meta, train_meta, train, gen(7))
    assert torch.equal(vecs, train[idx])
    assert torch.equal(idx, random_train_indices(test_meta, train_meta, gen(7)))
    assert not torch.equal(idx, random_train_indices(test_meta, train_meta, gen(8)))
    lonely = pd.DataFrame([{"task": "digits", "architecture": "vit", "run_id": "x"}])
    with pytest.raises(ValueError, match="vit"):
        random_train_indices(lonely, train_meta, gen())


# ----------------------------------------------------------------------------- novelty


def _trajectory_zoo(runs: int, ckpts: int, dim: int, g: torch.Generator):
    """Runs at independent N(0, 1) centres, their checkpoints close together around them."""
    centres = torch.randn(runs, dim, generator=g)
    train = (centres[:, None] + 0.05 * torch.randn(runs, ckpts, dim, generator=g)).flatten(0, 1)
    return train, [f"run{r}" for r in range(runs) for _ in range(ckpts)]


def test_novelty_ratio():
    g = gen(0)
    train, run_ids = _trajectory_zoo(60, 4, 200, g)
    scale = torch.ones(200)
    fresh, _ = _trajectory_zoo(30, 1, 200, g)  # new runs from the same distribution
    mean = train.mean(0)
    shrunk = mean + 0.3 * (fresh - mean)
    copies = train[torch.randperm(len(train), generator=g)[:30]]

    ref = train_nn_distances(train, scale, run_ids)
    r_fresh = novelty_ratio(fresh, train, scale, ref)
    r_shrunk = novelty_ratio(shrunk, train, scale, ref)
    r_copies = novelty_ratio(copies, train, scale, ref)
    # Other-run neighbours only: same-run checkpoints (distance ~0.05 * sqrt(2 * 200)) don't count.
    assert r_fresh["train_nn_median"] > 10 and ref.shape == (240,)
    assert 0.85 < r_fresh["ratio_median"] < 1.15
    assert r_copies["ratio_median"] < 1e-6 and r_copies["sample_nn_median"] < 1e-6
    assert r_shrunk["ratio_median"] < 0.85 * r_fresh["ratio_median"]
    assert r_shrunk["ratio_mean"] < r_fresh["ratio_mean"]
    assert r_fresh["ratios"].shape == (30,)
    assert r_fresh["ratio_median"] == pytest.approx(r_fresh["sample_nn_median"] / r_fresh["train_nn_median"])
    again = novelty_ratio(fresh, train, scale, ref)
    assert again["ratio_median"] == r_fresh["ratio_median"] and torch.equal(again["ratios"], r_fresh["ratios"])
    # a reference population (the pool) of half the distance doubles the ratio
    assert novelty_ratio(fresh, train, scale, ref / 2)["ratio_median"] == pytest.approx(2 * r_fresh["ratio_median"])
    with pytest.raises(ValueError):
        train_nn_distances(train, scale, run_ids[:-1])


def test_functional_novelty_ratio():
    """Copies (permuted or not, they predict alike) score 0; networks that disagree with every
    training model as much as training runs disagree with each other score about 1."""
    g = gen(0)
    n, runs = 400, 40
    labels = torch.randint(10, (n,), generator=g)

    def noisy(k: int, flip: float) -> torch.Tensor:  # k predictors, each wrong on a random `flip` share
        pred = labels.repeat(k, 1)
        wrong = torch.rand(k, n, generator=g) < flip
        return torch.where(wrong, torch.randint(10, (k, n), generator=g), pred)

    per_run = noisy(runs, 0.3)
    train = per_run.repeat_interleave(2, 0)  # two identical checkpoints per run: never each other's neighbour
    run_ids = [f"run{r}" for r in range(runs) for _ in range(2)]
    dis = train_nn_disagreements(train, run_ids)
    assert dis.shape == (80,)
    scale = dis.quantile(0.5).item()
    copies = functional_novelty_ratio(train[torch.randperm(len(train), generator=g)[:20]], train, scale)
    fresh = functional_novelty_ratio(noisy(20, 0.3), train, scale)
    assert copies["ratio_median"] == 0.0 and copies["sample_disagreement_median"] == 0.0
    assert scale > 0.2 and fresh["train_disagreement_median"] == scale  # other-run neighbours only
    assert 0.85 < fresh["ratio_median"] < 1.15
    # an easy task (training runs predict alike: reference 0): the ratio counts the inputs a sample differs on
    two_off = labels.repeat(3, 1)
    two_off[:, :2] = (labels[:2] + 1) % 10
    easy = functional_novelty_ratio(two_off, labels[None], 0.0)
    assert easy["ratio_median"] == pytest.approx(2.0) and easy["train_disagreement_median"] == 0.0
    with pytest.raises(ValueError, match="run ids"):
        train_nn_disagreements(train, run_ids[:-1])
    with pytest.raises(ValueError, match="at least 2 runs"):
        train_nn_disagreements(train[:2], run_ids[:2])


def test_most_agreeing_picks_the_best_substitute():
    from weightvae.metrics import most_agreeing

    pred = torch.tensor([[0, 1, 2, 3], [3, 3, 3, 3]])
    cands = torch.tensor([[0, 1, 0, 0], [0, 1, 2, 0], [3, 3, 3, 0], [3, 3, 3, 3]])
    assert most_agreeing(pred, cands).tolist() == [1, 3]
    assert most_agreeing(pred, cands, chunk=1).tolist() == [1, 3]
