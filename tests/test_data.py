import json
import pickle

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from weightvae import canonical
from weightvae.data import ZooDataModule, ZooDataset, collate
from weightvae.ingest import IngestParams, ingest
from weightvae.layout import Layout
from weightvae.shards import open_shard


@pytest.fixture(scope="module")
def shards(tiny_zoo, tmp_path_factory):
    """The tiny zoo plus a copy of it relabelled as a second task ("twin"): a joint zoo of 2 tasks."""
    base = tmp_path_factory.mktemp("data")
    zoo = base / "zoo"
    zoo.mkdir()
    for f in sorted(tiny_zoo[0].glob("*.pt")):
        rec = torch.load(f, weights_only=True)
        (zoo / f.name).write_bytes(f.read_bytes())
        mp = rec["model_properties"]
        mp["run_id"], mp["task"] = mp["run_id"].replace("digits", "twin"), "twin"
        mp["metrics"]["train_acc"] = 1 - mp["metrics"]["test_acc"]  # ranks runs the other way round from test_acc
        torch.save(rec, zoo / f"twin-{f.name}")
    ingest(IngestParams(zoo_dir=str(zoo), workers=1), base / "shards", log=lambda *_: None)
    return base / "shards"


def _rows(shards, split):
    return [r for r in pq.read_table(shards / "models.parquet").to_pylist() if r["split"] == split]


def test_getitem_honours_the_index_and_covers_every_row(shards):
    rows = _rows(shards, "train")
    ds = ZooDataset(shards, "train", normalize=False)
    assert len(ds) == len(rows) > 0 and ds.max_len == max(r["length"] for r in rows)
    seen = []
    for i in range(len(ds)):
        a, b = ds[i], ds[i]
        assert torch.equal(a["weight"], b["weight"]) and a["model_properties"]["id"] == b["model_properties"]["id"]
        p = a["model_properties"]
        stored = open_shard(shards, "train", p["layout_id"])[p["row"]]  # [length]: the shard is not padded
        assert np.array_equal(a["weight"].numpy(), np.pad(stored, (0, ds.max_len - len(stored))))
        seen.append(a["model_properties"]["id"])
    assert sorted(seen) == sorted(r["id"] for r in rows)
    assert ds[-1]["model_properties"]["id"] == seen[-1]
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_sample_fields_mask_layer_and_properties(shards):
    ds = ZooDataset(shards, "val")
    layouts = json.loads((shards / "layouts.json").read_text())
    for i in range(len(ds)):
        s = ds[i]
        mp = s["model_properties"]
        layout = Layout.from_dict(mp["layout"])
        assert mp["layout"] == layouts[mp["layout_id"]] and isinstance(mp["arch_kwargs"], dict)
        assert s["weight"].dtype == s["mask"].dtype == torch.float32 and s["layer"].dtype == torch.long
        assert s["dataset"] == [] and s["weight"].shape == s["mask"].shape == s["layer"].shape == (ds.max_len,)
        assert s["mask"].sum() == layout.length == mp["length"]
        assert torch.all(s["mask"][:layout.length] == 1) and torch.all(s["layer"][layout.length:] == -1)
        assert torch.all(s["weight"][layout.length:] == 0)  # padding stays exactly 0 after normalising
        for j, e in enumerate(layout.learned):
            assert torch.all(s["layer"][e.offset:e.offset + e.numel] == j)


