import pytest
import torch

from weightvae.archs import build_model
from weightvae.canonical import GROUPS, canonicalize, random_permutation
from weightvae.shards import open_shard
from weightvae.tasks import get_task


@pytest.mark.parametrize("arch", sorted(GROUPS))
def test_canonicalisation_preserves_outputs_and_removes_permutations(arch, tiny_zoo):
    out, _ = tiny_zoo
    x = get_task("digits").x_test
    files = [f for f in sorted(out.glob("*.pt")) if f"-{arch}-" in f.name]
    assert files
    for f in files:
        sd = torch.load(f, weights_only=True)["state_dict"]
        model = build_model(arch)
        model.load_state_dict(sd)
        canon = canonicalize(arch, sd)
        assert any(not torch.equal(sd[k], canon[k]) for k in sd)  # it did reorder something
        other = build_model(arch)
        other.load_state_dict(canon)
        with torch.no_grad():
            a, b = model.eval()(x), other.eval()(x)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)  # summation order may differ: rounding only
        assert torch.equal(a.argmax(1), b.argmax(1))
        # idempotent, and any permuted copy of the network has the same canonical form
        assert all(torch.equal(canonicalize(arch, canon)[k], canon[k]) for k in sd)
        shuffled = random_permutation(arch, sd, torch.Generator().manual_seed(len(f.name)))
        assert any(not torch.equal(sd[k], shuffled[k]) for k in sd)
        moved = build_model(arch)
        moved.load_state_dict(shuffled)
        with torch.no_grad():
            torch.testing.assert_close(moved.eval()(x), a, rtol=1e-5, atol=1e-5)
        assert all(torch.equal(canonicalize(arch, shuffled)[k], canon[k]) for k in sd)


def test_ingest_canonicalize_writes_the_canonical_vectors(tiny_zoo, tmp_path):
    import numpy as np
    import pandas as pd

    from weightvae.ingest import IngestParams, ingest
    from weightvae.layout import Layout

    out, _ = tiny_zoo
    ingest(IngestParams(zoo_dir=str(out), canonicalize=True), tmp_path / "shards", log=lambda *_: None)
    table = pd.read_parquet(tmp_path / "shards" / "models.parquet")
    row = table[table.architecture == "cnn"].iloc[0]
    vec = open_shard(tmp_path / "shards", row.split, row.layout_id)[row.row]
    sd = torch.load(out / row.source_path, weights_only=True)["state_dict"]
    expected = Layout.from_state_dict(sd).flatten(canonicalize("cnn", sd))
    assert np.array_equal(vec[: len(expected)], expected.numpy())


# ---------------------------------------------------------------- registered architectures: groups traced


class _Cumsum(torch.nn.Module):
    """A hidden layer whose units are mixed by a cumulative sum: permuting them changes the function."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = torch.nn.Linear(13, 6), torch.nn.Linear(6, 5), torch.nn.Linear(5, 3)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)).cumsum(1))))


class _Branchy(torch.nn.Module):
    """Control flow on the data: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(13, 6), torch.nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return self.fc2(h) if h.sum() > 0 else -self.fc2(h)


@pytest.fixture
def registered(monkeypatch):
    """The user architectures of tests/user_nets.py and two awkward ones, registered for this test only."""
    import user_nets

    from weightvae import canonical
    from weightvae.archs import ARCHITECTURES, Architecture
    from weightvae.tasks import TASKS

    for name, (build, load, _) in user_nets.ZOOS.items():
        monkeypatch.setitem(ARCHITECTURES, name, Architecture(build))
        monkeypatch.setitem(TASKS, user_nets.TASKS[name], load)
    monkeypatch.setitem(ARCHITECTURES, "cumsum", Architecture(_Cumsum))
    monkeypatch.setitem(ARCHITECTURES, "branchy", Architecture(_Branchy))
    canonical._groups.cache_clear()
    yield user_nets
    canonical._groups.cache_clear()


def _resolved(groups):
    """GROUPS' `block = -1` (the flattened positions) as the number it stands for in the default CNN."""
    return [[(n, a, 4 if b == -1 else b) for n, a, b in g] for g in groups]


@pytest.mark.parametrize("arch", sorted(GROUPS))
def test_tracing_a_built_in_architecture_finds_the_groups_listed_by_hand(arch):
    from weightvae.units import trace_groups

    x = get_task("digits").x_train[:4]
    traced = [members for members, _ in trace_groups(build_model(arch), x)]
    assert traced == _resolved(GROUPS[arch])


