"""The generic batched forward (`weightvae.functional`: vmapped `functional_call`, any `nn.Module`) against the
hand-written ones of the built-in architectures (`weightvae.archs._cnn_batched` / `_mlp_batched`), side by side
in one run.

    python benchmarks/forward.py [--networks 256] [--probes 128] [--repeats 5] [--archs cnn mlp]
                                 [--shards model_data/shards] [--refine-steps 50]

For each architecture: B networks (default 256, its default kwargs, random weights) on P probe inputs of the
digits task (128, as `train.probe_count`), what the behavioural term and latent refinement run. Timed: the
forward alone (no grad), and forward + backward of the KL to fixed targets with respect to the flat weights
(what refinement does each step); the best of `--repeats` (each enough calls for 50 ms), the
four taking turns so a busy machine slows them alike. networks/s = B / seconds.
`ratio` is generic / hand-written (>= 1: the generic one is as fast). Also checks both give the same logits.

`encode` (when `--shards` holds a zoo): the encode stage's latent refinement (`weightvae.refine.refine`, its
defaults: probe batch 16 of all the task's training inputs, Adam from the encoder's code) of the first
`--networks` test-split networks, with each forward in turn, the VAE the train stage starts from (whitened PCA
of the training split, `train:` defaults; training changes the weights, not the cost); 0 steps (the fixed cost:
the KL before and after on every probe input) and `--refine-steps` steps timed (the best of `--repeats` turns,
the two forwards taking turns), the per-step cost scaled to
`encode.refine_steps` (its default): networks/s of the stage's refinement. The bar: the
generic forward's encode throughput >= 0.5x the hand-written one's.
Threads: torch's default (the `WEIGHTVAE_*` pinning of the stages is not applied). Prints JSON.
"""

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from weightvae.archs import build_model, get_architecture
from weightvae.behaviour import probe_inputs
from weightvae.functional import forward_for
from weightvae.layout import Layout


def _timer(fn, min_seconds: float = 0.05):
    """A function timing `fn`: seconds per call over enough calls to take `min_seconds` (tiny nets take ~1 ms)."""
    fn()  # warm-up (and vmap's first trace)
    t = time.perf_counter()
    fn()
    calls = max(1, int(min_seconds / max(time.perf_counter() - t, 1e-6)))

    def timed() -> float:
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - t) / calls
    return timed


def _best_interleaved(fns: dict, repeats: int) -> dict:
    """The best seconds per call of each function, the functions taking turns (a busy machine slows both alike)."""
    timers = {k: _timer(f) for k, f in fns.items()}
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, timed in timers.items():
            best[k] = min(best[k], timed())
    return best


