import math

import pytest
import torch

from weightvae.losses import layerwise_mse, masked_mse
from weightvae.model import VAE
from weightvae.nets import VAEConfig, image_shape, vae_kwargs


def tiny(max_len=50, n_layers=1, **loss):
    cfg = VAEConfig(max_len=max_len, codec="conv", channels=(4, 8), latent_dim=6, latent="flat")
    return VAE(vae_kwargs(cfg), loss or None, n_layers=n_layers)


@pytest.mark.parametrize("length, levels, expected", [(1706, 3, (40, 44)), (50, 2, (8, 8)), (1, 1, (1, 1)),
                                                      (100, 1, (10, 10)), (101, 1, (10, 11))])
def test_image_shape_is_near_square_and_covers_the_vector(length, levels, expected):
    h, w = image_shape(length, levels)
    assert (h, w) == expected
    assert h * w >= length and h % 2 ** (levels - 1) == 0 and w % 2 ** (levels - 1) == 0


def test_shapes_for_tensor_and_dict_inputs():
    m = tiny()
    x = torch.randn(3, 50)
    assert m.get_input(x).shape == (3, 1, 8, 8)
    assert torch.equal(m.get_input(x).flatten(1)[:, :50], x)  # padding is appended, values untouched
    inputs, recon, post = m(x)
    assert inputs.shape == recon.shape == (3, 50) and post.mean.shape == post.std.shape == (3, 6)
    assert post.sample().shape == post.mode().shape == (3, 6) and post.kl().shape == (3,)
    props = [{"id": i} for i in range(3)]
    inputs, recon, post, mp = m({"weight": x, "model_properties": props})
    assert recon.shape == (3, 50) and mp is props
    assert m.decode(post.mode()).shape == (3, 50)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_a_non_finite_loss_stops_training_with_the_terms_that_are_not_finite():
    m = tiny()
    x = torch.randn(3, 50)
    m._common_step({"weight": x, "model_properties": [{"id": i} for i in range(3)]}, "val")  # finite: no error
    x[1, 7] = math.nan
    with pytest.raises(FloatingPointError, match=r"train: the codec's loss is nan in epoch 0 \(non-finite: mse, kl, "
                                                 r"recon, loss\); try a lower train.learning_rate"):
        m._common_step({"weight": x, "model_properties": [{"id": i} for i in range(3)]}, "train")


def test_wrong_shapes_are_refused_not_broadcast():
    m = tiny()
    with pytest.raises(AssertionError, match=r"expected flat weights \[B, 50\]"):
        m(torch.randn(3, 1, 50))
    with pytest.raises(AssertionError):
        masked_mse(torch.randn(3, 1, 50), torch.randn(3, 50), torch.ones(3, 50))


def test_loss_ignores_padding():
    m = tiny(n_layers=2, loss="layer").eval()
    x = torch.randn(2, 50)
    mask = torch.ones(2, 50)
    mask[:, 40:] = 0
    layer = torch.zeros(2, 50, dtype=torch.long)
    layer[:, 20:40] = 1
    layer[:, 40:] = -1
    batch = {"weight": x, "mask": mask, "layer": layer}
    # change what sits in the padding of the *target* and of the *reconstruction*
    with torch.no_grad():
        t = m.loss_terms(batch, sample_posterior=False)
        recon = m.net(x, sample_posterior=False)[0]
        assert layerwise_mse(x, recon, layer, 2) == t["recon"]
        x2 = x.clone()
        x2[:, 40:] = 1e3
        recon2 = recon.clone()
        recon2[:, 40:] = -1e3
        assert layerwise_mse(x2, recon2, layer, 2) == layerwise_mse(x, recon, layer, 2)
        assert masked_mse(x2, recon2, mask) == masked_mse(x, recon, mask)


def test_layerwise_loss_weights_a_small_layer_as_much_as_a_large_one():
    x = torch.zeros(1, 110)
    layer = torch.zeros(1, 110, dtype=torch.long)
    layer[:, 100:] = 1  # a 100-entry layer and a 10-entry layer
    err_big = x.clone()
    err_big[:, :100] = 1.0
    err_small = x.clone()
    err_small[:, 100:] = 1.0
    assert layerwise_mse(x, err_big, layer, 2) == layerwise_mse(x, err_small, layer, 2) == 0.5
    mask = torch.ones(1, 110)
    assert masked_mse(x, err_small, mask) < masked_mse(x, err_big, mask) / 9  # plain MSE drowns the small layer


def test_kl_matches_torch_distributions_at_random_values():
    from torch.distributions import Independent, Normal, kl_divergence

    from weightvae.nets import DiagonalGaussian

    g = torch.Generator().manual_seed(0)
    params = torch.randn(4, 12, generator=g, dtype=torch.float64) * 2  # mean [4, 6], logvar [4, 6]
    post = DiagonalGaussian(params)
    mean, logvar = params.chunk(2, dim=1)
    q = Independent(Normal(mean, torch.exp(0.5 * logvar)), 1)
    p = Independent(Normal(torch.zeros_like(mean), torch.ones_like(mean)), 1)
    torch.testing.assert_close(post.kl(), kl_divergence(q, p))
    assert torch.equal(DiagonalGaussian(torch.zeros(4, 12)).kl(), torch.zeros(4))
    spatial = DiagonalGaussian(torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64))  # [B, 2C, H, W]
    m, lv = spatial.mean, spatial.logvar
    q = Independent(Normal(m, torch.exp(0.5 * lv)), 3)
    torch.testing.assert_close(spatial.kl(), kl_divergence(q, Independent(Normal(0 * m, 1 + 0 * m), 3)))


