"""The probe stage: ridge and boosted-tree probes, s(W), the val-only choice, and the stage on planted zoos.

Planted zoo: every network is a 7-weight `toy` (tensors `a` [2, 2] and `b` [3]) with a 5-value latent
written by hand. Its test accuracy is an exact linear function of the latent, its train accuracy the
mean of tensor `a` (an s(W) feature, and linear in W), its `lr` noise that no representation knows.
"""

import argparse
import json
import shutil
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.linear_model import Ridge

from weightvae.ingest import IngestParams, ingest
from weightvae.latents import write_latents
from weightvae.params import ParamsError, load_section, run_command
from weightvae.probe import (
    REPRESENTATIONS,
    ProbeError,
    ProbeParams,
    RidgeBasis,
    gbt_probe,
    probe,
    r2_score,
    ridge_probe,
    run,
    weight_stats,
)

ALPHAS = ProbeParams().alphas()
BETA = np.array([0.05, -0.03, 0.02, 0.04, -0.01])  # test_acc = 0.6 + latent @ BETA


def _split(n_train, n_val, n_test, d, seed=0, scales=None):
    r = np.random.default_rng(seed)
    scales = np.ones(d) if scales is None else scales
    return [r.normal(size=(n, d)) * scales + 3.0 for n in (n_train, n_val, n_test)]


# ----------------------------------------------------------------------------- probes


def test_ridge_recovers_a_planted_linear_target_and_finds_nothing_in_noise():
    scales = np.logspace(-3, 2, 20)  # features on very different scales: standardised on train
    xt, xv, xs = _split(400, 200, 2000, 20, scales=scales)
    beta = np.random.default_rng(1).normal(size=20) / scales

    def planted(x):
        return x @ beta + 7.0

    fit = ridge_probe(RidgeBasis(xt), planted(xt), xv, planted(xv), xs, ALPHAS)
    assert r2_score(planted(xs), fit.pred) > 1 - 1e-6
    assert fit.choice["alpha"] == ALPHAS[0]  # no noise: the least penalty wins on val
    r = np.random.default_rng(2)
    noise = {k: r.normal(size=n) for k, n in (("train", 400), ("val", 200), ("test", 2000))}
    fit = ridge_probe(RidgeBasis(xt), noise["train"], xv, noise["val"], xs, ALPHAS)
    assert -0.03 < r2_score(noise["test"], fit.pred) < 0.01


def test_ridge_in_closed_form_matches_scikit_learn_also_when_wider_than_tall():
    """Standardised features, unpenalised intercept: the same predictions as scikit-learn's Ridge on
    the standardised matrix, for 30 rows of 500 features (the dual case W is in) and for a tall one."""
    for n, d in ((30, 500), (200, 12)):
        xt, _, xs = _split(n, 1, 50, d, seed=n)
        y = np.random.default_rng(3).normal(size=n)
        basis = RidgeBasis(xt)
        mu, sd = xt.mean(0), xt.std(0)
        for alpha in (1e-2, 1.0, 1e3):
            ours = basis.predict(y, basis.project(xs), np.array([alpha]))[0]
            theirs = Ridge(alpha=alpha).fit((xt - mu) / sd, y).predict((xs - mu) / sd)
            np.testing.assert_allclose(ours, theirs, rtol=1e-7, atol=1e-9)


def test_a_constant_feature_is_ignored_not_divided_by_zero():
    xt, xv, xs = _split(100, 50, 50, 3)
    for x in (xt, xv, xs):
        x[:, 1] = 5.0
    y = [x[:, 0] * 2 for x in (xt, xv, xs)]
    fit = ridge_probe(RidgeBasis(xt), y[0], xv, y[1], xs, ALPHAS)
    assert r2_score(y[2], fit.pred) > 1 - 1e-6


def test_the_penalty_is_the_best_on_val_whatever_the_test_split_prefers():
    """Val and test disagree on purpose: val targets are the planted signal (least penalty best), test
    targets pure noise (the largest penalty best). The choice must be val's, found by scikit-learn too."""
    xt, xv, xs = _split(60, 40, 40, 30, seed=4)
    beta = np.random.default_rng(5).normal(size=30)
    y_train = xt @ beta + np.random.default_rng(6).normal(scale=3.0, size=60)
    y_val, y_test = xv @ beta, np.random.default_rng(7).normal(size=40)
    fit = ridge_probe(RidgeBasis(xt), y_train, xv, y_val, xs, ALPHAS)
    mu, sd = xt.mean(0), xt.std(0)
    by_sklearn = [Ridge(alpha=a).fit((xt - mu) / sd, y_train) for a in ALPHAS]
    val_r2 = [r2_score(y_val, m.predict((xv - mu) / sd)) for m in by_sklearn]
    test_r2 = [r2_score(y_test, m.predict((xs - mu) / sd)) for m in by_sklearn]
    assert fit.choice["alpha"] == ALPHAS[int(np.argmax(val_r2))]
    assert ALPHAS[int(np.argmax(test_r2))] != fit.choice["alpha"]  # the test split would have chosen otherwise
    assert fit.val_r2 == pytest.approx(max(val_r2), abs=1e-9)


