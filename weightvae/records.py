"""Where reconstruct and controls put their records, so evaluate (and other readers) find them without
importing those stages, the codec and everything behind them.

    <recon>/<split>/<file_name(id)>     reconstructions, zoo file schema plus `source_id`
    <recon>/encoder/<split>/...         the same from the encoder's code alone (no refinement)
    <recon>/samples/*.pt                sampled networks, zoo file schema plus `sampler` (and `anchor_id`)
    <recon>/.../*.safetensors           each of those networks again (`weightvae.tensorfile`)
    <recon>/samples/pool.json           {pool_key(task, arch, layout): ids of the training models the
                                        sampler's kernels sit on}
    <controls>/<name>.pt                each control's refined networks (`weightvae.controls`):
                                        {"ids": model ids, "weights": one `[n, length]` real flat tensor per layout}
"""

from __future__ import annotations

from pathlib import Path

import torch

POOL_FILE = "pool.json"
CONTROLS = ("pca_refined", "random_refined")  # the controls stage's methods (`weightvae.controls`)


def file_name(model_id: str, suffix: str = ".pt") -> str:
    """A model id as a file name (ids may hold '/')."""
    return model_id.replace("/", "__") + suffix


def pool_key(task: str, arch: str, layout_id: str) -> str:
    """Key of a (task, architecture, layout) group in `samples/pool.json`."""
    return f"{task}/{arch}/{layout_id}"


def load_control(path: str | Path) -> dict[str, torch.Tensor]:
    """{model id: its refined network's real flat weights `[length]`} of one control file."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    return dict(zip(blob["ids"], [row for w in blob["weights"] for row in w], strict=True))
