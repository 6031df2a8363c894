"""Train the weight VAE with Lightning: seeded, deterministic on CPU, logged with DVCLive.

Scale-out is Lightning's: `strategy: ddp` with `devices: 2` runs two CPU processes (gloo)
and Lightning's distributed sampler gives each rank a disjoint part of the data;
`accelerator: auto` uses a GPU when there is one. There is no CUDA-only code path.

Outputs: a self-describing export (`VAE.export()`: format version, hyperparameters,
state_dict) at `--out`, Lightning's own checkpoints (best and last, for `resume`) in
`--ckpt-dir`, and DVCLive's metrics and plots in `--live-dir`.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch

from weightvae.config import TrainParams, resolve_latent
from weightvae.io import atomic_path, write_json
from weightvae.params import INPUTS, add_inputs, load_section, require

#: the checkpoints train writes in `--ckpt-dir` (`<name>.ckpt`): the only files there a fresh run removes
CHECKPOINTS = ("best", "last")


def functional_info(shards: str | Path, layouts: dict[str, Any],
                    log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """`task/layout_id` -> {"arch", "kwargs", "task", "layout"[, "buffers"]} for every (task, layout) whose
    networks weightvae can run: a built-in or registered architecture (`registry:` in params.yaml) on a built-in
    or registered task; any `nn.Module` runs through `weightvae.functional`. The behavioural term, the
    function-aware encoder and latent refinement need this; each group left out gets one line through `log`
    saying why, so none of them is silently off. `buffers`: the integer buffers (BatchNorm's
    `num_batches_tracked`) of the group's first network, only where the layout has some."""
    import pandas as pd

    from weightvae.archs import ARCHITECTURES
    from weightvae.model import function_key
    from weightvae.registry import ENABLE_HINT
    from weightvae.tasks import TASKS

    columns = ["layout_id", "architecture", "arch_kwargs", "task", "buffers"]
    table = pd.read_parquet(Path(shards) / "models.parquet", columns=columns)
    out = {}
    for (task, lid), rows in table.groupby(["task", "layout_id"], sort=True):
        arch = rows.architecture.iloc[0]
        why = None
        if rows.architecture.nunique() > 1:
            why = f"architectures {sorted(rows.architecture.unique())} share its layout"
        elif arch not in ARCHITECTURES and task not in TASKS:
            why = f"task {task!r} and architecture {arch!r} are not registered ({ENABLE_HINT})"
        elif arch not in ARCHITECTURES:
            why = f"architecture {arch!r} is not registered ({ENABLE_HINT})"
        elif task not in TASKS:
            why = f"task {task!r} is not registered ({ENABLE_HINT})"
        if why:
            log(f"train: behavioural term, function-aware encoder and latent refinement off for {task}/{arch} "
                f"(layout {lid}): {why}; its networks train on the weight loss alone and keep the encoder's codes")
            continue
        info = {"arch": arch, "kwargs": json.loads(rows.arch_kwargs.iloc[0] or "{}"), "task": task,
                "layout": layouts[lid]}
        buffers = json.loads(rows.buffers.iloc[0] or "{}")
        if buffers:
            info["buffers"] = buffers
        out[function_key(task, lid)] = info
    return out


def build_module(p: TrainParams, max_len: int, layout_ids: list[str], n_layers: int,
                 functional: dict[str, dict[str, Any]] | None = None,
                 tensor_sizes: tuple[Sequence[int], Sequence[int]] = ((), ())):
    """The Lightning module for these params; the chunk codec also needs its layouts' `tensor_sizes` (numel of
    every learned tensor, layout after layout, and how many tensors each layout has)."""
    from weightvae.model import VAE
    from weightvae.nets import VAEConfig, vae_kwargs
    from weightvae.tasks import get_task

    p = resolve_latent(p, max_len)  # callers outside `train` may pass latent_dim: auto (train resolves it first)
    # the network's outputs on the probes, flat: what encoder_probes feeds the encoder, what function_code codes;
    # a task with fewer training inputs than train.probe_count has them all as probes (`probe_inputs`)
    signature = max((min(p.probe_count, len(get_task(f["task"]).x_train)) * get_task(f["task"]).num_classes
                     for f in (functional or {}).values()), default=0)
    cond_dim = signature if p.encoder_probes or p.codec == "function" else 0
    function_dim = signature if p.function_code else 0
    if p.codec == "conv" and p.preset == "d2nwg":
        cfg = VAEConfig.d2nwg(max_len)
    else:
        cfg = VAEConfig(max_len=max_len, codec=p.codec, channels=tuple(p.channels),
                        blocks_per_level=p.blocks_per_level, latent_dim=p.latent_dim,
                        gradient_checkpointing=p.gradient_checkpointing, cond_dim=cond_dim, latent=p.latent,
                        latent_channels=p.latent_channels, chunk_size=p.chunk_size, chunk_latent=p.chunk_latent,
                        tensor_sizes=tuple(tensor_sizes[0]), layout_tensors=tuple(tensor_sizes[1]),
                        tensor_scales=p.tensor_scales, function_code=p.function_code, function_dim=function_dim,
                        hidden=p.hidden)
    loss = {"loss": p.loss, "kl_weight": p.kl_weight, "learning_rate": p.learning_rate,
            "weight_decay": p.weight_decay, "input_noise": p.input_noise, "latent_noise": p.latent_noise,
            "behaviour_weight": p.behaviour_weight, "probe_count": p.probe_count,
            "encoder_probes": bool(cond_dim), "behaviour_batch": p.behaviour_batch, "lr_schedule": p.lr_schedule}
    return VAE(vae_kwargs(cfg), loss, layout_ids=layout_ids, n_layers=n_layers, normalize=p.normalize,
               functional=functional)


