"""The latent generator and the critics' protocol: novelty figures against hand-computed values (a copy scores 0,
a permuted copy scores 0 in the permutation-aware distance), prompt alignment by hand, and a generator that trains
to the same bytes twice, serves its prompts and refuses a group it does not know."""

import io

import numpy as np
import pytest
import torch

from weightvae import metrics as M
from weightvae.archs import build_model
from weightvae.canonical import canonicalize, random_permutation
from weightvae.generation import Reference, is_novel, prompt_alignment, summary
from weightvae.generator import (
    GeneratorError,
    GeneratorParams,
    LatentGenerator,
    prompted_codes,
    train_generator,
    zoo_prompts,
)
from weightvae.layout import Layout


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_error_overlap_by_hand():
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    a = torch.tensor([[0, 1, 2, 0, 0, 5]])  # wrong on {3, 4}
    b = torch.tensor([[0, 1, 2, 0, 0, 5],  # wrong on {3, 4}: a copy, overlap 1
                      [9, 1, 2, 0, 4, 5],  # wrong on {0, 3}: 1 shared of 3 -> 1/3
                      [0, 1, 2, 3, 4, 5]])  # wrong on nothing: 0 of 2 -> 0
    assert M.best_error_overlap(a, b, y).tolist() == [1.0]
    assert M.best_error_overlap(a, b[1:], y).tolist() == pytest.approx([1 / 3])
    assert M.best_error_overlap(a, b[2:], y).tolist() == [0.0]
    assert M.best_error_overlap(b[2:], b[2:], y).tolist() == [1.0]  # two perfect networks: the same (empty) errors


def _networks(n: int) -> tuple[Layout, torch.Tensor]:
    """`n` random digits CNNs in canonical unit order, as ingest stores them: (layout, `[n, L]`)."""
    torch.manual_seed(0)
    sds = [canonicalize("cnn", build_model("cnn").state_dict()) for _ in range(n)]
    layout = Layout.from_state_dict(sds[0])
    return layout, torch.stack([layout.flatten(sd) for sd in sds])


def test_a_copy_and_a_permuted_copy_are_at_distance_zero_and_overlap_fully():
    from weightvae.tasks import get_task

    layout, train = _networks(3)
    data = get_task("digits")
    ref = Reference("cnn", {}, layout, {}, train, torch.ones(layout.length), data.x_test[:64], data.y_test[:64])
    shuffle = torch.Generator().manual_seed(1)
    permuted = layout.flatten(random_permutation("cnn", layout.unflatten(train[1], {}), shuffle))
    assert not torch.equal(permuted, train[1])  # far away as stored ...
    j = ref.judge(torch.stack([train[0], permuted]))
    assert j["distance"].tolist() == [0.0, 0.0]  # ... and nowhere once put in canonical order
    assert j["error_overlap"].tolist() == [1.0, 1.0]
    assert j["agreement"].tolist() == [1.0, 1.0]
    # a network that is not a copy: its distance is to its nearest, by hand
    other = _networks(4)[1][3]
    assert ref.judge(other[None])["distance"].item() == pytest.approx((train - other).double().norm(dim=1).min().item())


def test_summary_and_prompt_alignment_by_hand():
    fresh = {"acc": torch.tensor([0.8, 1.0]), "distance": torch.tensor([2.0, 4.0]),
             "error_overlap": torch.tensor([0.5, 0.5]), "agreement": torch.tensor([0.9, 0.9])}
    copies = {"acc": torch.tensor([0.9, 0.9]), "distance": torch.tensor([0.0, 0.0]),
              "error_overlap": torch.tensor([1.0, 1.0]), "agreement": torch.tensor([1.0, 1.0])}
    s = summary(copies, fresh)
    assert s["acc_ratio_vs_fresh"] == pytest.approx(1.0)
    assert s["weight_novelty_vs_fresh"] == 0.0 and s["functional_novelty_vs_fresh"] == 0.0
    assert summary(fresh, fresh)["weight_novelty_vs_fresh"] == 1.0
    assert is_novel(summary(fresh, fresh), summary(fresh, fresh)) and not is_novel(s, summary(fresh, fresh))
    # an easy task: the fresh runs miss exactly what some training network misses -> no ratio, the medians compared
    easy = {**fresh, "error_overlap": torch.tensor([1.0, 1.0, 0.5])}
    s_easy = summary(copies, easy)
    assert s_easy["functional_novelty_vs_fresh"] is None and s_easy["weight_novelty_vs_fresh"] == 0.0
    far = {**copies, "distance": torch.tensor([3.0, 3.0])}
    assert is_novel(summary(far, easy), summary(easy, easy)) and not is_novel(s_easy, summary(easy, easy))
    a = prompt_alignment(np.array([0.2, 0.4, 0.6]), np.array([0.3, 0.4, 0.5]))
    assert a["prompt_mae"] == pytest.approx(0.2 / 3)
    assert a["prompt_r2"] == pytest.approx(1 - 0.02 / 0.02)  # SS_res 0.02, SS_tot of achieved 0.02


