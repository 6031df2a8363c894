"""Latent refinement and the encode stage: codes move toward the original's function, stay put where
a network cannot be run, and never depend on the batch they are refined in."""

import json
import math
from dataclasses import replace

import pyarrow.parquet as pq
import pytest
import torch

from weightvae.archs import build_model
from weightvae.behaviour import probe_inputs
from weightvae.data import ZooDataModule, ZooDataset
from weightvae.encode import EncodeParams, encode
from weightvae.ingest import IngestParams, ingest
from weightvae.latents import read_latents
from weightvae.layout import Layout
from weightvae.model import VAE, function_key
from weightvae.nets import VAEConfig, vae_kwargs
from weightvae.params import ParamsError, build
from weightvae.refine import probe_schedule, refine
from weightvae.tasks import get_task


def test_the_probe_schedule_visits_every_probe_before_repeating():
    s = probe_schedule(10, 7, 4, seed=3)
    assert s.shape == (7, 4)
    flat = s.flatten()
    for start in range(0, 20, 10):  # each run of 10 consecutive indices is a permutation
        assert sorted(flat[start:start + 10].tolist()) == list(range(10))
    assert torch.equal(s, probe_schedule(10, 7, 4, seed=3)) and not torch.equal(s, probe_schedule(10, 7, 4, seed=4))
    assert probe_schedule(3, 2, 8).shape == (2, 3)  # a batch larger than the probes: all of them each step


def _vae(nets: list[torch.nn.Module], latent_dim: int) -> tuple[VAE, Layout, torch.Tensor]:
    """A linear-codec VAE started as PCA of `nets` (no normalisation), and their flat weights."""
    layout = Layout.from_state_dict(nets[0].state_dict())
    x = torch.stack([layout.flatten(n.state_dict()) for n in nets])
    functional = {function_key("digits", layout.layout_id): {"arch": "cnn", "kwargs": {}, "task": "digits",
                                                             "layout": layout.to_dict()}}
    vae = VAE(vae_kwargs(VAEConfig(max_len=layout.length, codec="linear", latent_dim=latent_dim)), {"probe_count": 64},
              layout_ids=[layout.layout_id], normalize=False, functional=functional)
    vae.net.init_pca(x)
    return vae, layout, x


def _agreement(vae: VAE, z: torch.Tensor, x: torch.Tensor, layout: Layout) -> torch.Tensor:
    task = get_task("digits")
    with torch.no_grad():
        a = vae.network_logits(x, [layout.layout_id] * len(x), next(iter(vae.functional)), task.x_test).argmax(-1)
        b = vae.network_logits(vae.decode(z), [layout.layout_id] * len(x), next(iter(vae.functional)),
                               task.x_test).argmax(-1)
    return (a == b).double().mean(1)


def test_refinement_moves_codes_toward_the_originals_function():
    torch.manual_seed(0)
    nets = [build_model("cnn") for _ in range(40)]
    vae, layout, x = _vae(nets, latent_dim=20)
    held_out = torch.stack([layout.flatten(build_model("cnn").state_dict()) for _ in range(4)])  # other networks
    lids = [layout.layout_id] * 4
    keys = [next(iter(vae.functional))] * 4
    with torch.no_grad():
        z0 = vae.encode(held_out).mode()
    z, before, after = refine(vae, z0, held_out, lids, keys, steps=150, lr=0.1, probe_count=256, probe_batch=32)
    assert z.shape == z0.shape and (after < 0.5 * before).all()
    assert _agreement(vae, z, held_out, layout).mean() > _agreement(vae, z0, held_out, layout).mean() + 0.1
    # nothing to do: no steps leave the code as it was, and the KL is the same before and after
    same, b0, a0 = refine(vae, z0, held_out, lids, keys, steps=0, lr=0.1, probe_count=256, probe_batch=32)
    assert torch.equal(same, z0) and torch.equal(b0, a0) and torch.equal(b0, before)