def test_normalize_is_per_layer_train_standardisation_and_denormalize_inverts_it(shards):
    raw, norm = ZooDataset(shards, "train", normalize=False), ZooDataset(shards, "train")
    x = torch.stack([norm[i]["weight"] for i in range(len(norm))])
    r = torch.stack([raw[i]["weight"] for i in range(len(raw))])
    lids = [p["layout_id"] for p in norm.rows]
    torch.testing.assert_close(norm.denormalize(x, lids), r, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(norm.denormalize(x[0], lids[0]), r[0], rtol=1e-6, atol=1e-7)
    for lid, layout in norm.layouts.items():  # each learned tensor: mean 0, std 1 over the train split
        mean, std = norm.normalization(lid)
        assert torch.all(mean[layout.length:] == 0) and torch.all(std[layout.length:] == 1)
        mine = x[[i for i, p in enumerate(lids) if p == lid]].double()
        for e in layout.learned:
            t = mine[:, e.offset:e.offset + e.numel]
            assert abs(t.mean()) < 1e-5 and abs(t.std(unbiased=False) - 1) < 1e-5
    val = ZooDataset(shards, "val")  # held-out models use the train statistics
    v = val[0]
    mean, std = norm.normalization(v["model_properties"]["layout_id"])
    raw_val = ZooDataset(shards, "val", normalize=False)[0]["weight"]
    torch.testing.assert_close(v["weight"], (raw_val - mean) / std)


def test_max_len_pads_further_and_never_truncates(shards):
    ds = ZooDataset(shards, "test", max_len=3000)
    s = ds[0]
    assert s["weight"].shape == (3000,) and torch.all(s["weight"][ds.stored_max_len:] == 0)
    assert torch.all(s["layer"][ds.stored_max_len:] == -1) and ds.normalization(s["model_properties"]["layout_id"])[
        0].shape == (3000,)
    with pytest.raises(ValueError, match="shorter than the shards' max_len=2410"):
        ZooDataset(shards, "test", max_len=2000)


def test_dataset_selects_a_task_and_topk_keeps_the_best_runs_per_task(shards):
    joint = ZooDataset(shards, "train", normalize=False)
    twin = ZooDataset(shards, "train", dataset="twin", normalize=False)
    assert {p["task"] for p in twin.rows} == {"twin"} and 0 < len(twin) < len(joint)
    with pytest.raises(ValueError, match="choose 'joint' or one of"):
        ZooDataset(shards, "train", dataset="cifar10")
    top = ZooDataset(shards, "train", topk=1)
    for task in ("digits", "twin"):
        rows = [p for p in joint.rows if p["task"] == task]
        final_train, final_test = {}, {}
        for p in sorted(rows, key=lambda p: p["epoch"]):
            final_train[p["run_id"]], final_test[p["run_id"]] = p["train_acc"], p["test_acc"]
        best = max(final_train, key=final_train.get)  # by train_acc: the test set is evaluate's
        kept = [p for p in top.rows if p["task"] == task]
        assert {p["run_id"] for p in kept} == {best}
        assert len(kept) == sum(p["run_id"] == best for p in rows)  # every checkpoint of the run
        if task == "twin":  # its train_acc is 1 - test_acc: the best run by train_acc is the worst by test_acc
            assert best == min(final_test, key=final_test.get) != max(final_test, key=final_test.get)
    for split in ("val", "test"):
        with pytest.raises(ValueError, match="only allowed for split='train'"):
            ZooDataset(shards, split, topk=1)


def test_datamodule_loaders_collate_and_seeded_shuffle(shards):
    def ids(loader):
        return [p["id"] for b in loader for p in b["model_properties"]]

    dm = ZooDataModule(shards, batch_size=3, seed=5, topk=None, normalize=False)
    dm.setup("fit")
    assert dm.test_dataset is None and len(dm.train_dataset) > 0
    batch = next(iter(dm.train_dataloader()))
    assert batch["weight"].shape == (3, dm.train_dataset.max_len) and batch["layer"].dtype == torch.long
    assert isinstance(batch["model_properties"], list) and isinstance(batch["model_properties"][0], dict)
    assert batch["dataset"] == [[], [], []]
    loader = dm.train_dataloader()
    first, second = ids(loader), ids(loader)  # two epochs
    assert sorted(first) == sorted(p["id"] for p in dm.train_dataset.rows)
    assert first != [p["id"] for p in dm.train_dataset.rows] and second != first  # shuffled, afresh each epoch ...
    dm2 = ZooDataModule(shards, batch_size=3, seed=5)
    dm2.setup("fit")
    loader2 = dm2.train_dataloader()
    assert [ids(loader2), ids(loader2)] == [first, second]  # ... and reproducibly
    assert ids(dm.val_dataloader()) == [p["id"] for p in dm.val_dataset.rows]  # in order
    dm.setup("test")
    assert ids(dm.test_dataloader()) == [p["id"] for p in dm.test_dataset.rows]
    topk = ZooDataModule(shards, topk=1, dataset="twin", max_len=2500)
    topk.setup("fit")  # topk reaches the train split only; the other params reach both
    assert len({p["run_id"] for p in topk.train_dataset.rows}) == 1 and topk.val_dataset.max_len == 2500
    assert {p["task"] for p in topk.val_dataset.rows} <= {"twin"}


def test_rows_turn_back_into_the_original_state_dicts(tiny_zoo, shards):
    """What reconstruct does: layout + buffers from model_properties, through the denormalised vector."""
    ds = ZooDataset(shards, "test")
    batch = collate([ds[i] for i in range(len(ds))])
    flat = ds.denormalize(batch["weight"], [p["layout_id"] for p in batch["model_properties"]])
    for vec, props in zip(flat, batch["model_properties"]):
        layout = Layout.from_dict(props["layout"])
        stored = open_shard(shards, "test", props["layout_id"])[props["row"]]
        exact = layout.unflatten(torch.from_numpy(stored.copy()), props["buffers"])
        close = layout.unflatten(vec[:layout.length], props["buffers"])
        if props["task"] == "digits":
            sd = torch.load(tiny_zoo[0] / props["source_path"], weights_only=True)["state_dict"]
            sd = canonical.canonicalize(props["architecture"], sd)  # ingest.canonicalize, the default
            assert all(torch.equal(exact[k], v) for k, v in sd.items())
            for k, v in sd.items():
                torch.testing.assert_close(close[k], v, rtol=1e-5, atol=1e-6)


def test_dataset_pickles_without_its_memory_map(shards):
    ds = ZooDataset(shards, "train")
    ds[0]
    blob = pickle.dumps(ds)
    assert len(blob) < 200_000  # rows and layout vectors, not the shard
    assert torch.equal(pickle.loads(blob)[1]["weight"], ds[1]["weight"])
