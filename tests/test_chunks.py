"""Chunked weights (`weightvae.chunks`) and the chunk codec (`codec: chunk`): exact round trips over random
layouts, the codec's full-rank identity, a training window that computes what the whole model computes on those
chunks, and the codec through train -> encode -> reconstruct on a one-architecture zoo."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from weightvae.chunks import Chunking
from weightvae.data import ZooDataset
from weightvae.encode import EncodeParams, encode
from weightvae.ingest import IngestParams, ingest
from weightvae.latents import read_latents
from weightvae.layout import Layout
from weightvae.model import VAE
from weightvae.nets import ChunkVAE, VAEConfig
from weightvae.params import ParamsError
from weightvae.reconstruct import ReconstructParams, reconstruct
from weightvae.train import TrainParams, train
from weightvae.zoo import ZooParams, build_zoo

shapes = st.lists(st.lists(st.integers(1, 9), min_size=1, max_size=3), min_size=1, max_size=5)


def _state_dict(tensor_shapes: list[list[int]], seed: int) -> dict[str, torch.Tensor]:
    """Random float tensors of these shapes, an integer buffer between them and a bool one at the end."""
    g = torch.Generator().manual_seed(seed)
    sd = {f"t{i}": torch.randn(*s, generator=g) for i, s in enumerate(tensor_shapes)}
    sd = dict(list(sd.items())[:1] + [("steps", torch.tensor(7, dtype=torch.int64))] + list(sd.items())[1:])
    sd["flags"] = torch.tensor([True, False])
    return sd


@settings(max_examples=60, deadline=None)
@given(shapes, st.integers(1, 40), st.integers(0, 2**16))
def test_cut_then_join_gives_the_state_dict_back_buffers_included(tensor_shapes, size, seed):
    sd = _state_dict(tensor_shapes, seed)
    layout = Layout.from_state_dict(sd)
    c = Chunking([e.numel for e in layout.learned], size)
    vec = layout.flatten(sd)
    chunks = c.cut(vec[None])
    assert chunks.shape == (1, sum(math.ceil(e.numel / size) for e in layout.learned), size)
    back = layout.unflatten(c.join(chunks)[0], layout.buffers(sd))
    assert back.keys() == sd.keys()
    assert all(torch.equal(back[k], sd[k]) and back[k].dtype == sd[k].dtype for k in sd)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=6), st.integers(1, 16))
def test_each_chunk_holds_one_tensor_in_order_and_only_the_last_one_of_a_tensor_is_padded(sizes, size):
    c = Chunking(sizes, size)
    x = torch.arange(1, c.length + 1, dtype=torch.float64)[None]  # value = 1 + position in the flat vector
    chunks = c.cut(x)[0]
    starts = [sum(sizes[:j]) for j in range(len(sizes))]
    for k in range(c.count):
        j, i = int(c.tensor[k]), int(c.index[k])
        lo = starts[j] + i * size  # the chunk's first value, inside tensor j
        n = min(size, sizes[j] - i * size)  # real values: all but in a tensor's last, partial chunk
        assert n >= 1
        assert chunks[k, :n].tolist() == list(range(lo + 1, lo + n + 1))
        assert chunks[k, n:].eq(0).all() and c.mask[k].sum() == n
    assert [int((c.tensor == j).sum()) for j in range(len(sizes))] == [math.ceil(n / size) for n in sizes]


def test_the_hand_worked_example():
    """Tensors of 5, 3 and 10 values in chunks of 4: a boundary inside the first, a partial last chunk in each,
    the third longer than two chunks."""
    c = Chunking([5, 3, 10], 4)
    chunks = c.cut(torch.arange(1.0, 19.0)[None])[0]
    assert chunks.tolist() == [[1, 2, 3, 4], [5, 0, 0, 0], [6, 7, 8, 0], [9, 10, 11, 12], [13, 14, 15, 16],
                               [17, 18, 0, 0]]
    assert c.tensor.tolist() == [0, 0, 1, 2, 2, 2] and c.index.tolist() == [0, 1, 0, 0, 1, 2]
    assert c.cut(torch.arange(1.0, 19.0)[None], torch.tensor([4, 1]))[0].tolist() == [[13, 14, 15, 16],
                                                                                        [5, 0, 0, 0]]


def test_bad_shapes_say_what_was_expected():
    c = Chunking([5, 3], 4)
    with pytest.raises(ValueError, match=r"expected flat vectors \[B, 8\], got \[2, 9\]"):
        c.cut(torch.zeros(2, 9))
    with pytest.raises(ValueError, match=r"expected chunks \[B, 3, 4\]"):
        c.join(torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="chunk size 0"):
        Chunking([5], 0)


def _codec(latent: int, max_len: int = 30) -> ChunkVAE:
    return ChunkVAE(VAEConfig(max_len=max_len, codec="chunk", chunk_size=4, chunk_latent=latent,
                              tensor_sizes=(5, 3, 20)))


def test_a_full_rank_chunk_codec_started_at_pca_is_the_identity_and_pads_past_the_layout():
    x = torch.nn.functional.pad(torch.randn(40, 28, generator=torch.Generator().manual_seed(0)), (0, 2))
    net = _codec(4)
    net.init_pca(x)
    post = net.encode(x)
    assert post.mean.shape == (40, 8 * 4)  # 2 + 1 + 5 chunks of 4 values, 4 latent values each
    recon = net.decode(post.mean)
    assert recon.shape == x.shape and torch.allclose(recon, x, atol=1e-5)
    # whole models go tensor by tensor through slices: the same numbers as chunk by chunk
    ids = torch.arange(8)
    mean, logvar = net.encode_chunks(net.chunking.cut(x[:, :28]), ids)
    assert torch.allclose(post.mean, mean.flatten(1), atol=1e-6) and torch.equal(post.logvar, logvar.flatten(1))
    z = torch.randn(5, 32)
    assert torch.allclose(net.decode(z)[:, :28], net.chunking.join(net.decode_chunks(z.reshape(5, 8, 4), ids)),
                          atol=1e-6)
    # codes are whitened: unit variance over the training vectors along kept directions
    per_chunk = post.mean.reshape(40, 8, 4)[:, net.chunking.mask.sum(1) == 4]  # chunks without padding
    assert torch.allclose(per_chunk.var(0, unbiased=True).mean(), torch.tensor(1.0), atol=0.35)


def test_a_compressing_codec_keeps_the_top_directions_of_each_tensor():
    """At 2 of 4 values per chunk the codec at init is each tensor's chunk PCA: its error is the variance
    left in the dropped directions, computed here by hand from the chunks' covariance."""
    x = torch.randn(200, 28, generator=torch.Generator().manual_seed(1)) * torch.linspace(0.1, 3, 28)
    net = ChunkVAE(VAEConfig(max_len=28, codec="chunk", chunk_size=4, chunk_latent=2, tensor_sizes=(5, 3, 20)))
    net.init_pca(x)
    err = (net.decode(net.encode(x).mean) - x).pow(2).sum().item()
    chunks = net.chunking.cut(x.double())
    expected = 0.0
    for j in range(3):
        r = chunks[:, net.chunking.tensor == j] - chunks[:, net.chunking.tensor == j].mean(0)
        r = r.reshape(-1, 4)
        eig = torch.linalg.eigvalsh(r.T @ r)  # ascending: the two smallest are dropped
        expected += eig[:2].sum().item()
    assert err == pytest.approx(expected, rel=1e-3)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=6), st.integers(1, 16), st.data())