def test_a_code_does_not_depend_on_its_batch_and_unknown_networks_keep_the_encoders_mean():
    torch.manual_seed(1)
    nets = [build_model("cnn") for _ in range(30)]
    vae, layout, x = _vae(nets, latent_dim=12)
    key = next(iter(vae.functional))
    with torch.no_grad():
        z0 = vae.encode(x[:6]).mode()
    lids = [layout.layout_id] * 6
    keys = [key, "unknown/0000", key, key, "unknown/0000", key]  # two rows weightvae cannot run
    together, before, after = refine(vae, z0, x[:6], lids, keys, steps=20, lr=0.1, probe_count=64, probe_batch=8)
    for i in (0, 3, 5):
        alone, _, _ = refine(vae, z0[i:i + 1], x[i:i + 1], lids[:1], [key], 20, 0.1, 64, 8)
        torch.testing.assert_close(alone[0], together[i], rtol=1e-5, atol=1e-6)
    for i in (1, 4):
        assert torch.equal(together[i], z0[i]) and math.isnan(before[i]) and math.isnan(after[i])


def test_a_network_that_refinement_would_leave_worse_keeps_its_start():
    torch.manual_seed(3)
    vae, layout, x = _vae([build_model("cnn") for _ in range(30)], latent_dim=12)
    key = next(iter(vae.functional))
    with torch.no_grad():
        z0 = vae.encode(x[:8]).mode()
    lids = [layout.layout_id] * 8
    # a step size far too large: 3 steps at lr 3 overshoot for 6 of the 8 networks
    z, before, after = refine(vae, z0, x[:8], lids, [key] * 8, steps=3, lr=3.0, probe_count=32, probe_batch=8)
    kept = [i for i in range(8) if torch.equal(z[i], z0[i])]
    assert kept == [0, 1, 2, 3, 5, 6] and (after <= before).all() and torch.equal(after[kept], before[kept])
    again, b, a = refine(vae, z0, x[:8], lids, [key] * 8, steps=3, lr=3.0, probe_count=32, probe_batch=8)
    assert torch.equal(again, z)  # deterministic
    assert a[4] < b[4] and a[7] < b[7]


def test_a_decoder_that_gives_non_finite_outputs_stops_refinement_not_mistaken_for_an_unknown_network():
    torch.manual_seed(2)
    vae, layout, x = _vae([build_model("cnn") for _ in range(12)], latent_dim=4)
    with torch.no_grad():
        vae.net.from_latent.bias[3] = math.inf  # every decoded network: inf - inf = NaN outputs
        z0 = vae.encode(x[:2]).mode()
    key = next(iter(vae.functional))
    with pytest.raises(FloatingPointError, match=f"refine: 2 of 2 networks of {key} give non-finite outputs, from "
                                                 "the encoder's code and after refinement"):
        refine(vae, z0, x[:2], [layout.layout_id] * 2, [key] * 2, steps=2, lr=0.1, probe_count=8, probe_batch=4)


@pytest.fixture(scope="module")
def trained(tiny_zoo, tmp_path_factory):
    """The tiny zoo's shards and a linear VAE for them (one epoch; the export is what encode reads)."""
    import os

    from weightvae.train import TrainParams, train

    base = tmp_path_factory.mktemp("encode")
    ingest(IngestParams(zoo_dir=str(tiny_zoo[0]), workers=1), base / "shards", log=lambda *_: None)
    cwd = os.getcwd()
    os.chdir(base)  # DVCLive must not find this repository's dvc.yaml
    try:
        train(TrainParams(codec="linear", latent_dim=6, learning_rate=1e-4, lr_schedule="constant", behaviour_weight=1.0,
              behaviour_batch=0, max_epochs=1, batch_size=4, accelerator="cpu", probe_count=8), base / "shards",
              base / "vae.ckpt", base / "ckpt", base / "live")
    finally:
        os.chdir(cwd)
    return base


