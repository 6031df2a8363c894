"""The generic batched forward (`weightvae.functional`): the module's own outputs for every network, autograd's
gradients through a loop of single networks, each network's own BatchNorm statistics, and what happens with a
module vmap cannot run."""

import pytest
import torch
from torch import nn

from weightvae.archs import build_model
from weightvae.behaviour import flat_logits
from weightvae.functional import BatchedForward, ForwardError
from weightvae.layout import Layout
from weightvae.tasks import get_task


def _flat(nets):
    layout = Layout.from_state_dict(nets[0].state_dict())
    return layout, torch.stack([layout.flatten(n.state_dict()) for n in nets])


def _bn_net(scale, shift, mean, var, batches):
    """Linear(2, 2) = identity, then BatchNorm1d(2, eps=0) with the given affine and running statistics."""
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2, eps=0.0))
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(2))
        net[0].bias.zero_()
        net[1].weight.copy_(torch.tensor(scale))
        net[1].bias.copy_(torch.tensor(shift))
        net[1].running_mean.copy_(torch.tensor(mean))
        net[1].running_var.copy_(torch.tensor(var))
        net[1].num_batches_tracked.fill_(batches)
    return net


@pytest.mark.parametrize("arch", ["cnn", "mlp"])
def test_generic_forward_is_each_modules_own_forward(arch):
    nets = [build_model(arch) for _ in range(5)]
    layout, flat = _flat(nets)
    x = get_task("digits").x_train[:17]
    out = BatchedForward(build_model(arch), layout)(flat, x)
    assert out.shape == (5, 17, 10)
    for net, o in zip(nets, out, strict=True):
        torch.testing.assert_close(o, net.eval()(x), rtol=0, atol=1e-5)


def test_many_inputs_run_in_chunks_with_the_same_outputs_and_gradients(monkeypatch):
    nets = [build_model("cnn") for _ in range(3)]
    layout, flat = _flat(nets)
    x = get_task("digits").x_train[:10]
    weights = torch.randn(len(nets), len(x), 10)
    flat = flat.clone().requires_grad_(True)
    whole = BatchedForward(build_model("cnn"), layout)(flat, x)
    calls = []
    forward = BatchedForward(build_model("cnn"), layout)
    run = forward._run
    monkeypatch.setattr(forward, "_run", lambda *a: calls.append(len(a[-1])) or run(*a))
    monkeypatch.setattr("weightvae.functional.PAIRS_PER_CALL", 12)  # 3 networks: 4 inputs a call
    out = forward(flat, x)
    assert calls == [4, 4, 2]
    torch.testing.assert_close(out, whole, rtol=0, atol=1e-6)
    (grad,) = torch.autograd.grad((out * weights).sum(), [flat])
    torch.testing.assert_close(grad, _grads_through_a_loop(nets, layout, x, weights), rtol=1e-5, atol=1e-5)