def test_boosted_trees_recover_a_planted_step_and_find_nothing_in_noise():
    p = ProbeParams(gbt_max_iter=100)
    xt, xv, xs = _split(600, 300, 2000, 5, seed=8)

    def step(x):
        return np.where(x[:, 2] > 3.0, 1.0, 0.0) + np.where(x[:, 0] > 3.5, 0.5, 0.0)

    fit = gbt_probe(p, xt, step(xt), xv, step(xv), xs)
    assert r2_score(step(xs), fit.pred) > 0.98
    r = np.random.default_rng(9)
    fit = gbt_probe(p, xt, r.normal(size=600), xv, r.normal(size=300), xs)
    assert -0.05 < r2_score(r.normal(size=2000), fit.pred) < 0.02
    first, again = (gbt_probe(p, xt, step(xt), xv, step(xv), xs) for _ in range(2))
    assert np.array_equal(first.pred, again.pred) and first.choice == again.choice  # seeded


def test_weight_stats_match_a_hand_computation():
    """Layout `a` [2, 2] then `b` [3]: per tensor mean, variance (ddof 0), percentiles 1/25/50/75/99
    with linear interpolation between order statistics."""
    w = np.array([[4.0, 1.0, 3.0, 2.0, 5.0, -1.0, 2.0],
                  [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]])
    feats, names = weight_stats(w, [("a", slice(0, 4)), ("b", slice(4, 7))])
    assert names == ["a:mean", "a:var", "a:p1", "a:p25", "a:p50", "a:p75", "a:p99",
                     "b:mean", "b:var", "b:p1", "b:p25", "b:p50", "b:p75", "b:p99"]
    # a = 1, 2, 3, 4 sorted: positions (n-1)q = 3q: p1 = 1 + 0.03, p25 = 1.75, p50 = 2.5, p75 = 3.25, p99 = 3.97
    # b = -1, 2, 5 sorted: positions 2q: p1 = -1 + 0.02*3, p25 = 0.5, p50 = 2, p75 = 3.5, p99 = 5 - 0.02*3
    # b's variance: mean 2, squares 9 + 0 + 9 over 3 = 6
    np.testing.assert_allclose(feats[0], [2.5, 1.25, 1.03, 1.75, 2.5, 3.25, 3.97,
                                          2.0, 6.0, -0.94, 0.5, 2.0, 3.5, 4.94], rtol=1e-12)
    np.testing.assert_allclose(feats[1], [0.0] * 7 + [1.0, 0.0] + [1.0] * 5)


def test_params_are_checked():
    with pytest.raises(ParamsError, match=r"probe.gbt: \['sW', 'weights'\] is not allowed; choose distinct"):
        ProbeParams(gbt=("sW", "weights"))
    with pytest.raises(ParamsError, match="probe.alpha_max: 0.1 is not allowed; need >= probe.alpha_min"):
        ProbeParams(alpha_min=1.0, alpha_max=0.1)


# ----------------------------------------------------------------------------- the stage


def _save(zoo, run_id, epoch, sd, metrics, hyper):
    torch.save({"state_dict": sd, "model_properties": {
        "format_version": 1, "run_id": run_id, "task": "toy", "epoch": epoch, "seed": 0,
        "architecture": {"name": "toy", "kwargs": {}}, "hyperparameters": hyper, "metrics": metrics}},
        zoo / f"{run_id}_e{epoch:03d}.pt")