def test_each_registered_example_gets_its_groups_and_keeps_its_outputs(registered):
    from weightvae.canonical import unit_groups

    expect = {"gelu_cnn": [["conv1.weight", "conv1.bias", "conv2.weight"], ["conv2.weight", "conv2.bias", "fc.weight"]],
              "tab_mlp": [["body.0.weight", "body.0.bias", "body.2.weight"]],
              # BatchNorm's four vectors go with the units they normalise
              "bn_mlp": [["body.0.weight", "body.0.bias", "body.1.weight", "body.1.bias", "body.1.running_mean",
                          "body.1.running_var", "body.3.weight"]],
              # the residual stream ties the input layer, LayerNorm, both sides of the block and the head
              "res_ln_mlp": [["inp.weight", "inp.bias", "norm.weight", "norm.bias", "block.weight", "block.weight",
                              "head.weight"]]}
    # the sort key: the producing layers' rows (a key from BatchNorm's scale and shift was measured no better:
    # docs/interop.md)
    keys = {"gelu_cnn": [["conv1.weight", "conv1.bias"], ["conv2.weight", "conv2.bias"]],
            "tab_mlp": [["body.0.weight", "body.0.bias"]], "bn_mlp": [["body.0.weight", "body.0.bias"]],
            "res_ln_mlp": [["inp.weight", "inp.bias", "block.weight"]]}
    for arch, names in expect.items():
        task = registered.TASKS[arch]
        groups = unit_groups(arch, registered.ZOOS[arch][2], task)
        assert [[n for n, _, _ in members] for members, _ in groups] == names, arch
        assert [list(key) for _, key in groups] == keys[arch], arch
        x = get_task(task).x_test
        for seed in range(3):  # trained-like weights: every tensor off its initial value
            model = build_model(arch, registered.ZOOS[arch][2]).eval()
            gen = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for t in model.state_dict().values():
                    if t.is_floating_point():
                        t.add_(torch.rand(t.shape, generator=gen))
            sd = model.state_dict()
            canon = canonicalize(arch, sd, registered.ZOOS[arch][2], task)
            assert any(not torch.equal(sd[k], canon[k]) for k in sd), arch
            shuffled = random_permutation(arch, sd, gen, registered.ZOOS[arch][2], task)
            with torch.no_grad():
                a = model(x)
                for other in (canon, shuffled):
                    m = build_model(arch, registered.ZOOS[arch][2]).eval()
                    m.load_state_dict(other)
                    torch.testing.assert_close(m(x), a, rtol=1e-4, atol=1e-4)
            again = canonicalize(arch, shuffled, registered.ZOOS[arch][2], task)
            assert all(torch.equal(again[k], canon[k]) for k in sd), arch  # one representative per class


def test_units_an_op_mixes_or_control_flow_hides_are_left_in_place_and_said_why(registered):
    from weightvae.canonical import unit_groups, why_not

    # fc1's units are mixed by cumsum (left alone); fc2's pass through relu to fc3 (sorted)
    groups = unit_groups("cumsum", {}, "wine")
    assert [[n for n, _, _ in members] for members, _ in groups] == [["fc2.weight", "fc2.bias", "fc3.weight"]]
    assert unit_groups("branchy", {}, "wine") == []
    assert why_not("branchy", {}, "wine").startswith("its forward cannot be traced by torch.fx (TraceError")
    sd = _Branchy().state_dict()
    assert all(torch.equal(canonicalize("branchy", sd, {}, "wine")[k], sd[k]) for k in sd)  # stored order kept
    assert why_not("nosuch", {}, "wine") == "architecture 'nosuch' on task 'wine' is neither built in nor registered"


class _Normed(torch.nn.Module):
    """fc2 under weight_norm keeps no `fc2.weight` in its state_dict."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(13, 6), torch.nn.Linear(6, 5)
        self.fc3, self.fc4 = torch.nn.Linear(5, 4), torch.nn.Linear(4, 3)
        torch.nn.utils.parametrizations.weight_norm(self.fc2)

    def forward(self, x):
        return self.fc4(torch.tanh(self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))))


def test_a_parametrised_layer_is_left_alone_not_a_crash(registered, monkeypatch):
    """The units fc2 reads and writes stay in place; fc3's, between plain layers, are sorted."""
    from weightvae.archs import ARCHITECTURES, Architecture
    from weightvae.canonical import unit_groups

    monkeypatch.setitem(ARCHITECTURES, "normed", Architecture(_Normed))
    groups = unit_groups("normed", {}, "wine")
    assert [[n for n, _, _ in members] for members, _ in groups] == [["fc3.weight", "fc3.bias", "fc4.weight"]]
