"""A joint zoo (two architectures, two tasks, one architecture on both) through ingest, train,
reconstruct and evaluate."""

import json
import math

import pandas as pd
import pytest
import torch

from weightvae.data import ZooDataset, collate
from weightvae.encode import EncodeParams, encode
from weightvae.evaluate import EvaluateParams, evaluate, write_outputs
from weightvae.ingest import IngestParams, ingest
from weightvae.model import VAE
from weightvae.reconstruct import ReconstructParams, reconstruct
from weightvae.train import TrainParams, train
from weightvae.zoo import ZooParams, build_zoo

pytestmark = pytest.mark.slow


def test_joint_zoo_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # DVCLive must not find this repository's dvc.yaml
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    quiet = dict(log=lambda *_: None)
    build_zoo(ZooParams(task="digits", architectures={"cnn": 10}, epochs=2, save_epochs=(1, 2), group_size=10),
              zoo / "digits", **quiet)
    build_zoo(ZooParams(task="digits_inverted", architectures={"mlp": 10, "cnn": 10}, epochs=2, save_epochs=(1, 2),
                        group_size=10), zoo / "inverted", **quiet)
    shards = tmp_path / "shards"
    ingest(IngestParams(zoo_dir=str(zoo), split=(0.6, 0.2, 0.2)), shards, **quiet)
    table = pd.read_parquet(shards / "models.parquet")
    assert table.groupby(["task", "architecture"]).size().to_dict() == {
        ("digits", "cnn"): 20, ("digits_inverted", "cnn"): 20, ("digits_inverted", "mlp"): 20}
    layouts = json.loads((shards / "layouts.json").read_text())
    assert sorted(v["length"] for v in layouts.values()) == [1706, 2410]  # padded to the longest: 2,410

    p = TrainParams(latent_dim=16, max_epochs=2, batch_size=8, accelerator="cpu", behaviour_weight=1.0, probe_count=8)
    metrics = train(p, shards, tmp_path / "vae.ckpt", tmp_path / "ckpt", tmp_path / "live")
    # the behavioural term runs for every (task, layout), the cnn layout shared by two tasks included
    vae = VAE.from_export(str(tmp_path / "vae.ckpt"))
    cnn = next(lid for lid, v in layouts.items() if v["length"] == 1706)
    assert sorted(k.split("/")[0] for k in vae.functional) == ["digits", "digits_inverted", "digits_inverted"]
    assert {f"digits/{cnn}", f"digits_inverted/{cnn}"} <= set(vae.functional)
    batch = collate([ZooDataset(shards, "train")[i] for i in range(len(ZooDataset(shards, "train")))])
    lids = [pr["layout_id"] for pr in batch["model_properties"]]
    logits, valid = vae.function_logits(batch["weight"], lids, vae.batch_function_keys(batch, lids))
    assert valid.all() and logits.shape[:2] == (len(lids), 8)
    assert metrics["train/behaviour"] > 0
    latents = tmp_path / "latents.parquet"
    encode(EncodeParams(refine_steps=3, probe_count=8), shards, tmp_path / "vae.ckpt", latents)
    reconstruct(ReconstructParams(n_samples=2, sampler="kde"), shards, tmp_path / "vae.ckpt", latents,
                tmp_path / "recon")
    assert len(list((tmp_path / "recon" / "samples").glob("*.pt"))) == 6  # n_samples per task/architecture
    _check_kde_samples(shards, tmp_path, table)

    head, df, plots = evaluate(EvaluateParams(), shards, tmp_path / "recon", latents)
    assert set(head["groups"]) == {"digits/cnn", "digits_inverted/cnn", "digits_inverted/mlp"}
    for g in head["groups"].values():
        assert {"retention", "agreement", "r2"} <= set(g["methods"]["vae"]) and "fidelity_gain" in g
        copies = g["samples"]["permuted_copies"]  # training networks with shuffled units: far in weights only
        assert copies["functional_novelty_ratio"] == 0.0 and copies["novelty_ratio"] > 0.3
        assert {"acc_ratio_vs_all_checkpoints", "acc_ratio_vs_final_epoch", "acc_ratio_vs_pool", "acc_ratio_vs_anchors",
                "novelty_ratio", "novelty_ratio_vs_pool", "functional_novelty_ratio"} <= set(g["samples"])
        assert g["samples"]["count"] == 2  # its own task's samples only, though both cnn groups share a layout
    assert set(df.group) == {"digits/cnn", "digits_inverted/cnn", "digits_inverted/mlp"}
    write_outputs(head, df, plots, tmp_path / "eval.json", tmp_path / "eval.csv", tmp_path / "plots", tmp_path / "live")
    assert json.loads((tmp_path / "eval.json").read_text())["models"] == len(table[table.split == "test"])


def _check_kde_samples(shards, tmp_path, table):
    """With bandwidth 0 a KDE sample is the VAE's reconstruction of its kernel's training model,
    and kernels sit only on the best `kde_top` of its own task/architecture's training models by
    train_acc (the two cnn groups share a layout but not their kernels)."""
    out = tmp_path / "recon-kde"
    reconstruct(ReconstructParams(splits=("train",), n_samples=6, sampler="kde", kde_bandwidth=0.0,
                                  kde_top=0.2), shards,
                tmp_path / "vae.ckpt", tmp_path / "latents.parquet", out)
    train = table[table.split == "train"].set_index("id")
    samples = [torch.load(f, weights_only=True) for f in sorted((out / "samples").glob("*.pt"))]
    assert len(samples) == 18
    for s in samples:
        props = s["model_properties"]
        assert props["sampler"] == "kde"
        anchor = train.loc[props["anchor_id"]]
        arch = props["architecture"]["name"]
        assert (anchor.layout_id, anchor.task, anchor.architecture) == (props["layout_id"], props["task"], arch)
        assert props["run_id"].startswith(f"sample-{props['task']}-{arch}-")
        same = train[(train.task == props["task"]) & (train.architecture == arch)]
        top_k = math.ceil(0.2 * len(same))
        assert anchor.train_acc >= same.train_acc.sort_values(ascending=False).iloc[top_k - 1]
        recon = torch.load(out / "train" / (props["anchor_id"].replace("/", "__") + ".pt"), weights_only=True)
        assert s["state_dict"].keys() == recon["state_dict"].keys()
        for k, v in recon["state_dict"].items():
            torch.testing.assert_close(s["state_dict"][k], v, rtol=0, atol=1e-6)
    prior = tmp_path / "recon-prior"
    reconstruct(ReconstructParams(n_samples=1, sampler="prior"), shards, tmp_path / "vae.ckpt",
                tmp_path / "latents.parquet", prior)
    for f in (prior / "samples").glob("*.pt"):
        props = torch.load(f, weights_only=True)["model_properties"]
        assert props["sampler"] == "prior" and "anchor_id" not in props