def planted_zoo(root, runs=90):
    """Shards and latents of the planted zoo (module docstring); returns (shards, latents path)."""
    zoo = root / "zoo"
    zoo.mkdir()
    r = np.random.default_rng(0)
    latents = {}
    for i in range(runs):
        run_id = f"toy-{i:03d}"
        hyper = {"lr": float(r.uniform(1e-3, 1e-2)), "seed": i, "batch_size": 32, "optimizer": "adam"}
        for epoch in (1, 2):
            a = torch.tensor(r.normal(size=(2, 2)), dtype=torch.float32)
            b = torch.tensor(r.normal(size=3), dtype=torch.float32)
            z = r.normal(size=5).astype(np.float32)
            latents[f"{run_id}/e{epoch:03d}"] = z
            metrics = {"test_acc": 0.6 + float(z.astype(np.float64) @ BETA),
                       "train_acc": float(a.double().mean()), "test_loss": 1.0}
            _save(zoo, run_id, epoch, {"a": a, "b": b}, metrics, hyper)
    ingest(IngestParams(zoo_dir=str(zoo), split=(0.6, 0.2, 0.2), workers=1), root / "shards", log=lambda *_: None)
    table = pd.read_parquet(root / "shards" / "models.parquet")
    assert set(latents) == set(table.id)
    write_latents(root / "latents.parquet", [
        {"id": row.id, "split": row.split, "task": row.task, "architecture": row.architecture,
         "layout_id": row.layout_id, "run_id": row.run_id, "epoch": row.epoch, "latent": latents[row.id],
         "behaviour_kl_encoder": None, "behaviour_kl": None} for row in table.itertuples()])
    return root / "shards", root / "latents.parquet"


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return planted_zoo(tmp_path_factory.mktemp("planted"))


FAST = ProbeParams(gbt_max_iter=40)


def _args(tmp_path, shards, latents, params=FAST):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"probe": {
        "gbt_max_iter": params.gbt_max_iter, "gbt": list(params.gbt)}}))
    return argparse.Namespace(params=str(tmp_path / "params.yaml"), shards=str(shards), latents=str(latents),
                              metrics=str(tmp_path / "m" / "probe.json"), table=str(tmp_path / "m" / "probe.csv"),
                              plot=str(tmp_path / "m" / "plots" / "probe_r2.png"))


def test_the_stage_finds_what_was_planted_and_says_what_it_skipped(planted, tmp_path, capsys):
    shards, latents = planted
    run(_args(tmp_path, shards, latents))
    out = capsys.readouterr().out
    m = json.loads((tmp_path / "m" / "probe.json").read_text())
    g = m["groups"]["toy/toy"]
    table = pd.read_parquet(shards / "models.parquet")
    assert g["models"] == {s: int((table.split == s).sum()) for s in ("train", "val", "test")}
    assert g["features"] == {"latent": 5, "W": 7, "sW": 14, "pca": 5}
    t = g["targets"]
    assert sorted(t) == sorted(["test_acc", "train_acc", "gen_gap", "epoch", "lr"])
    assert t["test_acc"]["latent"]["ridge"]["r2"] > 1 - 1e-6  # planted in the latent
    assert t["test_acc"]["latent"]["ridge"]["kendall_tau"] > 0.999
    assert t["test_acc"]["W"]["ridge"]["r2"] < 0.2 and t["test_acc"]["sW"]["ridge"]["r2"] < 0.2  # not in the weights
    assert t["train_acc"]["sW"]["ridge"]["r2"] > 1 - 1e-6 and t["train_acc"]["W"]["ridge"]["r2"] > 1 - 1e-6
    assert t["train_acc"]["latent"]["ridge"]["r2"] < 0.2
    for rep in REPRESENTATIONS:
        assert t["lr"][rep]["ridge"]["r2"] < 0.1  # noise
    assert set(t["test_acc"]["sW"]) == {"ridge", "gbt"} and set(t["test_acc"]["W"]) == {"ridge"}
    assert g["skipped"] == ["seed: skipped, a random seed: there is no property to read off",
                            "optimizer: skipped, not numeric",
                            "batch_size: skipped, constant (32) on the training split"]
    for line in g["skipped"]:
        assert f"probe: toy/toy: {line}\n" in out
    df = pd.read_csv(tmp_path / "m" / "probe.csv")
    test_ids = set(table.id[table.split == "test"])
    assert len(df) == len(test_ids) * 5 * (len(REPRESENTATIONS) + 2) and set(df.id) == test_ids
    rows = df[(df.target == "test_acc") & (df.representation == "latent") & (df.probe == "ridge")].set_index("id")
    truth = table.set_index("id").test_acc
    np.testing.assert_allclose(rows.true, truth[rows.index], rtol=1e-5)
    np.testing.assert_allclose(rows.predicted, rows.true, atol=1e-4)
    assert r2_score(rows.true.to_numpy(), rows.predicted.to_numpy()) == pytest.approx(
        t["test_acc"]["latent"]["ridge"]["r2"], abs=1e-6)
    assert matplotlib.image.imread(tmp_path / "m" / "plots" / "probe_r2.png").shape[0] > 100


def _without_seconds(m):
    return {k: v for k, v in m.items() if k != "seconds"}


def _rewrite(shards, split, column, values):
    path = shards / "models.parquet"
    table = pd.read_parquet(path)
    table.loc[table.split == split, column] = values(int((table.split == split).sum()))
    table.to_parquet(path)