def measure(arch: str, networks: int, probes: int, repeats: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    nets = [build_model(arch) for _ in range(networks)]
    layout = Layout.from_state_dict(nets[0].state_dict())
    flat = torch.stack([layout.flatten(n.state_dict()) for n in nets])
    x = probe_inputs("digits", probes)
    hand = get_architecture(arch).batched_forward
    generic = forward_for(arch, {}, layout)

    def run_hand(w):
        params = {e.name: w[:, e.offset:e.offset + e.numel].reshape(len(w), *e.shape) for e in layout.learned}
        return hand(params, x.unsqueeze(0).expand(len(w), *x.shape), None)

    def run_generic(w):
        return generic(w, x)

    with torch.no_grad():
        a, b = run_hand(flat), run_generic(flat)
        target = F.log_softmax(a + 0.1 * torch.randn_like(a), -1)
    out = {"architecture": arch, "weights": layout.length, "networks": networks, "probes": probes,
           "max_abs_logit_diff": float((a - b).abs().max())}

    def backward(fn):
        def step():
            w = flat.clone().requires_grad_(True)
            loss = F.kl_div(F.log_softmax(fn(w), -1), target, log_target=True, reduction="sum")
            (g,) = torch.autograd.grad(loss, [w])
            return g
        return step

    def no_grad(fn):
        def run():
            with torch.no_grad():
                return fn(flat)
        return run

    best = _best_interleaved({"hand_written/forward": no_grad(run_hand), "generic/forward": no_grad(run_generic),
                              "hand_written/forward_backward": backward(run_hand),
                              "generic/forward_backward": backward(run_generic)}, repeats)
    for name in ("hand_written", "generic"):
        out[name] = {f"{kind}_networks_per_s": round(networks / best[f"{name}/{kind}"], 1)
                     for kind in ("forward", "forward_backward")}
    for kind in ("forward", "forward_backward"):
        key = f"{kind}_networks_per_s"
        out[f"ratio_{kind}"] = round(out["generic"][key] / out["hand_written"][key], 3)
    return out


def encode_throughput(shards: Path, networks: int, steps: int, repeats: int, stage_steps: int | None = None) -> dict:
    """Refinement of `networks` test-split networks with the hand-written and the generic forward, in turns."""
    from weightvae import archs
    from weightvae.data import ZooDataModule, ZooDataset
    from weightvae.encode import EncodeParams
    from weightvae.refine import refine
    from weightvae.train import TrainParams, functional_info, initial_module

    p, e = TrainParams(accelerator="cpu"), EncodeParams()
    stage_steps = e.refine_steps if stage_steps is None else stage_steps
    layouts = json.loads((shards / "layouts.json").read_text())
    train_ds = ZooDataset(shards, "train", normalize=p.normalize)
    n_layers = max(sum(x["learned"] for x in lay["entries"]) for lay in layouts.values())
    model = initial_module(p, train_ds, sorted(layouts), n_layers, functional_info(shards, layouts, log=lambda _: None))
    batch = next(iter(ZooDataModule.loader(ZooDataset(shards, "test", normalize=p.normalize), batch_size=networks)))
    x = batch["weight"]
    lids = model.batch_layout_ids(batch, len(x))
    keys = model.batch_function_keys(batch, lids)
    arch = {f["arch"] for f in model.functional.values()}
    assert len(arch) == 1, f"one architecture, please: {arch}"
    arch = arch.pop()
    with torch.no_grad():
        z0 = model.encode(batch).mode()
    original = archs.ARCHITECTURES[arch]
    best = {(name, n): float("inf") for name in ("hand_written", "generic") for n in (0, steps)}
    kl = {}
    try:
        for _ in range(repeats):
            for name, n in list(best):  # 0 steps: the fixed cost (the KL before and after, on every probe input)
                archs.ARCHITECTURES[arch] = dataclasses.replace(original, probe_forward=name == "hand_written")
                t = time.perf_counter()
                _, before, after = refine(model, z0, x, lids, keys, n, e.refine_lr, e.probe_count, e.probe_batch,
                                          e.seed)
                best[name, n] = min(best[name, n], time.perf_counter() - t)
                kl[name] = [round(before.mean().item(), 4), round(after.mean().item(), 4)]
    finally:
        archs.ARCHITECTURES[arch] = original
    out = {"architecture": arch, "networks": len(x), "refine_steps_timed": steps, "scaled_to_refine_steps": stage_steps,
           "probe_batch": e.probe_batch}
    for name in ("hand_written", "generic"):
        fixed, per_step = best[name, 0], (best[name, steps] - best[name, 0]) / steps
        out[name] = {"networks_per_s": round(len(x) / (fixed + stage_steps * per_step), 3),
                     "step_seconds": round(per_step, 4), "fixed_seconds": round(fixed, 2),
                     f"behaviour_kl_before_after_{steps}_steps": kl[name]}
    out["ratio"] = round(out["generic"]["networks_per_s"] / out["hand_written"]["networks_per_s"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--networks", type=int, default=256)
    ap.add_argument("--probes", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--archs", nargs="+", default=["cnn", "mlp"])
    ap.add_argument("--shards", type=Path, default=Path("model_data/shards"), help="a zoo for the encode timing")
    ap.add_argument("--refine-steps", type=int, default=50, help="refinement steps timed (encode part)")
    args = ap.parse_args()
    results = {a: measure(a, args.networks, args.probes, args.repeats) for a in args.archs}
    report = {"torch": torch.__version__, "threads": torch.get_num_threads(), "results": results}
    if (args.shards / "models.parquet").exists():
        report["encode"] = encode_throughput(args.shards, args.networks, args.refine_steps, args.repeats)
    else:
        report["encode"] = f"skipped: no zoo at {args.shards} (--shards)"
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
