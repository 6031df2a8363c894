"""The controls stage: the same refinement in a PCA and a random subspace, the bar a learned codec must beat.

Hand-made cases: a subspace that spans the networks gives them back exactly and refines to agreement 1; the random
subspace is orthonormal and a function of its seed; with no refinement step, `pca_refined` is the projection onto the
principal components that evaluate's `pca` row computes by its own code; the files hold exactly the split's models."""

import json
import shutil

import pytest
import torch

from weightvae import metrics as M
from weightvae import standardize
from weightvae.archs import build_model
from weightvae.controls import ControlsParams, controls, random_orthonormal, subspace_module
from weightvae.data import ZooDataset
from weightvae.encode import EncodeParams
from weightvae.ingest import IngestParams, ingest
from weightvae.layout import Layout
from weightvae.model import VAE, function_key
from weightvae.nets import VAEConfig, vae_kwargs
from weightvae.params import ParamsError
from weightvae.records import CONTROLS, load_control
from weightvae.refine import refine
from weightvae.shards import open_shard
from weightvae.tasks import get_task
from weightvae.train import TrainParams


def test_the_random_subspace_is_orthonormal_and_seeded():
    q = random_orthonormal(50, 12, seed=3)
    assert q.shape == (12, 50) and q.dtype == torch.float64
    assert torch.allclose(q @ q.T, torch.eye(12, dtype=torch.float64), atol=1e-12)
    assert torch.equal(q, random_orthonormal(50, 12, seed=3))
    assert not torch.allclose(q, random_orthonormal(50, 12, seed=4))


def _linear_template(nets: list[torch.nn.Module], latent_dim: int) -> tuple[VAE, Layout, torch.Tensor]:
    layout = Layout.from_state_dict(nets[0].state_dict())
    x = torch.stack([layout.flatten(n.state_dict()) for n in nets])
    functional = {function_key("digits", layout.layout_id): {"arch": "cnn", "kwargs": {}, "task": "digits",
                                                             "layout": layout.to_dict()}}
    vae = VAE(vae_kwargs(VAEConfig(max_len=layout.length, codec="linear", latent_dim=latent_dim)), {},
              layout_ids=[layout.layout_id], normalize=False, functional=functional)
    return vae, layout, x


@pytest.mark.parametrize("kind", ["pca", "random"])
def test_a_subspace_that_spans_the_networks_gives_them_back_and_refines_to_agreement_one(kind):
    """PCA with as many directions as networks spans them; a random orthonormal basis of the whole space spans
    everything. The projection decodes to the network itself, so refinement starts (and stays) at agreement 1."""
    torch.manual_seed(0)
    nets = [build_model("cnn") for _ in range(6)]
    for n in nets:  # decisive logits: an untrained network's near-ties would flip on float rounding alone
        n.fc2.weight.data.mul_(50)
    vae, layout, x = _linear_template(nets, 6 if kind == "pca" else layout_length(nets))
    model = subspace_module(kind, x, vae.cfg.latent_dim, vae, seed=0)
    lids, keys = [layout.layout_id] * len(x), [next(iter(model.functional))] * len(x)
    with torch.no_grad():
        z0 = model.net.encode(x).mode()
    assert torch.allclose(model.decode(z0), x, atol=1e-4)
    # refinement starts at the network itself (a KL of 0: nothing to move); the full random basis is only checked
    # at its start, where float32 rounding through 1,706 directions is all that separates it from the original
    steps = 5 if kind == "pca" else 0
    z, before, after = refine(model, z0, x, lids, keys, steps=steps, lr=1e-5, probe_count=64, probe_batch=16)
    x_test = get_task("digits").x_test
    with torch.no_grad():
        key = keys[0]
        a = model.network_logits(x, lids, key, x_test).argmax(-1)
        b = model.network_logits(model.decode(z), lids, key, x_test).argmax(-1)
    assert (a == b).double().mean() >= 0.995 and (kind == "random" or torch.equal(a, b))
    assert float(before.max()) < 1e-5 and float(after.max()) < 1e-5


def layout_length(nets: list[torch.nn.Module]) -> int:
    return Layout.from_state_dict(nets[0].state_dict()).length


@pytest.fixture(scope="module")
def cnn_shards(tiny_zoo, tmp_path_factory):
    """The session's tiny zoo, CNNs only (one layout), ingested."""
    root = tmp_path_factory.mktemp("controls")
    shutil.copytree(tiny_zoo[0], root / "zoo", ignore=lambda d, names: [n for n in names if "mlp" in n])
    ingest(IngestParams(zoo_dir=str(root / "zoo"), workers=1), root / "shards", log=lambda *_: None)
    return root / "shards"


def test_controls_hold_exactly_the_splits_networks_and_pca_at_zero_steps_is_the_projection(cnn_shards, tmp_path):
    k = 1  # the train split holds 2 networks: one principal direction (beyond the rank, PCA's are arbitrary)
    train_p = TrainParams(codec="linear", latent_dim=k)
    m = controls(cnn_shards, tmp_path / "controls", train_p, EncodeParams(refine_steps=0), ControlsParams(),
                 log=lambda *_: None)
    table = json.loads((cnn_shards / "layouts.json").read_text())
    (lid,) = table
    ds = ZooDataset(cnn_shards, "test", normalize=False, layout_id=lid)
    test_ids = [ds.properties(i)["id"] for i in range(len(ds))]
    assert len(test_ids) >= 1
    for name in CONTROLS:
        nets = load_control(tmp_path / "controls" / f"{name}.pt")
        assert list(nets) == test_ids  # exactly the split's models, in the shards' order
        assert m["methods"][name]["models"] == len(test_ids)
    assert (m["latent_size"], m["refine_steps"], m["split"]) == (k, 0, "test")
    # evaluate's `pca` (metrics.pca_baseline on real weights with the per-layer standardisation of the train split)
    train = ZooDataset(cnn_shards, "train", normalize=False, layout_id=lid)
    train_w = torch.from_numpy(open_shard(cnn_shards, "train", lid)[[r["row"] for r in train.rows]].copy())
    test_w = torch.from_numpy(open_shard(cnn_shards, "test", lid)[[r["row"] for r in ds.rows]].copy())
    layout = Layout.from_dict(table[lid])
    mean, scale = standardize.from_weights(train_w, layout.slices())
    expected = M.pca_baseline(test_w, train_w, mean, scale, k)
    pca = load_control(tmp_path / "controls" / "pca_refined.pt")
    assert torch.allclose(torch.stack([pca[i] for i in test_ids]), expected, atol=1e-4)
    # refinement moves the codes: the networks change and the behavioural KL falls
    m2 = controls(cnn_shards, tmp_path / "refined", train_p, EncodeParams(refine_steps=10, refine_lr=0.05,
                                                                           probe_count=32), ControlsParams(),
                  log=lambda *_: None)
    for name in CONTROLS:
        assert m2["methods"][name]["behaviour_kl_mean"] < m2["methods"][name]["behaviour_kl_start_mean"]
    moved = load_control(tmp_path / "refined" / "pca_refined.pt")
    assert not torch.allclose(torch.stack([moved[i] for i in test_ids]), expected, atol=1e-4)


def test_controls_params_are_checked():
    with pytest.raises(ParamsError, match="controls.split: 'train' is not allowed; choose val or test"):
        ControlsParams(split="train")
