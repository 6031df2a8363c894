import pytest
import torch

from weightvae.zoo import ZooParams, build_zoo


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


TINY_ZOO = ZooParams(architectures={"cnn": 3, "mlp": 2}, epochs=2, save_epochs=(1, 2), group_size=2)


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    """A 5-run, 10-checkpoint zoo with both architectures, built once per test session."""
    out = tmp_path_factory.mktemp("zoo") / "weights"
    summary = build_zoo(TINY_ZOO, out, log=lambda *_: None)
    return out, summary