def test_a_window_read_from_its_span_alone_is_those_chunks_of_the_whole_cut(sizes, size, data):
    c = Chunking(sizes, size)
    first = data.draw(st.integers(0, c.count - 1))
    count = data.draw(st.integers(1, c.count - first))
    x = torch.arange(1.0, c.length + 1)
    lo, hi = c.span(first, count)
    assert torch.equal(c.cut_span(x[lo:hi], first, count), c.cut(x[None])[0, first:first + count])
    assert 0 <= lo < hi <= c.length


def _vae(**loss) -> VAE:
    return VAE({"max_len": 28, "codec": "chunk", "chunk_size": 4, "chunk_latent": 3, "tensor_sizes": [5, 3, 20]},
               loss, layout_ids=["a"], n_layers=3, normalize=False)


def test_a_training_window_computes_what_the_whole_model_computes_on_its_chunks():
    torch.manual_seed(0)
    x = torch.randn(6, 28)
    vae = _vae(loss="mse")
    vae.net.init_pca(x)
    ids = torch.arange(8).expand(6, 8)  # a window of every chunk: the same numbers as whole models
    window = vae.loss_terms({"chunks": vae.net.chunking.cut(x), "chunk_ids": ids}, sample_posterior=False)
    whole = vae.loss_terms(x, sample_posterior=False)
    assert window["mse"].item() == pytest.approx(whole["mse"].item(), rel=1e-5)
    assert window["kl"].item() == pytest.approx(whole["kl"].item(), rel=1e-5)
    # windows of 2 chunks, at another place in each row: the loss on those chunks alone, by hand
    ids = torch.stack([torch.arange(k % 7, k % 7 + 2) for k in range(6)])
    chunks = torch.stack([vae.net.chunking.cut(x[k:k + 1], ids[k])[0] for k in range(6)])
    terms = vae.loss_terms({"chunks": chunks, "chunk_ids": ids}, sample_posterior=False)
    sq, n = 0.0, 0
    for k in range(6):
        for w in range(2):
            c = int(ids[k, w])
            j = int(vae.net.chunking.tensor[c])
            m = vae.net.chunking.mask[c]
            code = (chunks[k, w] - vae.net.centre[c]) * m @ vae.net.enc_weight[j]
            recon = (code @ vae.net.dec_weight[j] + vae.net.centre[c]) * m
            sq += float(((recon - chunks[k, w]) ** 2 * m).sum())
            n += int(m.sum())
    assert terms["mse"].item() == pytest.approx(sq / n, rel=1e-5)


