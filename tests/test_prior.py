import numpy as np
import pytest
import torch

from weightvae.prior import LatentKDE, top_fraction


def test_top_fraction_picks_the_best_and_skips_unknown():
    acc = np.array([0.5, np.nan, 0.9, 0.1, 0.7, 0.3])
    assert top_fraction(acc, 0.4).tolist() == [2, 4]  # 40% of the 5 known scores: 2
    assert top_fraction(acc, 0.01).tolist() == [2]  # at least one
    assert top_fraction(acc, 1.0).tolist() == [0, 1, 2, 3, 4, 5]  # 1.0: every row, unknown included
    assert top_fraction(np.array([0.9, 0.8, 0.8, 0.1]), 0.5).tolist() == [0, 1, 2]  # ties at the cut all kept
    assert top_fraction(np.array([np.nan, np.nan]), 0.3).tolist() == [0, 1]  # no metrics: all
    assert len(top_fraction(np.arange(100) / 100, 0.55)) == 55  # 0.55 * 100 = 55.000000000000007 in floats


def test_kde_bandwidth_zero_returns_pool_latents():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(10, 2, 3, 3, generator=g)
    pool = np.array([1, 4, 7])
    kde = LatentKDE(z, pool, bandwidth=0.0)
    out, anchors = kde.sample(20, torch.Generator().manual_seed(1))
    assert out.shape == (20, 2, 3, 3) and set(anchors) <= {1, 4, 7} and len(set(anchors)) > 1
    assert torch.equal(out, z[torch.as_tensor(anchors)])


def test_kde_noise_scales_with_bandwidth_and_latent_spread():
    g = torch.Generator().manual_seed(0)
    spread = torch.tensor([0.1, 1.0, 10.0])
    z = torch.randn(500, 3, generator=g) * spread
    kde = LatentKDE(z, np.arange(500), bandwidth=0.5)
    out, anchors = kde.sample(20_000, torch.Generator().manual_seed(1))
    rel = (out - z[torch.as_tensor(anchors)]) / z.std(0, unbiased=False)
    assert rel.std(0).tolist() == pytest.approx([0.5, 0.5, 0.5], rel=0.03)
    again, anchors2 = kde.sample(20_000, torch.Generator().manual_seed(1))
    assert torch.equal(out, again) and (anchors == anchors2).all()  # seeded: same draws


def test_kde_width_comes_from_all_latents_not_the_pool():
    z = torch.cat([torch.zeros(1, 2), torch.full((1, 2), 2.0)])  # spread (population std) 1.0 per dimension
    kde = LatentKDE(z, np.array([0]), bandwidth=0.5)
    out, anchors = kde.sample(20_000, torch.Generator().manual_seed(0))
    assert set(anchors) == {0}
    assert out.std(0).tolist() == pytest.approx([0.5, 0.5], rel=0.03)


def test_kde_needs_a_pool():
    with pytest.raises(ValueError, match="at least one training latent"):
        LatentKDE(torch.zeros(3, 2), np.array([], dtype=int), 0.5)
