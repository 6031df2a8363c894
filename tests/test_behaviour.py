import pytest
import torch

from weightvae.archs import build_model
from weightvae.behaviour import behaviour_kl, flat_logits, probe_inputs
from weightvae.layout import Layout
from weightvae.tasks import get_task


def test_flat_logits_match_the_module_and_probes_come_from_the_training_set():
    probes = probe_inputs("digits", 32)
    task = get_task("digits")
    train_rows = {tuple(r.flatten().tolist()) for r in task.x_train}
    assert all(tuple(p.flatten().tolist()) in train_rows for p in probes)
    for arch in ("cnn", "mlp"):
        nets = [build_model(arch) for _ in range(3)]
        layout = Layout.from_state_dict(nets[0].state_dict())
        flat = torch.stack([layout.flatten(n.state_dict()) for n in nets])
        logits = flat_logits(arch, layout, flat, probes)
        with torch.no_grad():
            for i, n in enumerate(nets):
                torch.testing.assert_close(logits[i], n.eval()(probes), rtol=1e-5, atol=1e-5)


def test_behaviour_loss_is_kl_of_original_to_reconstruction():
    ref = torch.randn(4, 16, 10)
    assert behaviour_kl(ref, ref.clone()).abs() < 1e-7
    assert behaviour_kl(ref, ref + 5.0).abs() < 1e-6  # a constant logit shift leaves the distribution alone
    # the direction: KL(original || reconstruction), checked by hand on one pair of distributions
    p, q = torch.tensor([0.9, 0.05, 0.05]), torch.tensor([0.2, 0.4, 0.4])
    forward = float((p * (p / q).log()).sum())  # KL(p || q) = 1.1458..., KL(q || p) = 1.3627...
    got = behaviour_kl(p.log()[None, None], q.log()[None, None])
    assert got.item() == pytest.approx(forward, rel=1e-6) and abs(forward - float((q * (q / p).log()).sum())) > 0.1
    # the mean over networks and probes
    other = torch.randn(4, 16, 10)
    per = (ref.softmax(-1) * (ref.log_softmax(-1) - other.log_softmax(-1))).sum(-1)  # [4, 16]
    assert behaviour_kl(ref, other).item() == pytest.approx(per.mean().item(), rel=1e-6)


def test_behaviour_term_of_the_vae_is_zero_when_reconstruction_equals_original(monkeypatch):
    """The VAE's behavioural term is KL(original's predictions || reconstruction's) on the probes: 0 when the decoder
    gives the input back, and, when it gives network 0 network 1's weights, that KL computed by hand from the two
    `nn.Module`s, averaged over the 3 networks (the other two: 0)."""
    from weightvae.model import VAE
    from weightvae.nets import VAEConfig, vae_kwargs

    net = build_model("cnn")
    layout = Layout.from_state_dict(net.state_dict())
    functional = {layout.layout_id: {"arch": "cnn", "kwargs": {}, "task": "digits", "layout": layout.to_dict()}}
    vae = VAE(vae_kwargs(VAEConfig(max_len=layout.length, codec="conv", channels=(4,))),
              {"behaviour_weight": 1.0, "probe_count": 16, "behaviour_batch": 0},
                  layout_ids=[layout.layout_id], functional=functional)
    nets = [build_model("cnn").eval() for _ in range(3)]
    x = torch.stack([layout.flatten(n.state_dict()) for n in nets])
    ref, valid = vae.function_logits(x, [layout.layout_id] * 3)
    probes = probe_inputs("digits", 16)
    with torch.no_grad():  # the logits are those of the networks the vectors hold (no normalisation here)
        torch.testing.assert_close(ref, torch.stack([n(probes) for n in nets]), rtol=1e-5, atol=1e-5)
    assert valid.all()
    monkeypatch.setattr(vae.net, "decode", lambda z, **layout: x.clone())  # a perfect reconstruction
    assert vae.loss_terms(x, sample_posterior=False)["behaviour"].item() == 0.0
    swapped = x.clone()
    swapped[0] = x[1]
    monkeypatch.setattr(vae.net, "decode", lambda z, **layout: swapped)
    with torch.no_grad():
        p, q = nets[0](probes).softmax(-1), nets[1](probes).softmax(-1)  # [16, 10] each
    by_hand = float((p * (p.log() - q.log())).sum(-1).mean()) / 3
    assert by_hand > 1e-4  # two different networks: a KL well away from 0
    assert vae.loss_terms(x, sample_posterior=False)["behaviour"].item() == pytest.approx(by_hand, rel=1e-4)
