"""The generic batched forward (`weightvae.functional`: vmapped `functional_call`, any `nn.Module`) against the
hand-written ones of the built-in architectures (`weightvae.archs._cnn_batched` / `_mlp_batched`), side by side
in one run.

    python benchmarks/forward.py [--networks 256] [--probes 128] [--repeats 5] [--archs cnn mlp]

For each architecture: B networks (default 256, its default kwargs, random weights) on P probe inputs of the
digits task (128, as `train.probe_count`), what the behavioural term and latent refinement run. Timed: the
forward alone (no grad), and forward + backward of the KL to fixed targets with respect to the flat weights
(what refinement does each step); the best of `--repeats` (each enough calls for 50 ms), the
four taking turns so a busy machine slows them alike. networks/s = B / seconds.
`ratio` is generic / hand-written (>= 1: the generic one is as fast). Also checks both give the same logits.
Threads: torch's default (the `WEIGHTVAE_*` pinning of the stages is not applied). Prints JSON.
"""

import argparse
import json
import time

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--networks", type=int, default=256)
    ap.add_argument("--probes", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--archs", nargs="+", default=["cnn", "mlp"])
    args = ap.parse_args()
    results = {a: measure(a, args.networks, args.probes, args.repeats) for a in args.archs}
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "results": results},
                     indent=1))


if __name__ == "__main__":
    main()