def test_nothing_is_chosen_on_the_test_split(planted, tmp_path):
    """Scramble the test split's targets: every choice (penalty, number of trees, val R²) and every
    prediction stays the same to the bit; only the test scores move. Scrambling val's moves the choices."""
    shards, latents = planted
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    before, df_before, _ = probe(FAST, copy, latents)
    again, df_again, _ = probe(FAST, copy, latents)
    assert _without_seconds(again) == _without_seconds(before) and df_again.equals(df_before)  # deterministic
    r = np.random.default_rng(11)
    _rewrite(copy, "test", "epoch", lambda n: r.permutation(n) + 1)
    for column in ("test_acc", "train_acc"):
        _rewrite(copy, "test", column, lambda n: r.uniform(size=n))
    after, df_after, _ = probe(FAST, copy, latents)

    def choices(m):
        return {(t, rep, pr): {k: v for k, v in f.items() if k not in ("r2", "kendall_tau")}
                for t, reps in m["groups"]["toy/toy"]["targets"].items() if t != "lr"
                for rep, fits in reps.items() if rep != "test_models" for pr, f in fits.items()}

    assert choices(after) == choices(before)
    assert np.array_equal(df_after.predicted, df_before.predicted)
    assert not np.array_equal(df_after.true, df_before.true)
    assert after["groups"]["toy/toy"]["targets"]["test_acc"]["latent"]["ridge"]["r2"] < 0.5
    _rewrite(copy, "val", "test_acc", lambda n: r.uniform(size=n))
    moved, _, _ = probe(FAST, copy, latents)
    assert choices(moved) != choices(after)


def test_a_zoo_without_metrics_or_hyperparameters_skips_every_target_and_writes_every_output(tmp_path, capsys):
    """Bare state_dicts: nothing recorded but the weights. One line per target, all three outputs written."""
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    r = np.random.default_rng(0)
    for i in range(40):
        torch.save({"w": torch.tensor(r.normal(size=6), dtype=torch.float32)}, zoo / f"net{i:02d}.pt")
    ingest(IngestParams(zoo_dir=str(zoo), format="state_dict", split=(0.5, 0.25, 0.25), workers=1),
           tmp_path / "shards", log=lambda *_: None)
    table = pd.read_parquet(tmp_path / "shards" / "models.parquet")
    write_latents(tmp_path / "latents.parquet", [
        {"id": row.id, "split": row.split, "task": row.task, "architecture": row.architecture,
         "layout_id": row.layout_id, "run_id": row.run_id, "epoch": None, "latent": np.zeros(3, np.float32),
         "behaviour_kl_encoder": None, "behaviour_kl": None} for row in table.itertuples()])
    args = _args(tmp_path, tmp_path / "shards", tmp_path / "latents.parquet")
    run(args)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "skipped" in line]
    assert lines == ["probe: unknown/unknown: test_acc: skipped, the zoo does not record it",
                     "probe: unknown/unknown: train_acc: skipped, the zoo does not record it",
                     ("probe: unknown/unknown: gen_gap: skipped, needs train_acc and test_acc of the same models, "
                      "which the zoo does not record"),
                     "probe: unknown/unknown: epoch: skipped, the zoo does not record it",
                     "probe: unknown/unknown: hyperparameters: skipped, the zoo records none"]
    m = json.loads(Path(args.metrics).read_text())
    assert m["groups"]["unknown/unknown"]["targets"] == {}
    assert Path(args.table).read_text().strip() == "group,id,run_id,epoch,target,representation,probe,true,predicted"
    assert matplotlib.image.imread(args.plot).shape[0] > 100  # a figure that says why it is empty


def test_latents_of_a_missing_split_stop_the_stage_with_one_line(planted, tmp_path, capsys):
    shards, latents = planted
    rows = pd.read_parquet(latents)
    rows[rows.split != "val"].to_parquet(tmp_path / "latents.parquet")
    assert run_command("probe", run, _args(tmp_path, shards, tmp_path / "latents.parquet")) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"weightvae probe: {tmp_path / 'latents.parquet'}: no latents of ")
    assert "val-split models" in err and "set encode.splits to ['train', 'val', 'test'] and rerun encode" in err
    with pytest.raises(ProbeError, match="no latents table; run the encode stage first"):
        probe(FAST, shards, tmp_path / "nothing.parquet")


def test_the_default_params_load():
    p = load_section(Path(__file__).resolve().parents[1] / "params.yaml", "probe", ProbeParams)
    assert p.alphas()[0] == pytest.approx(1e-3) and p.alphas()[-1] == pytest.approx(1e7) and p.gbt == ("sW", "latent")
