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


def test_behaviour_loss_is_zero_for_identical_outputs_and_positive_otherwise():
    ref = torch.randn(4, 16, 10)
    assert behaviour_kl(ref, ref.clone()).abs() < 1e-7
    assert behaviour_kl(ref, ref + 5.0).abs() < 1e-6  # a constant logit shift leaves the distribution alone
    assert behaviour_kl(ref, torch.randn(4, 16, 10)) > 0.1


def test_behaviour_term_of_the_vae_is_zero_when_reconstruction_equals_original():
    from weightvae.model import VAE, VAEConfig, vae_kwargs

    net = build_model("cnn")
    layout = Layout.from_state_dict(net.state_dict())
    functional = {layout.layout_id: {"arch": "cnn", "kwargs": {}, "task": "digits", "layout": layout.to_dict()}}
    vae = VAE(vae_kwargs(VAEConfig(max_len=layout.length, channels=(4,), latent="spatial")),
              {"behaviour_weight": 1.0, "probe_count": 16}, layout_ids=[layout.layout_id], functional=functional)
    x = torch.stack([layout.flatten(build_model("cnn").state_dict()) for _ in range(3)])
    ref, valid = vae.function_logits(x, [layout.layout_id] * 3)
    same, _ = vae.function_logits(x.clone(), [layout.layout_id] * 3)
    assert valid.all() and behaviour_kl(ref, same) == 0
    terms = vae.loss_terms(x)
    assert terms["behaviour"] > 0  # an untrained decoder does not reproduce the function
