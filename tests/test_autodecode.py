"""Auto-decoding (`weightvae.autodecode`): the function codec's decoder fitted together with a free code per
training network, after Lightning. The codes' row-wise Adam is Adam on the rows it steps and leaves the others;
the phase lowers the training networks' behavioural loss, leaves the encoder as trained, makes refinement from the
encoder's code land better, and is seeded (same decoder bytes twice)."""

import copy
import json

import pytest
import torch

from weightvae.autodecode import RowAdam, autodecode
from weightvae.data import ZooDataModule, ZooDataset
from weightvae.ingest import IngestParams, ingest
from weightvae.params import ParamsError
from weightvae.refine import refine
from weightvae.train import TrainParams, functional_info, initial_module

P = TrainParams(codec="function", latent_dim=1, hidden=64, probe_count=32, behaviour_batch=64, batch_size=2,
                autodecode_epochs=40)


def test_row_adam_is_adam_on_the_rows_it_steps_and_leaves_the_others():
    torch.manual_seed(0)
    table = torch.randn(4, 3)
    start = table.clone()
    opt = RowAdam(table)
    ref = start[[0, 2]].clone().requires_grad_(True)
    torch_opt = torch.optim.Adam([ref], lr=0.05)
    for _ in range(3):
        grad = torch.randn(2, 3)
        opt.step(torch.tensor([0, 2]), grad, 0.05)
        ref.grad = grad
        torch_opt.step()
    assert torch.allclose(table[[0, 2]], ref.detach(), atol=1e-6)
    assert torch.equal(table[[1, 3]], start[[1, 3]])  # no step of theirs: not moved (plain Adam's momentum would)
    grad = torch.randn(1, 3)
    opt.step(torch.tensor([1]), grad, 0.05)  # a row's first step is Adam's first step, whatever the others took
    assert torch.allclose(table[1], start[1] - 0.05 * torch.sign(grad[0]), atol=1e-5)


@pytest.fixture(scope="module")
def start(tiny_zoo, tmp_path_factory):
    """The function codec as the train stage starts it (whitened PCA, a 1-value code) on the session's tiny zoo,
    and its training split as one batch: 4 networks, a CNN pair and an MLP pair (two groups that run apart)."""
    shards = tmp_path_factory.mktemp("autodecode") / "shards"
    ingest(IngestParams(zoo_dir=str(tiny_zoo[0]), workers=1), shards, log=lambda *_: None)
    torch.manual_seed(0)
    ds = ZooDataset(shards, "train", normalize=True)
    layouts = json.loads((shards / "layouts.json").read_text())
    n_layers = max(sum(e["learned"] for e in lay["entries"]) for lay in layouts.values())
    model = initial_module(P, ds, sorted(layouts), n_layers, functional_info(shards, layouts, log=lambda *_: None))
    return model.eval(), next(iter(ZooDataModule.loader(ds, batch_size=len(ds))))


def _refined_kl(model, batch, steps: int) -> torch.Tensor:
    """Each network's behavioural KL on all its task's training inputs after `steps` of refinement from its
    encoder's code."""
    x = batch["weight"]
    lids = model.batch_layout_ids(batch, len(x))
    with torch.no_grad():
        z0 = model.encode(batch).mode()
    return refine(model, z0, x, lids, model.batch_function_keys(batch, lids), steps, 0.1, None, 16)[2]


def test_autodecode_fits_the_decoder_to_the_training_networks_and_leaves_the_encoder(start):
    before, batch = start
    model, again = copy.deepcopy(before), copy.deepcopy(before)
    lines = []
    out, codes = autodecode(model, batch, P, log=lines.append)
    assert out["networks"] == 4 and len(lines) == 1 and "40 epochs" in lines[0]
    # one fitted code per training network, by id, where the decoder now gives its function back
    ids = [pr["id"] for pr in batch["model_properties"]]
    assert sorted(codes) == sorted(ids) and all(c.shape == (1,) for c in codes.values())
    x = batch["weight"]
    lids = model.batch_layout_ids(batch, len(x))
    keys = model.batch_function_keys(batch, lids)
    with torch.no_grad():
        z_enc = model.encode(batch).mode()
    fitted = torch.stack([codes[i] for i in ids])
    kl_fitted = refine(model, fitted, x, lids, keys, 0, 0.1, None, 16)[1]
    kl_encoder = refine(model, z_enc, x, lids, keys, 0, 0.1, None, 16)[1]
    assert float(kl_fitted.mean()) < float(kl_encoder.mean()) / 3  # measured: 0.0009 against 0.0192
    # measured: 0.0229 (the encoder's codes, the decoder as trained) -> 0.0011 (the fitted codes and decoder)
    assert out["behaviour_kl"] < out["behaviour_kl_encoder_codes"] / 10
    state, trained = before.state_dict(), model.state_dict()
    changed = {k for k in state if not torch.equal(state[k], trained[k])}
    assert changed and all(k.startswith(("net.decoder.", "net.from_latent.")) for k in changed)  # not the encoder
    # the point of it: refinement from the encoder's code now lands on the training networks' functions
    # (measured mean KL after 50 steps: 0.0192 before, 0.0010 after)
    assert float(_refined_kl(model, batch, 50).mean()) < float(_refined_kl(before, batch, 50).mean()) / 3
    _, codes_again = autodecode(again, batch, P, log=lambda *_: None)  # seeded: the same decoder, to the byte
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in trained.items())
    assert all(torch.equal(codes[i], codes_again[i]) for i in ids)


def test_autodecode_off_changes_nothing(start):
    before, batch = start
    model = copy.deepcopy(before)
    assert autodecode(model, batch, TrainParams(**{**P.__dict__, "autodecode_epochs": 0})) == ({}, {})
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.state_dict().items())


def test_autodecode_params_are_checked():
    with pytest.raises(ParamsError, match=r"train.autodecode_epochs: -1 is not allowed; need >= 0 \(0: off\)"):
        TrainParams(autodecode_epochs=-1)
    with pytest.raises(ParamsError, match="train.autodecode_code_lr: 0.0 is not allowed; need > 0"):
        TrainParams(autodecode_code_lr=0.0)