def test_batchnorm_runs_in_eval_mode_on_each_networks_own_running_statistics():
    """By hand, with eps = 0: (x - mean) / sqrt(var) * scale + shift; x = (3, 5)."""
    a = _bn_net([1.0, 1.0], [0.0, 0.0], [1.0, 2.0], [4.0, 9.0], batches=7)  # ((3-1)/2, (5-2)/3) = (1, 1)
    b = _bn_net([2.0, 3.0], [1.0, -1.0], [0.0, 0.0], [1.0, 1.0], batches=0)  # (3*2+1, 5*3-1) = (7, 14)
    layout, flat = _flat([a, b])
    assert [e.name for e in layout.entries if not e.learned] == ["1.num_batches_tracked"]
    x = torch.tensor([[3.0, 5.0]])
    forward = BatchedForward(_bn_net([1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [1.0, 1.0], 0).train(), layout)
    buffers = [layout.buffers(a.state_dict()), layout.buffers(b.state_dict())]
    out = forward(flat, x, buffers)
    assert out.tolist() == [[[1.0, 1.0]], [[7.0, 14.0]]]
    assert forward(flat, x).tolist() == out.tolist()  # num_batches_tracked does not matter in eval mode


def test_a_decoded_negative_running_variance_is_clamped_at_zero_not_nan():
    """A decoded network's `running_var` may come out negative; BatchNorm would give NaN. By hand with eps = 1e-5:
    var -3 -> 0, so (3 - 1) / sqrt(1e-5) for the first unit; the second (var 4) is untouched."""
    net = _bn_net([1.0, 1.0], [0.0, 0.0], [1.0, 2.0], [4.0, 4.0], batches=1)
    net[1].eps = 1e-5
    layout, flat = _flat([net])
    var = next(e for e in layout.learned if e.name == "1.running_var")
    flat[0, var.offset] = -3.0
    out = BatchedForward(net, layout)(flat, torch.tensor([[3.0, 5.0]]))
    torch.testing.assert_close(out[0, 0], torch.tensor([2.0 / 1e-5 ** 0.5, 3.0 / (4.0 + 1e-5) ** 0.5]))
    sd = layout.unflatten(flat[0], layout.buffers(net.state_dict()))
    assert sd["1.running_var"].tolist() == [0.0, 4.0]
    assert sd["1.running_mean"].tolist() == [1.0, 2.0] and sd["0.bias"].tolist() == [0.0, 0.0]


def _grads_through_a_loop(arch_nets, layout, x, weights):
    """d(sum(outputs * weights)) / d(flat weights) of each network, by autograd on its own module."""
    grads = []
    for net, w in zip(arch_nets, weights, strict=True):
        net.eval()
        params = dict(net.named_parameters())
        (net(x) * w).sum().backward()
        grads.append(torch.cat([params[e.name].grad.reshape(-1) for e in layout.learned]))
    return torch.stack(grads)


def _bn_by_hand(flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`_bn_net`'s function of its flat vector (layout order: linear weight, bias; BatchNorm weight, bias, running
    mean, running var), eps = 0, differentiable in all of it."""
    w, b, scale, shift, mean, var = flat[:4].view(2, 2), flat[4:6], flat[6:8], flat[8:10], flat[10:12], flat[12:14]
    return (x @ w.T + b - mean) / var.sqrt() * scale + shift


def test_batchnorms_running_statistics_get_their_gradient():
    """PyTorch's batch norm gives none; a decoded network's statistics are trained and refined through it."""
    nets = [_bn_net([1.0, 0.5], [0.1, 0.2], [0.3, -0.4], [2.0, 0.5], 3), _bn_net([2.0, 1.0], [0.0, 1.0], [1.0, 0.0],
                                                                             [1.0, 3.0], 0)]
    layout, flat = _flat(nets)
    assert [e.name for e in layout.learned][2:] == ["1.weight", "1.bias", "1.running_mean", "1.running_var"]
    x, weights = torch.randn(5, 2), torch.randn(2, 5, 2)
    flat = flat.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((BatchedForward(nets[0], layout)(flat, x) * weights).sum(), [flat])
    ref = torch.stack([torch.autograd.grad((_bn_by_hand(f, x) * w).sum(), [f])[0]
                       for f, w in zip(flat.detach().clone().requires_grad_(True), weights, strict=True)])
    torch.testing.assert_close(grad, ref, rtol=1e-5, atol=1e-6)
    assert grad[:, 10:].abs().min() > 0  # the running mean and variance of every network
    assert nets[0].forward.__func__ is torch.nn.Sequential.forward and type(nets[0][1]).forward is nn.BatchNorm1d.forward


@pytest.mark.parametrize("arch", ["cnn", "mlp"])
def test_gradient_equals_autograd_through_a_loop_of_single_networks(arch):
    nets = [build_model(arch) for _ in range(3)]
    x = get_task("digits").x_train[:9]
    layout, flat = _flat(nets)
    weights = torch.randn(len(nets), len(x), 10)
    flat = flat.clone().requires_grad_(True)
    lines = []
    forward = BatchedForward(build_model(arch), layout, log=lines.append)
    (grad,) = torch.autograd.grad((forward(flat, x) * weights).sum(), [flat])
    assert not lines  # vmapped, no fallback
    torch.testing.assert_close(grad, _grads_through_a_loop(nets, layout, x, weights), rtol=1e-5, atol=1e-5)
    assert grad.abs().sum() > 0


def test_flat_logits_runs_a_registered_module_on_tabular_inputs():
    """Any module, any input shape: a 13-feature, 3-class net runs through `flat_logits` by its registered name."""
    from weightvae.archs import ARCHITECTURES, Architecture

    ARCHITECTURES["wvae_tab"] = Architecture(lambda hidden=4: nn.Sequential(nn.Linear(13, hidden), nn.GELU(),
                                                                            nn.Linear(hidden, 3)))
    try:
        nets = [ARCHITECTURES["wvae_tab"].build(hidden=4) for _ in range(4)]
        layout, flat = _flat(nets)
        x = torch.randn(11, 13)
        out = flat_logits("wvae_tab", layout, flat, x, {"hidden": 4})
        torch.testing.assert_close(out, torch.stack([n(x) for n in nets]), rtol=0, atol=1e-6)
    finally:
        del ARCHITECTURES["wvae_tab"]


class WeightBranch(nn.Module):
    """Data-dependent control flow on its own weights: vmap cannot run it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        h = self.fc(x)
        return h * 2 if self.fc.weight.sum() > 0 else -h


def test_a_module_vmap_cannot_run_falls_back_to_a_loop_with_one_line():
    nets = [WeightBranch() for _ in range(4)]
    with torch.no_grad():
        nets[0].fc.weight.fill_(1.0)
        nets[1].fc.weight.fill_(-1.0)
    layout, flat = _flat(nets)
    lines = []
    forward = BatchedForward(WeightBranch(), layout, name="architecture 'branchy'", log=lines.append)
    x = torch.randn(5, 3)
    flat = flat.clone().requires_grad_(True)
    out = forward(flat, x)
    assert len(lines) == 1 and lines[0].startswith("weightvae: architecture 'branchy' cannot be vmapped (")
    assert lines[0].endswith("); running its networks one at a time (same outputs and gradients, slower)")
    torch.testing.assert_close(out, torch.stack([n(x) for n in nets]), rtol=0, atol=0)
    assert torch.autograd.grad(out.sum(), [flat])[0].abs().sum() > 0  # still differentiable
    forward(flat, x)
    assert len(lines) == 1  # said once


class Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        raise RuntimeError("this module needs a second input\nand says so at length")


def test_a_module_that_cannot_run_stops_with_one_line_naming_it():
    layout, flat = _flat([Broken(), Broken()])
    with pytest.raises(ForwardError) as e:
        BatchedForward(Broken(), layout, name="architecture 'broken'", log=lambda _: None)(flat, torch.randn(2, 3))
    assert str(e.value) == ("architecture 'broken' cannot be run on flat weights: RuntimeError: this module needs a "
                            "second input")


def test_a_layout_of_another_module_is_named():
    layout, _ = _flat([build_model("mlp")])
    with pytest.raises(ForwardError, match=r"architecture 'cnn': the layout's 'fc1.weight' is not|"
                                           r"architecture 'cnn': 'fc1.weight' has shape \[32, 64\] in the layout"):
        BatchedForward(build_model("cnn"), layout, name="architecture 'cnn'")


class IntOffset(nn.Module):
    """An integer buffer the forward uses: identity Linear(2, 2), plus `offset`."""

    def __init__(self, offset=0):
        super().__init__()
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(2))
            self.fc.bias.zero_()
        self.register_buffer("offset", torch.tensor(offset))

    def forward(self, x):
        return self.fc(x) + self.offset


def test_integer_buffers_come_from_each_networks_stored_buffers():
    nets = [IntOffset(3), IntOffset(5)]
    layout, flat = _flat(nets)
    forward = BatchedForward(IntOffset(0), layout)
    x = torch.tensor([[1.0, 2.0]])
    stored = [layout.buffers(n.state_dict()) for n in nets]
    assert forward(flat, x, stored).tolist() == [[[4.0, 5.0]], [[6.0, 7.0]]]  # each its own
    assert forward(flat, x, stored[1]).tolist() == [[[6.0, 7.0]], [[6.0, 7.0]]]  # one mapping: shared
    assert forward(flat, x).tolist() == [[[1.0, 2.0]], [[1.0, 2.0]]]  # none: the module's own (0)