def test_spatial_latent_shapes_and_padding():
    """The conv codec's default latent: `latent_channels` values per pixel of the bottom feature map."""
    m = VAE(vae_kwargs(VAEConfig(max_len=50, codec="conv", channels=(4, 8), latent_channels=3)))
    x = torch.randn(2, 50)
    assert m.get_input(x).shape == (2, 1, 8, 8) and m.net.latent_shape == (3, 4, 4)
    _, recon, post = m(x)
    assert recon.shape == (2, 50) and post.mean.shape == post.std.shape == (2, 3, 4, 4)
    assert m.decode(post.mode()).shape == (2, 50)
    one = VAE(vae_kwargs(VAEConfig(max_len=1706, codec="conv", channels=(16,))))
    assert one.net.latent_shape == (1, 41, 42)  # 1,722 values for 1,706 weights: no compression


def test_d2nwg_preset_matches_the_seed_description():
    m = VAE(vae_kwargs(VAEConfig.d2nwg(2864)))
    assert m.get_input(torch.randn(2, 2864)).shape == (2, 1, 64, 64)
    assert m.net.latent_shape == (4, 16, 16)
    linear = m.net.proj_in.weight.numel() + m.net.proj_in.bias.numel() + m.net.proj_out.weight.numel() + \
        m.net.proj_out.bias.numel()
    assert 23.4e6 < linear < 23.6e6  # FIELD.md: the two linear layers hold about 23.5 M parameters
    small = VAE(vae_kwargs(VAEConfig(max_len=2864, codec="conv")))
    assert sum(p.numel() for p in small.parameters()) * 5 < sum(p.numel() for p in m.parameters())


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    a = VAE(vae_kwargs(VAEConfig(max_len=50, codec="conv", channels=(4, 8), latent_dim=6, latent="flat")))
    b = VAE(vae_kwargs(VAEConfig(max_len=50, codec="conv", channels=(4, 8), latent_dim=6, latent="flat",
                                 gradient_checkpointing=True)))
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 50)
    for m in (a, b):
        m.train()
        m.loss_terms(x, sample_posterior=False)["loss"].backward()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=n)


def test_linear_codec_starts_as_whitened_pca():
    from weightvae.nets import LinearVAE

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 4, generator=g) @ torch.randn(4, 30, generator=g) + torch.randn(30, generator=g)  # rank 4
    net = LinearVAE(VAEConfig(max_len=30, codec="linear", latent_dim=3))
    net.init_pca(x)
    z = net.encode(x).mode().double()
    torch.testing.assert_close(z.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(3, dtype=torch.float64), atol=1e-4, rtol=0)  # whitened
    xc = (x - x.mean(0)).double()
    vh = torch.linalg.svd(xc, full_matrices=False)[2][:3]
    torch.testing.assert_close(net.decode(z.float()).double(), xc @ vh.T @ vh + x.mean(0).double(), atol=1e-4, rtol=0)
    assert net.encode(x).std.max() < 0.02  # a near-deterministic posterior to start from
    # more latent values than the data has directions: the extra ones are orthogonal to the data and unit length
    wide = LinearVAE(VAEConfig(max_len=30, codec="linear", latent_dim=6))
    wide.init_pca(x)
    dec = wide.from_latent.weight.double()  # [30, 6]: columns = directions x their std
    unit = dec / dec.norm(dim=0)
    torch.testing.assert_close(unit.T @ unit, torch.eye(6, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(xc @ unit[:, 4:], torch.zeros(300, 2, dtype=torch.float64), atol=1e-3, rtol=0)


def test_tensor_scales_lead_the_latent_and_undo_exactly():
    """With tensor_scales the latent starts with each tensor's own log-std and mean (hand-computed here), the rest
    is PCA of the tensors standardised by them, and the decoder scales each tensor back: a code with as many values
    as the data has directions decodes to the input itself; the padded tail is coded as it is."""
    from weightvae.nets import LinearVAE

    g = torch.Generator().manual_seed(0)
    sizes = (6, 3, 8)  # 17 weights + 3 of padding
    base = torch.randn(40, 20, generator=g)
    x = base * torch.linspace(0.1, 3.0, 40)[:, None] + torch.randn(40, 1, generator=g)  # each model its own scale
    x[:, 17:] = 0.0
    net = LinearVAE(VAEConfig(max_len=20, codec="linear", latent_dim=6 + 20, tensor_sizes=sizes, tensor_scales=True))
    net.init_pca(x)
    z = net.encode(x).mode()
    bounds = [(0, 6), (6, 9), (9, 17)]
    std = torch.stack([x[:, a:b].std(1, unbiased=False) for a, b in bounds], 1)
    mean = torch.stack([x[:, a:b].mean(1) for a, b in bounds], 1)
    torch.testing.assert_close(z[:, :3], (std + 1e-6).log(), atol=1e-5, rtol=0)
    torch.testing.assert_close(z[:, 3:6], mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(net.decode(z), x, atol=1e-4, rtol=0)  # 20 code values span all 20 directions
    # a scaled and shifted tensor moves only its own statistics: the direction code is the same
    y = x.clone()
    y[:, 6:9] = 5.0 * y[:, 6:9] + 2.0
    zy = net.encode(y).mode()
    torch.testing.assert_close(zy[:, 1], z[:, 1] + math.log(5.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(zy[:, 4], 5.0 * z[:, 4] + 2.0, atol=1e-4, rtol=0)
    torch.testing.assert_close(zy[:, 6:], z[:, 6:], atol=1e-4, rtol=0)
    assert net.encode(x).std.max() < 0.02
    with pytest.raises(AssertionError, match="latent_dim 6 must exceed"):
        LinearVAE(VAEConfig(max_len=20, codec="linear", latent_dim=6, tensor_sizes=sizes, tensor_scales=True))
