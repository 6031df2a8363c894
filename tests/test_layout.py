import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from weightvae.archs import build_model
from weightvae.layout import Layout


class BNNet(nn.Module):
    """BatchNorm (integer `num_batches_tracked`), a float16 and a bfloat16 tensor, a bool buffer."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3).half()
        self.register_buffer("scale", torch.randn(3, dtype=torch.bfloat16))
        self.register_buffer("flags", torch.tensor([True, False, True]))


def _bn_state_dict():
    m = BNNet()
    m.bn.train()
    m.bn(torch.randn(8, 4, 5, 5))  # running stats move and num_batches_tracked becomes 1
    m.bn.num_batches_tracked += 41
    return m.state_dict()


def _through_json(layout, buffers):
    """What ingest stores (JSON) is what comes back."""
    return Layout.from_dict(json.loads(json.dumps(layout.to_dict()))), json.loads(json.dumps(buffers))


@pytest.mark.parametrize("make", [lambda: build_model("cnn", {}).state_dict(),
                                  lambda: build_model("mlp", {}).state_dict(),
                                  _bn_state_dict], ids=["cnn", "mlp", "batchnorm-fp16-bf16"])
def test_state_dict_to_vector_and_back_is_bit_exact(make):
    sd = make()
    layout = Layout.from_state_dict(sd)
    vec, buffers = layout.flatten(sd), layout.buffers(sd)
    assert vec.dtype == torch.float32 and vec.shape == (layout.length,)
    assert layout.length == sum(t.numel() for t in sd.values() if t.is_floating_point())
    layout2, buffers2 = _through_json(layout, buffers)
    assert layout2 == layout and layout2.layout_id == layout.layout_id
    back = layout2.unflatten(vec.clone(), buffers2)
    assert list(back) == list(sd)  # canonical order: the state_dict's own
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
        assert torch.equal(back[k], v), k


def test_integer_and_bool_buffers_stay_out_of_the_vector():
    sd = _bn_state_dict()
    layout = Layout.from_state_dict(sd)
    buffers = layout.buffers(sd)
    assert set(buffers) == {"bn.num_batches_tracked", "flags"}
    assert buffers["bn.num_batches_tracked"] == {"dtype": "int64", "shape": [], "data": [42]}
    assert [e.name for e in layout.learned] == [k for k, v in sd.items() if v.is_floating_point()]
    assert all(e.offset == -1 for e in layout.entries if not e.learned)
    with pytest.raises(ValueError, match="is missing"):
        layout.unflatten(layout.flatten(sd), {})


def test_layout_id_is_stable_and_covers_names_shapes_dtypes_and_order():
    sd = build_model("cnn", {}).state_dict()
    # pinned: ids are stored in shards and exported models, so they must never drift
    assert Layout.from_state_dict(sd).layout_id == "8368dcb6efaeaf34"
    assert Layout.from_state_dict(build_model("cnn", {}).state_dict()).layout_id == "8368dcb6efaeaf34"
    variants = [
        dict(reversed(list(sd.items()))),
        {**sd, "fc2.bias": sd["fc2.bias"].double()},
        {**sd, "fc2.bias": sd["fc2.bias"].view(2, 5)},
        {("x" + k if k == "fc2.bias" else k): v for k, v in sd.items()},
    ]
    ids = {Layout.from_state_dict(v).layout_id for v in variants}
    assert len(ids) == 4 and "8368dcb6efaeaf34" not in ids


def test_mismatched_state_dicts_and_vectors_are_refused():
    sd = build_model("mlp", {}).state_dict()
    layout = Layout.from_state_dict(sd)
    with pytest.raises(ValueError, match="layout"):
        layout.flatten({**sd, "fc2.bias": torch.zeros(2, 5)})
    with pytest.raises(ValueError, match="needs 2410"):
        layout.unflatten(torch.zeros(2411))
    d = layout.to_dict()
    d["entries"][0]["shape"] = [64, 32]
    with pytest.raises(ValueError, match="hash"):
        Layout.from_dict(d)
    with pytest.raises(ValueError, match="not a tensor"):
        Layout.from_state_dict({"w": [1.0, 2.0]})
    with pytest.raises(ValueError, match="complex"):
        Layout.from_state_dict({"w": torch.zeros(2, dtype=torch.complex64)})


_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.uint8, torch.bool]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.lists(st.integers(0, 4), max_size=3), st.sampled_from(_DTYPES), st.integers(0, 2**31)),
                min_size=1, max_size=5))
def test_round_trip_holds_for_any_shapes_and_dtypes(specs):
    sd = {}
    for i, (shape, dtype, seed) in enumerate(specs):
        g = torch.Generator().manual_seed(seed)
        t = torch.randn(shape, generator=g) * 100
        sd[f"t{i}"] = t.to(dtype) if dtype.is_floating_point else t.to(torch.int64).to(dtype)
    layout = Layout.from_state_dict(sd)
    back = Layout.from_dict(layout.to_dict()).unflatten(layout.flatten(sd), json.loads(json.dumps(layout.buffers(sd))))
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
