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
