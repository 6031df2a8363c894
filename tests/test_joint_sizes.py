"""A joint zoo of two very different sizes (a 1,706-weight CNN and a 19,210-weight MLP): stored, trained, coded,
reconstructed and evaluated together, with no small model ever padded to the large one's length."""

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from weightvae.archs import build_model
from weightvae.chunks import Chunking
from weightvae.data import ZooDataModule, ZooDataset
from weightvae.encode import EncodeParams, encode
from weightvae.evaluate import EvaluateParams, evaluate
from weightvae.ingest import IngestParams, ingest
from weightvae.latents import read_latents
from weightvae.layout import Layout
from weightvae.model import VAE
from weightvae.reconstruct import ReconstructParams, reconstruct
from weightvae.shards import open_shard
from weightvae.train import TrainParams, train
from weightvae.zoo import ZooParams, build_zoo

pytestmark = pytest.mark.slow

SIZE, CODE, WINDOW = 64, 16, 8


@pytest.fixture(scope="module")
def joint(tmp_path_factory):
    root = tmp_path_factory.mktemp("joint")
    build_zoo(ZooParams(architectures={"cnn": 12, "mlp": 12}, arch_kwargs={"mlp": {"hidden": 256}}, epochs=2,
                        save_epochs=(1, 2), group_size=12), root / "zoo", log=lambda *_: None)
    ingest(IngestParams(zoo_dir=str(root / "zoo"), workers=1), root / "shards", log=lambda *_: None)
    layouts = {k: Layout.from_dict(v) for k, v in json.loads((root / "shards" / "layouts.json").read_text()).items()}
    return root, layouts


def _chunks(layout):
    return sum(math.ceil(e.numel / SIZE) for e in layout.learned)


def test_each_model_is_stored_at_its_own_length(joint):
    root, layouts = joint
    assert sorted(lay.length for lay in layouts.values()) == [1706, 19210]
    rows = pq.read_table(root / "shards" / "models.parquet").to_pylist()
    for r in rows:
        shard = open_shard(root / "shards", r["split"], r["layout_id"])
        assert shard.shape[1] == r["length"] == layouts[r["layout_id"]].length
    stored = sum(p.stat().st_size - 128 for p in (root / "shards").rglob("*.npy"))  # 128: an npy header
    assert stored == 4 * sum(r["length"] for r in rows)  # padded to the longest it would be 4 * 19210 * rows


def test_a_joint_zoo_trains_on_windows_and_codes_each_network_at_its_own_length(joint, tmp_path, monkeypatch):
    root, layouts = joint
    shards = root / "shards"
    monkeypatch.chdir(tmp_path)  # DVCLive looks for a DVC repo in the working directory
    # every training and validation sample is a window of chunks, whatever its network's size
    dm = ZooDataModule(shards, batch_size=6, window=WINDOW, chunk_size=SIZE)
    dm.setup("fit")
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        for batch in loader:
            assert batch["chunks"].shape == (len(batch["chunk_ids"]), WINDOW, SIZE)
    # chunk numbers run over both layouts (sorted by id), so each window says its layout and tensor
    lids = sorted(layouts)
    first = _chunks(layouts[lids[0]])
    for item in (dm.train_dataset[i] for i in range(len(dm.train_dataset))):
        mine = lids.index(item["model_properties"]["layout_id"])
        lo, hi = (0, first) if mine == 0 else (first, first + _chunks(layouts[lids[1]]))
        assert lo <= int(item["chunk_ids"][0]) and int(item["chunk_ids"][-1]) < hi

    p = TrainParams(codec="chunk", chunk_size=SIZE, chunk_latent=CODE, window=WINDOW, behaviour_weight=0.0,
                    max_epochs=2, batch_size=6, accelerator="cpu")
    train(p, shards, tmp_path / "vae.ckpt", tmp_path / "lightning", tmp_path / "live")
    model = VAE.from_export(str(tmp_path / "vae.ckpt"))
    assert model.net.chunk_counts == [_chunks(layouts[lid]) for lid in lids] and model.layout_ids == lids

    # a whole network of the second layout codes as its chunks do, one by one under their global numbers
    big = ZooDataset(shards, "test", layout_id=lids[1])
    x = torch.stack([big.vector(i) for i in range(2)])
    assert x.shape == (2, layouts[lids[1]].length)  # its own length: no padding
    c = Chunking([e.numel for e in layouts[lids[1]].learned], SIZE)
    with torch.no_grad():
        whole = model.net.encode(x, layout=1).mean.view(2, -1, CODE)
        ids = torch.arange(first, first + c.count)
        each, _ = model.net.encode_chunks(c.cut(x), ids)
        torch.testing.assert_close(whole, each, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.net.decode(whole.flatten(1), layout=1),
                                   c.join(model.net.decode_chunks(each, ids)), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="codes one layout at a time"):
        model.decode(torch.zeros(2, 16), [lids[0], lids[1]])

    encode(EncodeParams(refine_steps=2, probe_count=8), shards, tmp_path / "vae.ckpt", tmp_path / "latents.parquet")
    table = pq.read_table(tmp_path / "latents.parquet").to_pylist()
    assert {r["layout_id"]: len(r["latent"]) for r in table} == {lid: _chunks(layouts[lid]) * CODE for lid in lids}
    with pytest.raises(ValueError, match="read one layout at a time"):
        read_latents(tmp_path / "latents.parquet")
    rows, z = read_latents(tmp_path / "latents.parquet", "test", lids[0])
    assert z.shape == (len(rows), _chunks(layouts[lids[0]]) * CODE) and torch.isfinite(z).all()

    out = tmp_path / "recon"
    reconstruct(ReconstructParams(splits=("test",), n_samples=2, sampler="kde"), shards, tmp_path / "vae.ckpt",
                tmp_path / "latents.parquet", out)
    test = pq.read_table(shards / "models.parquet").to_pandas().query("split == 'test'")
    nets = {"cnn": build_model("cnn", {}), "mlp": build_model("mlp", {"hidden": 256})}
    shapes = {a: {k: tuple(v.shape) for k, v in net.state_dict().items()} for a, net in nets.items()}
    for r in test.itertuples():
        sd = load_file(out / "test" / (r.id.replace("/", "__") + ".safetensors"))
        assert {k: tuple(v.shape) for k, v in sd.items()} == shapes[r.architecture]
    assert len(list((out / "samples").glob("*.safetensors"))) == 4  # 2 per (task, architecture)

    head, _, _ = evaluate(EvaluateParams(), shards, out, tmp_path / "latents.parquet")
    for arch, lid in dict(zip(test.architecture, test.layout_id)).items():
        g = head["groups"][f"digits/{arch}"]
        assert g["latent_size"] == _chunks(layouts[lid]) * CODE
        assert g["compression_ratio"] == pytest.approx(layouts[lid].length / g["latent_size"])
        vae = g["methods"]["vae"]
        assert 0 <= vae["agreement"] <= 1 and np.isfinite(vae["r2"]) and "pca" in g["methods"]