def test_encode_writes_every_models_code_once_with_its_kl(trained, tmp_path):
    p = EncodeParams(refine_steps=5, probe_count=32, probe_batch=8)
    m = encode(p, trained / "shards", trained / "vae.ckpt", tmp_path / "latents.parquet")
    table = pq.read_table(tmp_path / "latents.parquet").to_pylist()
    shards = pq.read_table(trained / "shards" / "models.parquet").to_pylist()
    assert sorted(r["id"] for r in table) == sorted(r["id"] for r in shards)  # every model, once
    assert {r["id"]: r["split"] for r in table} == {r["id"]: r["split"] for r in shards}
    assert all(len(r["latent"]) == 6 for r in table) and m["latent_size"] == 6
    assert all(r["behaviour_kl"] <= r["behaviour_kl_encoder"] + 1e-6 for r in table)  # refinement never hurts here
    rows, z = read_latents(tmp_path / "latents.parquet", "val")
    assert [r["split"] for r in rows] == ["val"] * len(rows) and z.shape == (len(rows), 6)
    # without refinement a code is the encoder's posterior mean
    encode(EncodeParams(refine_steps=0), trained / "shards", trained / "vae.ckpt", tmp_path / "plain.parquet")
    rows, z = read_latents(tmp_path / "plain.parquet", "test")
    vae = VAE.from_export(str(trained / "vae.ckpt"))
    ds = ZooDataset(trained / "shards", "test", max_len=vae.cfg.max_len)
    batch = next(iter(ZooDataModule.loader(ds, batch_size=len(ds))))
    order = {p["id"]: i for i, p in enumerate(batch["model_properties"])}  # the table goes a layout at a time
    with torch.no_grad():
        torch.testing.assert_close(z, vae.encode(batch).mode()[[order[r["id"]] for r in rows]])
    assert json.loads(json.dumps(m)) == m
    with pytest.raises(ParamsError, match=r"encode\.splits: \['train', 'train'\] is not allowed"):
        build(EncodeParams, {"splits": ["train", "train"]}, "encode")


def test_encode_starts_training_networks_at_the_codes_autodecoding_fitted(trained, tmp_path):
    """A codec carrying fitted codes for its training networks (as the train stage's auto-decoding leaves them;
    here the codes 5 refinement steps reach, planted): with `fitted_refine_steps: 0` encode gives exactly those
    codes for the training split and refines the others from their encoder's code as before; with `null` the
    fitted codes are ignored."""
    p = EncodeParams(refine_steps=5, probe_count=32, probe_batch=8, fitted_refine_steps=None)
    encode(p, trained / "shards", trained / "vae.ckpt", tmp_path / "ref.parquet")
    ref = {r["id"]: r for r in pq.read_table(tmp_path / "ref.parquet").to_pylist()}
    vae = VAE.from_export(str(trained / "vae.ckpt"))
    assert vae.fitted_codes == {}  # a linear codec: no auto-decoding
    vae.fitted_codes = {i: torch.tensor(r["latent"]) for i, r in ref.items() if r["split"] == "train"}
    torch.save(vae.export(), tmp_path / "fitted.ckpt")
    loaded = VAE.from_export(str(tmp_path / "fitted.ckpt")).fitted_codes
    assert sorted(loaded) == sorted(vae.fitted_codes)
    assert all(torch.equal(loaded[i], c) for i, c in vae.fitted_codes.items())  # the export keeps them exactly

    m = encode(replace(p, fitted_refine_steps=0), trained / "shards", tmp_path / "fitted.ckpt", tmp_path / "z.parquet")
    got = {r["id"]: r for r in pq.read_table(tmp_path / "z.parquet").to_pylist()}
    assert m["splits"]["train"]["from_fitted_codes"] == len(vae.fitted_codes) > 0
    assert m["splits"]["val"]["from_fitted_codes"] == m["splits"]["test"]["from_fitted_codes"] == 0
    for i, r in got.items():
        assert r["latent"] == ref[i]["latent"], i  # training networks: the fitted code itself; others as before
        assert r["latent_encoder"] == ref[i]["latent_encoder"] and r["behaviour_kl_encoder"] == pytest.approx(
            ref[i]["behaviour_kl_encoder"], rel=1e-6)
        assert r["behaviour_kl"] == pytest.approx(ref[i]["behaviour_kl"], rel=1e-5, abs=1e-9)
    encode(replace(p, fitted_refine_steps=None), trained / "shards", tmp_path / "fitted.ckpt", tmp_path / "n.parquet")
    assert pq.read_table(tmp_path / "n.parquet").to_pylist() == pq.read_table(tmp_path / "ref.parquet").to_pylist()
    with pytest.raises(ParamsError, match=r"encode\.fitted_refine_steps: -1 is not allowed; need null"):
        build(EncodeParams, {"fitted_refine_steps": -1}, "encode")


def test_probes_are_training_inputs():
    task = get_task("digits")
    assert torch.equal(probe_inputs("digits", None), task.x_train)
    some = probe_inputs("digits", 16)
    rows = {tuple(r.flatten().tolist()) for r in task.x_train}
    assert len(some) == 16 and all(tuple(r.flatten().tolist()) in rows for r in some)
