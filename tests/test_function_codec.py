"""The function codec (`train.codec: function`): an autoencoder trained through the networks' function.

It starts as whitened PCA (its MLPs add nothing at first); its codes never depend on their batch; training moves
the decoder and the encoder so that the encoder's code alone decodes to a network that computes what the original
computes (the amortised refinement), and a decoder frozen at its start (a planted fault) does not."""

import json

import pytest
import torch

from weightvae.data import ZooDataModule, ZooDataset
from weightvae.encode import EncodeParams, encode
from weightvae.ingest import IngestParams, ingest
from weightvae.latents import read_latents
from weightvae.model import VAE
from weightvae.nets import FunctionAutoencoder, VAEConfig
from weightvae.params import ParamsError
from weightvae.pca import whitened_pca
from weightvae.train import TrainParams


def test_it_starts_as_whitened_pca_and_its_codes_do_not_depend_on_their_batch():
    torch.manual_seed(0)
    x = torch.randn(30, 40)
    net = FunctionAutoencoder(VAEConfig(max_len=40, codec="function", latent_dim=5, hidden=16, cond_dim=7))
    net.init_pca(x)
    cond = torch.rand(30, 7)
    z = net.encode(x, cond).mode()
    centre, basis, scale = whitened_pca(x, 5)
    assert torch.allclose(z.double(), (x.double() - centre) @ basis.T / scale, atol=1e-4)  # the MLPs start at 0
    assert torch.allclose(net.decode(z).double(), (z.double() * scale) @ basis + centre, atol=1e-4)
    with torch.no_grad():  # move the MLPs off 0, then: one network at a time = all at once (float tolerance)
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    z = net.encode(x, cond).mode()
    one = torch.cat([net.encode(x[i:i + 1], cond[i:i + 1]).mode() for i in range(len(x))])
    assert torch.allclose(z, one, atol=1e-5)
    assert torch.allclose(net.decode(z), torch.cat([net.decode(z[i:i + 1]) for i in range(len(z))]), atol=1e-5)


@pytest.fixture(scope="module")
def shards(tiny_zoo, tmp_path_factory):
    """The session's tiny zoo ingested: 4 training networks (2 CNNs, 2 MLPs), more than one latent value spans."""
    out = tmp_path_factory.mktemp("function_codec") / "shards"
    ingest(IngestParams(zoo_dir=str(tiny_zoo[0]), workers=1), out, log=lambda *_: None)
    return out


@pytest.fixture(autouse=True)
def _outside_the_repo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # DVCLive looks for a DVC repo in the working directory


def _fit(shards, steps: int, freeze_decoder: bool = False) -> tuple[VAE, dict]:
    """The function codec with a 1-value code, started as the train stage starts it, then `steps` Adam steps of
    its training loss on the whole train split (4 networks: a CNN pair and an MLP pair); `freeze_decoder` is the
    planted fault (the decoder stays at its PCA start, only the encoder learns). Returns it and the batch."""
    from weightvae.train import functional_info, initial_module

    torch.manual_seed(0)
    p = TrainParams(codec="function", latent_dim=1, hidden=64, probe_count=32, behaviour_batch=64)
    ds = ZooDataset(shards, "train", normalize=True)
    layouts = json.loads((shards / "layouts.json").read_text())
    n_layers = max(sum(e["learned"] for e in lay["entries"]) for lay in layouts.values())
    model = initial_module(p, ds, sorted(layouts), n_layers, functional_info(shards, layouts, log=lambda *_: None))
    frozen = {id(q) for q in [*model.net.decoder.parameters(), *model.net.from_latent.parameters()]}
    opt = torch.optim.Adam([q for q in model.parameters() if not (freeze_decoder and id(q) in frozen)], lr=3e-3)
    batch = next(iter(ZooDataModule.loader(ds, batch_size=len(ds))))
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model.loss_terms(batch)["loss"].backward()
        opt.step()
    return model.eval(), batch


def _kl(model: VAE, batch: dict, z: torch.Tensor) -> torch.Tensor:
    """Each network's behavioural KL on every training input of its task, decoded from `z`."""
    from weightvae.refine import refine

    x = batch["weight"]
    lids = model.batch_layout_ids(batch, len(x))
    return refine(model, z, x, lids, model.batch_function_keys(batch, lids), 0, 0.1, None, 16)[1]


@pytest.mark.slow
def test_training_through_the_function_makes_the_encoder_land_where_refinement_lands(shards):
    """On its training networks the trained encoder's code decodes to (nearly) their function: 200 steps of
    refinement from it gain little (KL within 0.02), and its KL is a fifth of the untrained start's or less. One value
    cannot span 4 networks in the PCA subspace, so with the decoder frozen at its PCA start (the planted fault:
    what the controls refine in) the encoder alone cannot get there: the learned decoder makes the short code work."""
    from weightvae.refine import refine

    start, batch = _fit(shards, 0)
    model, _ = _fit(shards, 300)
    frozen, _ = _fit(shards, 300, freeze_decoder=True)
    with torch.no_grad():
        codes = {name: m.encode(batch).mode() for name, m in (("start", start), ("trained", model),
                                                              ("frozen", frozen))}
    kl = {name: _kl(m, batch, codes[name]) for name, m in (("start", start), ("trained", model), ("frozen", frozen))}
    x = batch["weight"]
    lids = model.batch_layout_ids(batch, len(x))
    refined, _, after = refine(model, codes["trained"], x, lids, model.batch_function_keys(batch, lids), 200, 0.05,
                               None, 16)
    # measured: start 0.024, trained 0.0008, frozen 0.025 (mean KL over the 4 networks)
    assert float(kl["trained"].mean()) < float(kl["start"].mean()) / 5
    assert float(kl["trained"].mean() - after.mean()) < 0.02  # refinement has little left to do
    assert float(kl["frozen"].mean()) > 5 * float(kl["trained"].mean())


def test_encode_stores_the_encoders_code_beside_the_refined_one(shards, tmp_path):
    model, _ = _fit(shards, 0)
    torch.save(model.export(), tmp_path / "vae.ckpt")
    encode(EncodeParams(refine_steps=3, probe_count=16), shards, tmp_path / "vae.ckpt", tmp_path / "latents.parquet")
    for split in ("train", "val", "test"):
        rows, z = read_latents(tmp_path / "latents.parquet", split)
        rows_e, z_enc = read_latents(tmp_path / "latents.parquet", split, column="latent_encoder")
        assert rows == rows_e and z.shape == z_enc.shape == (len(rows), 1) and not torch.equal(z, z_enc)
        ds = ZooDataset(shards, split, normalize=True, max_len=model.cfg.max_len)
        batch = next(iter(ZooDataModule.loader(ds, batch_size=len(ds))))
        order = {p["id"]: i for i, p in enumerate(batch["model_properties"])}  # the table goes a layout at a time
        with torch.no_grad():
            expected = model.encode(batch).mode()[[order[r["id"]] for r in rows]]
        assert torch.allclose(z_enc, expected, atol=1e-5)


def test_function_codec_params_are_checked():
    with pytest.raises(ParamsError, match="train.behaviour_weight: 0.0 is not allowed; the function codec is trained "
                                          "through the networks' function: need > 0"):
        TrainParams(codec="function", behaviour_weight=0.0)
    with pytest.raises(ParamsError, match="train.hidden: 0 is not allowed; need >= 1"):
        TrainParams(hidden=0)
    with pytest.raises(ParamsError, match="train.lr_schedule: 'linear' is not allowed; choose constant or cosine"):
        TrainParams(lr_schedule="linear")