def _codes(n: int = 256) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """Codes whose first value is their accuracy (scaled), two groups apart in the second."""
    g = torch.Generator().manual_seed(0)
    acc = torch.rand(n, generator=g)
    z = torch.randn(n, 4, generator=g) * 0.05
    z[:, 0] += 4 * acc
    groups = ["a/mlp/00000000" if i % 2 else "b/mlp/00000000" for i in range(n)]
    z[:, 1] += torch.tensor([3.0 if i % 2 else -3.0 for i in range(n)])
    return z, groups, acc


P = GeneratorParams(hidden=64, depth=2, steps=1500, batch_size=64, sample_steps=16, guidance=1.0)


def test_training_gives_the_same_bytes_twice_and_the_export_samples_alike(tmp_path):
    z, groups, acc = _codes()
    blobs = []
    for _ in range(2):
        model, metrics = train_generator(z, groups, acc, P, log=lambda *_: None)
        buf = io.BytesIO()
        torch.save(model.export(), buf)
        blobs.append(buf.getvalue())
    assert blobs[0] == blobs[1]
    (tmp_path / "g.pt").write_bytes(blobs[0])
    loaded = LatentGenerator.load(tmp_path / "g.pt")
    a = model.sample("a/mlp/00000000", 8, 0.5, generator=torch.Generator().manual_seed(3), steps=8)
    b = loaded.sample("a/mlp/00000000", 8, 0.5, generator=torch.Generator().manual_seed(3), steps=8)
    assert torch.equal(a, b)
    assert metrics["groups"] == ["a/mlp/00000000", "b/mlp/00000000"]
    assert metrics["accuracy_range"]["a/mlp/00000000"] == pytest.approx(
        [acc[1::2].min().item(), acc[1::2].max().item()])


def test_prompts_and_groups_move_the_samples_where_asked():
    z, groups, acc = _codes()
    model, _ = train_generator(z, groups, acc, P, log=lambda *_: None)
    g = torch.Generator().manual_seed(0)
    low = model.sample("a/mlp/00000000", 64, 0.2, steps=16, generator=g)
    high = model.sample("a/mlp/00000000", 64, 0.8, steps=16, generator=g)
    assert low[:, 0].mean() / 4 == pytest.approx(0.2, abs=0.1)  # the first value codes the accuracy
    assert high[:, 0].mean() / 4 == pytest.approx(0.8, abs=0.1)
    assert model.sample("b/mlp/00000000", 64, 0.5, steps=16, generator=g)[:, 1].mean() < -2  # its own group
    assert low[:, 1].mean() > 2
    with pytest.raises(GeneratorError, match="'c/mlp/00000000' is not one the generator was trained on"):
        model.sample("c/mlp/00000000", 1)


def test_a_prompted_code_is_the_draw_whose_network_is_nearest_its_prompt():
    """Of `select_from` draws per prompt, the one whose accuracy (here the first value / 4, what the test codes say)
    is nearest: each kept code is one of its own prompt's draws, picked by hand; with one draw, the flow's as is."""
    z, groups, acc = _codes()
    model, _ = train_generator(z, groups, acc, P, log=lambda *_: None)
    prompts, k, name = torch.tensor([0.2, 0.5, 0.8]), 5, "a/mlp/00000000"

    def accuracy(codes):
        return codes[:, 0].double() / 4

    picked = prompted_codes(model, name, prompts, GeneratorParams(select_from=k), 2.0, 8,
                            torch.Generator().manual_seed(4), accuracy)
    draws = model.sample(name, 3 * k, prompts.repeat_interleave(k), 2.0, 8, torch.Generator().manual_seed(4),
                         1.0).view(3, k, -1)
    for i, a in enumerate(prompts.tolist()):
        best = min(range(k), key=lambda j: abs(float(draws[i, j, 0]) / 4 - a))
        assert torch.equal(picked[i], draws[i, best])
    assert (accuracy(picked) - prompts).abs().max() <= (accuracy(draws.flatten(0, 1)).view(3, k)
                                                         - prompts[:, None]).abs().max()
    first = prompted_codes(model, name, prompts, GeneratorParams(select_from=1), 2.0, 8,
                           torch.Generator().manual_seed(4), lambda c: 1 / 0)  # one draw: nothing is run
    assert torch.equal(first, model.sample(name, 3, prompts, 2.0, 8, torch.Generator().manual_seed(4), 1.0))


def test_zoo_prompts_come_from_the_training_runs_final_checkpoints():
    import pandas as pd

    train = pd.DataFrame({"run_id": ["r1", "r1", "r2", "r2"], "epoch": [1, 2, 1, 2],
                          "test_acc": [0.1, 0.9, 0.2, 0.8]})
    prompts = zoo_prompts(train, 100, torch.Generator().manual_seed(0))
    assert sorted(set(prompts.tolist())) == pytest.approx([0.8, 0.9])
    assert zoo_prompts(train.assign(test_acc=None), 3) is None