def test_params_refuse_what_a_window_or_the_chunk_codec_cannot_do():
    with pytest.raises(ParamsError, match=r"train\.window.*behaviour_weight: 0"):
        TrainParams(codec="chunk", window=8, behaviour_weight=1.0)
    with pytest.raises(ParamsError, match=r"train\.window.*codec: chunk"):
        TrainParams(window=8)
    with pytest.raises(ParamsError, match=r"train\.chunk_latent.*<= train\.chunk_size \(64\)"):
        TrainParams(codec="chunk", chunk_latent=65)
    with pytest.raises(ParamsError, match=r"train\.encoder_probes"):
        TrainParams(codec="chunk", encoder_probes=True)


@pytest.fixture(scope="module")
def mlp_shards(tmp_path_factory):
    """A one-layout zoo: 16 MLP runs (2,410 weights each), 2 checkpoints each, ingested."""
    root = tmp_path_factory.mktemp("chunks")
    build_zoo(ZooParams(architectures={"mlp": 16}, epochs=2, save_epochs=(1, 2), group_size=16), root / "zoo",
              log=lambda *_: None)
    ingest(IngestParams(zoo_dir=str(root / "zoo"), workers=1), root / "shards", log=lambda *_: None)
    assert all(len(ZooDataset(root / "shards", s)) for s in ("train", "val", "test"))
    return root / "shards"


def test_a_window_sample_is_the_whole_vectors_chunks_and_windows_vary(mlp_shards):
    whole = ZooDataset(mlp_shards, "train")
    ds = ZooDataset(mlp_shards, "train", window=5, chunk_size=32)
    c = Chunking([2048, 32, 320, 10], 32)
    torch.manual_seed(0)
    firsts = set()
    for i in range(len(ds)):
        item = ds[i]
        ids = item["chunk_ids"]
        assert item["chunks"].shape == (5, 32) and torch.equal(ids, torch.arange(int(ids[0]), int(ids[0]) + 5))
        assert torch.allclose(item["chunks"], c.cut(whole.vector(i)[None], ids)[0], atol=1e-6)
        firsts.add(int(ids[0]))
    assert len(firsts) > 1


def test_the_chunk_codec_trains_on_windows_encodes_and_reconstructs(mlp_shards, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # DVCLive looks for a DVC repo in the working directory
    p = TrainParams(codec="chunk", chunk_size=32, chunk_latent=8, window=16, behaviour_weight=0.0, max_epochs=2,
                    batch_size=4, accelerator="cpu")
    train(p, mlp_shards, tmp_path / "vae.ckpt", tmp_path / "lightning", tmp_path / "live")
    model = VAE.from_export(str(tmp_path / "vae.ckpt"))
    # 2,410 weights: fc1.weight 2,048 (64 chunks), fc1.bias 32 (1), fc2.weight 320 (10), fc2.bias 10 (1)
    assert model.net.chunking.count == 76 and model.net.latent_shape == (76 * 8,)
    encode(EncodeParams(refine_steps=3, probe_count=32), mlp_shards, tmp_path / "vae.ckpt",
                     tmp_path / "latents.parquet")
    rows, z = read_latents(tmp_path / "latents.parquet")
    assert len(rows) == sum(len(ZooDataset(mlp_shards, s)) for s in ("train", "val", "test"))
    assert z.shape == (len(rows), 76 * 8) and torch.isfinite(z).all()
    out = tmp_path / "recon"
    reconstruct(ReconstructParams(splits=("test",), n_samples=2, sampler="kde"), mlp_shards, tmp_path / "vae.ckpt",
                tmp_path / "latents.parquet", out)
    test = ZooDataset(mlp_shards, "test")
    files = sorted((out / "test").glob("*.safetensors"))
    assert len(files) == len(test)
    sd = load_file(files[0])
    assert {k: tuple(v.shape) for k, v in sd.items()} == {"fc1.weight": (32, 64), "fc1.bias": (32,),
                                                          "fc2.weight": (10, 32), "fc2.bias": (10,)}


def test_the_chunk_codec_on_two_layouts_without_windows_is_one_error_naming_the_param(tiny_zoo, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    ingest(IngestParams(zoo_dir=str(tiny_zoo[0]), workers=1), tmp_path / "shards", log=lambda *_: None)
    with pytest.raises(ParamsError, match=r"train\.window: None .*these shards hold 2 layouts.*set train\.window"):
        train(TrainParams(codec="chunk", max_epochs=1, accelerator="cpu"), tmp_path / "shards",
              tmp_path / "vae.ckpt", tmp_path / "lightning", tmp_path / "live")
    assert not (tmp_path / "vae.ckpt").exists()
