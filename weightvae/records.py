"""Where reconstruct puts its records, so evaluate (and other readers) find them without
importing reconstruct, the VAE and everything behind them.

    <recon>/<split>/<file_name(id)>     reconstructions, zoo file schema plus `source_id`
    <recon>/samples/*.pt                sampled networks, zoo file schema plus `sampler` (and `anchor_id`)
    <recon>/.../*.safetensors           each of those networks again (`weightvae.tensorfile`)
    <recon>/samples/pool.json           {pool_key(task, arch, layout): ids of the training models the
                                        sampler's kernels sit on}
"""

from __future__ import annotations

POOL_FILE = "pool.json"


def file_name(model_id: str, suffix: str = ".pt") -> str:
    """A model id as a file name (ids may hold '/')."""
    return model_id.replace("/", "__") + suffix


def pool_key(task: str, arch: str, layout_id: str) -> str:
    """Key of a (task, architecture, layout) group in `samples/pool.json`."""
    return f"{task}/{arch}/{layout_id}"
