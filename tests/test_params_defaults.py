"""Each params section's dataclass defaults are params.yaml's: `TrainParams()` in a notebook is the
pipeline's default, and a key dropped from params.yaml keeps its meaning."""

from pathlib import Path

import pytest

from weightvae.controls import ControlsParams
from weightvae.encode import EncodeParams
from weightvae.evaluate import EvaluateParams
from weightvae.generation import GenerationParams
from weightvae.generator import GeneratorParams
from weightvae.ingest import IngestParams
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