def scale_group_sizes(layout: dict[str, Any], by: str) -> tuple[int, ...]:
    """`tensor_scales`: the lengths of the consecutive groups of the flat vector that each get a log-std and mean.
    `tensor`: each learned tensor. `unit`: each slice of a learned tensor along its first dimension (a Linear or
    Conv weight's output unit, its incoming weights: row-major, so contiguous), a 1-D tensor (a bias) one group."""
    sizes: list[int] = []
    for e in layout["entries"]:
        if e["learned"]:
            rows = e["shape"][0] if by == "unit" and len(e["shape"]) >= 2 and e["numel"] else 1
            sizes += [e["numel"] // rows] * rows
    return tuple(sizes)


def tensor_sizes(layouts: dict[str, Any], p: TrainParams) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """For the chunk codec: numel of every learned tensor of the layouts (sorted by id), one layout after the
    other, and the number of tensors of each (one layout: `()`, as before joint zoos). The linear codec with
    `tensor_scales`: its one layout's scale groups (`scale_group_sizes`). Other codecs: `((), ())`."""
    p = resolve_latent(p, max((lay["length"] for lay in layouts.values()), default=1))
    if p.codec == "linear" and p.tensor_scales:
        require(len(layouts) == 1, "train.tensor_scales", True,
                f"these shards hold {len(layouts)} layouts and the linear codec pads them to one length, so a "
                "weight has no one tensor: set train.tensor_scales: false (or train one layout)")
        (layout,) = layouts.values()
        sizes = scale_group_sizes(layout, p.scale_groups)
        what = "learned tensors" if p.scale_groups == "tensor" else "units and 1-D tensors (train.scale_groups: unit)"
        func = f"the {p.function_code} of train.function_code, " if p.function_code else ""
        require(p.latent_dim > p.function_code + 2 * len(sizes), "train.latent_dim", p.latent_dim,
                f"with train.tensor_scales the latent holds {func}2 values for each of the {len(sizes)} {what} "
                f"plus the code: need > {p.function_code + 2 * len(sizes)}")
        return sizes, ()
    if p.codec != "chunk":
        return (), ()
    require(len(layouts) == 1 or p.window is not None, "train.window", p.window,
            f"these shards hold {len(layouts)} layouts: the chunk codec trains a joint zoo on windows of chunks, "
            "so no model is padded to the longest (set train.window, e.g. 64)")
    learned = [[e["numel"] for e in layouts[lid]["entries"] if e["learned"]] for lid in sorted(layouts)]
    return tuple(n for sizes in learned for n in sizes), tuple(len(s) for s in learned) if len(learned) > 1 else ()


def check_function_code(p: TrainParams, layouts: dict[str, Any], functional: dict[str, dict[str, Any]]) -> None:
    """`train.function_code` codes one kind of network's predictions: one layout, run on one task."""
    if not p.function_code:
        return
    require(len(layouts) == 1 and len(functional) == 1, "train.function_code", p.function_code,
            f"the function code needs one layout that weightvae can run on one task; these shards hold "
            f"{len(layouts)} layout(s) and {len(functional)} runnable task/layout group(s) (the lines above say "
            "why one is left out): set train.function_code: 0")


@torch.no_grad()
def prediction_signatures(model, x: torch.Tensor, layout_id: str, batch: int = 256) -> torch.Tensor:
    """`[N, probe inputs x classes]`: the one-hot predictions of the (normalised, flat) networks `x` on the
    module's probe inputs, in batches (what `init_function_code` takes the principal directions of)."""
    from weightvae.model import prediction_signature

    out = []
    for i in range(0, len(x), batch):
        logits, _ = model.function_logits(x[i:i + batch], [layout_id] * len(x[i:i + batch]))
        out.append(prediction_signature(logits))
    return torch.cat(out)


class _Vectors:
    """The dataset's whole vectors of one layout as a sequence, each read when asked for, at its own length."""

    def __init__(self, ds, layout_id: str):
        self.ds, self.idx = ds, [i for i, r in enumerate(ds.rows) if r["layout_id"] == layout_id]

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.ds.vector(self.idx[i], pad=False)


def initial_module(p: TrainParams, ds, layout_ids: list[str], n_layers: int,
                   functional: dict[str, dict[str, Any]] | None = None,
                   sizes: tuple[Sequence[int], Sequence[int]] = ((), ())):
    """The module as training starts: built, with the train split's (`ds`) normalisation statistics,
    and for the linear and chunk codecs started as whitened PCA of the standardised training weights."""
    model = build_module(p, ds.max_len, layout_ids, n_layers, functional, sizes)
    if p.normalize:
        model.set_normalization({lid: ds.normalization(lid) for lid in layout_ids})
    if p.codec in ("linear", "function"):
        x = torch.stack([ds.vector(i) for i in range(len(ds))])
        model.net.init_pca(x)
        if p.function_code:
            model.net.init_function_code(prediction_signatures(model, x, layout_ids[0]))
    elif p.codec == "chunk":  # read one model at a time: the train split is never held whole
        for k, lid in enumerate(layout_ids):
            model.net.init_pca(_Vectors(ds, lid), layout=k)
    return model


def train(p: TrainParams, shards: str | Path, out: str | Path, ckpt_dir: str | Path, live_dir: str | Path,
          callbacks: list | None = None) -> dict[str, float]:
    """Fit the VAE on the shards' train split, validate on val; returns the final logged metrics."""
    import pandas as pd
    from dvclive.lightning import DVCLiveLogger

    from weightvae.data import ZooDataModule
    from weightvae.trainer import FolderCheckpoint, quiet_lightning

    # deterministic=True makes cuBLAS refuse to run on a GPU unless it may keep a fixed workspace
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    L.seed_everything(p.seed, workers=True)
    tasks = sorted(set(pd.read_parquet(Path(shards) / "models.parquet", columns=["task"]).task))
    require(p.dataset == "joint" or p.dataset in tasks, "train.dataset", p.dataset,
            f"choose 'joint' (every task) or one of the shards' tasks {tasks}")
    dm = ZooDataModule(str(shards), batch_size=p.batch_size, num_workers=p.num_workers, dataset=p.dataset,
                       normalize=p.normalize, topk=p.topk, seed=p.seed, window=p.window, chunk_size=p.chunk_size)
    dm.setup("fit")
    ds = dm.train_dataset
    no_val = len(dm.val_dataset) == 0
    if no_val:
        print("train: the val split holds no networks (ingest.split, metrics/ingest.json): the last epoch's model "
              "is kept, as nothing can choose the best")
    layouts = json.loads((Path(shards) / "layouts.json").read_text())
    layout_ids = sorted(layouts)
    p = resolve_latent(p, max(lay["length"] for lay in layouts.values()), log=print)
    sizes = tensor_sizes(layouts, p)
    # layer ids: per layout for whole vectors; the chunk codec numbers every layout's tensors in a row
    n_layers = len(sizes[0]) or max(sum(e["learned"] for e in lay["entries"]) for lay in layouts.values())
    functional = functional_info(shards, layouts)  # also what latent refinement (the encode stage) runs
    check_function_code(p, layouts, functional)
    require(p.codec != "function" or bool(functional), "train.codec", p.codec,
            "the function codec is trained by running the networks, and weightvae can run none of these shards' "
            "task/architecture groups (the lines above say why): register them, or choose train.codec: linear")
    model = initial_module(p, ds, layout_ids, n_layers, functional, sizes)

    ckpt_dir = Path(ckpt_dir)
    best_name, last_name = CHECKPOINTS
    best = FolderCheckpoint(dirpath=ckpt_dir, filename=best_name, monitor="val/loss", mode="min",
                            save_top_k=1, enable_version_counter=False)
    # every epoch; ModelCheckpoint's own save_last writes last.ckpt only in epochs that improve val/loss
    latest = FolderCheckpoint(dirpath=ckpt_dir, filename=last_name, enable_version_counter=False)
    if p.resume:
        repair_live_summary(live_dir)
    last = ckpt_dir / f"{last_name}.ckpt"
    resume_from = str(last) if p.resume and last.exists() else None
    if resume_from is None and os.environ.get("LOCAL_RANK", "0") == "0":
        for name in CHECKPOINTS:  # a fresh run: stale checkpoints must not survive; nothing else there is train's
            (ckpt_dir / f"{name}.ckpt").unlink(missing_ok=True)
    logger = DVCLiveLogger(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None, resume=p.resume)
    with quiet_lightning():
        trainer = L.Trainer(
            max_epochs=p.max_epochs, accelerator=p.accelerator, devices=p.devices, strategy=p.strategy,
            precision=p.precision, deterministic=True, logger=logger, callbacks=[best, latest, *(callbacks or [])],
            limit_train_batches=p.limit_train_batches, log_every_n_steps=1, enable_model_summary=False,
        )
        trainer.fit(model, datamodule=dm, ckpt_path=resume_from)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics["latent_dim"] = float(p.latent_dim)  # the chosen size (also in the export's config: vae.latent_dim)
    if trainer.is_global_zero:
        # Lightning's checkpoints carry paths and loop state; the export carries only what defines the model.
        blob = torch.load(ckpt_dir / f"{last_name if no_val else best_name}.ckpt", map_location="cpu",
                          weights_only=True)
        model = build_module(p, ds.max_len, layout_ids, n_layers, functional, sizes)
        model.load_state_dict(blob["state_dict"])  # includes the normalisation buffers
        if p.codec == "function" and p.autodecode_epochs:
            from weightvae.autodecode import autodecode
            from weightvae.data import collate

            ad, model.fitted_codes = autodecode(model, collate([ds[i] for i in range(len(ds))]), p)
            metrics.update({f"autodecode/{k}": v for k, v in ad.items()})
        with atomic_path(out) as tmp:
            torch.save(model.export(), tmp)
    return metrics


def _number(text: str) -> int | float | None:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return None


def repair_live_summary(live_dir: str | Path, log=print) -> bool:
    """A run killed while DVCLive rewrote its summary leaves `metrics.json` half-written, and DVCLive's resume
    reads it (a JSONDecodeError). Rebuild it from the per-metric TSV files DVCLive appends to (each metric's
    last complete line, and the last step); returns whether it had to."""
    live = Path(live_dir)
    path, root = live / "metrics.json", live / "plots" / "metrics"
    if not path.exists():
        return False
    try:
        json.loads(path.read_text())
        return False
    except ValueError:
        pass
    summary: dict[str, Any] = {}
    step = 0
    for tsv in sorted(root.rglob("*.tsv")):
        lines = tsv.read_text().split("\n")[1:-1]  # the header, and a last line cut before its newline, dropped
        rows = [parts for parts in (line.split("\t") for line in lines)
                if len(parts) == 2 and None not in (_number(parts[0]), _number(parts[1]))]
        if rows:
            *parents, name = tsv.relative_to(root).with_suffix("").parts
            node = summary
            for part in parents:
                node = node.setdefault(part, {})
            node[name] = _number(rows[-1][1])
            step = max(step, int(rows[-1][0]))
    write_json(path, {**summary, "step": step})
    log(f"train: {path} was half-written (a killed run); rebuilt from {root} to resume")
    return True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_inputs(parser, "params", "shards")
    parser.add_argument("--out", default=INPUTS["model"][0], help="exported model (default: %(default)s)")
    parser.add_argument("--ckpt-dir", default="model_data/models/lightning",
                        help="Lightning checkpoints, kept for train.resume (default: %(default)s)")
    parser.add_argument("--live-dir", default="metrics/train", help="DVCLive folder (default: %(default)s)")
    parser.add_argument("--metrics", default=None,
                        help="the auto-decoding phase's figures, as JSON (`weightvae.autodecode`; default: none)")


def run(args: argparse.Namespace) -> None:
    from weightvae.registry import register_params

    register_params(args.params)  # the user's architectures and tasks (`registry:`), before anything runs them
    p = load_section(args.params, "train", TrainParams)
    metrics = train(p, args.shards, args.out, args.ckpt_dir, args.live_dir)
    print("train: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items())))
    if args.metrics and os.environ.get("LOCAL_RANK", "0") == "0":  # DDP: rank 0 alone ran auto-decoding
        write_json(args.metrics, {"epochs": p.autodecode_epochs if p.codec == "function" else 0,
                                  **{k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("autodecode/")}})
