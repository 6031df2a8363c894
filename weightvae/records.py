"""A network's record in the zoo file schema (`zoo_record`, the one place that builds it: zoo, legacy import,
export, reconstruct and generate all call it), and where reconstruct and controls put their records, so
evaluate (and other readers) find them without importing those stages, the codec and everything behind them.

    {"state_dict": {name: tensor}, "model_properties": {"format_version", "run_id", "task",
     "architecture": {"name", "kwargs"}, ...}}   the zoo file schema (README "Bring your own zoo")

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
from typing import Any

import torch

from weightvae import FORMAT_VERSION

POOL_FILE = "pool.json"
CONTROLS = ("pca_refined", "random_refined")  # the controls stage's methods (`weightvae.controls`)


def file_name(model_id: str, suffix: str = ".pt") -> str:
    """A model id as a file name (ids may hold '/')."""
    return model_id.replace("/", "__") + suffix


def pool_key(task: str, arch: str, layout_id: str) -> str:
    """Key of a (task, architecture, layout) group in `samples/pool.json`."""
    return f"{task}/{arch}/{layout_id}"


def group_key(task: str, arch: str, layout_id: str, several_layouts: bool) -> str:
    """Key of a (task, architecture, layout) group in eval.json and probe.json: `task/arch`, and `/layout_id`
    where the architecture comes in several layouts (widths)."""
    return f"{task}/{arch}" + (f"/{layout_id}" if several_layouts else "")


def load_control(path: str | Path) -> dict[str, torch.Tensor]:
    """{model id: its refined network's real flat weights `[length]`} of one control file."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    return dict(zip(blob["ids"], [row for w in blob["weights"] for row in w], strict=True))


def zoo_record(state_dict: dict[str, torch.Tensor], run_id: str, task: str, architecture: str,
               kwargs: dict[str, Any], **properties: Any) -> dict[str, Any]:
    """A network in the zoo file schema: its state_dict and `model_properties` (format version, run id, task,
    architecture name and kwargs, then `properties` in the order given: seed, epoch, metrics, ...)."""
    return {"state_dict": state_dict, "model_properties": {
        "format_version": FORMAT_VERSION, "run_id": run_id, "task": task,
        "architecture": {"name": architecture, "kwargs": kwargs}, **properties}}


def shard_record(state_dict: dict[str, torch.Tensor], props: dict[str, Any], **properties: Any) -> dict[str, Any]:
    """`zoo_record` of a network decoded for an ingested model whose shard properties (`ZooDataset.properties`)
    are `props`: its run id, task, architecture, epoch and layout, then `properties`."""
    return zoo_record(state_dict, props["run_id"], props["task"], props["architecture"], props["arch_kwargs"],
                      epoch=props.get("epoch"), layout_id=props["layout_id"], **properties)

