"""Each params section's dataclass defaults are params.yaml's: `TrainParams()` in a notebook is the
pipeline's default, and a key dropped from params.yaml keeps its meaning."""

from dataclasses import fields
from pathlib import Path

import pytest

from weightvae.config import latent_size
from weightvae.controls import ControlsParams
from weightvae.encode import EncodeParams
from weightvae.evaluate import EvaluateParams
from weightvae.generation import GenerationParams
from weightvae.generator import GeneratorParams
from weightvae.ingest import IngestParams
from weightvae.model import VAE, LossConfig
from weightvae.nets import FunctionAutoencoder, VAEConfig, vae_kwargs
from weightvae.params import load_section
from weightvae.reconstruct import ReconstructParams
from weightvae.train import TrainParams
from weightvae.zoo import ZooParams

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {"zoo": ZooParams, "ingest": IngestParams, "train": TrainParams, "encode": EncodeParams,
            "reconstruct": ReconstructParams, "evaluate": EvaluateParams, "controls": ControlsParams,
            "generator": GeneratorParams, "generation": GenerationParams}


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_dataclass_defaults_are_params_yaml(section):
    assert load_section(ROOT / "params.yaml", section, SECTIONS[section]) == SECTIONS[section]()


def test_the_codec_configs_take_their_defaults_from_train():
    """One default per setting: `VAEConfig` and `LossConfig` read `TrainParams`' (a planted `kl_weight: float =
    1e-4` in LossConfig fails this)."""
    p = TrainParams()
    for cfg in (VAEConfig(max_len=1706), LossConfig()):
        shared = [f.name for f in fields(cfg) if hasattr(p, f.name) and f.name != "latent_dim"]
        assert len(shared) >= 9
        assert {k: getattr(cfg, k) for k in shared} == {k: getattr(p, k) for k in shared}
    assert VAEConfig(max_len=1706).latent_dim == latent_size(p, 1706) == 106  # latent_dim: auto at compression 16


def test_a_codec_built_in_a_notebook_is_the_pipelines_default():
    model = VAE(vae_kwargs(VAEConfig(max_len=1706, cond_dim=128 * 10)))
    assert isinstance(model.net, FunctionAutoencoder) and model.net.cfg.hidden == TrainParams().hidden
    assert model.latent_size() == 106 and model.loss_cfg == LossConfig()
    with pytest.raises(ValueError, match=r"cond_dim=0\).*probe inputs x classes"):
        VAE(vae_kwargs(VAEConfig(max_len=1706)))
