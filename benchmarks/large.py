"""End to end on a large zoo: 64 runs of a 1,000,060-weight network, zoo -> evaluate, as one `dvc exp run`.

    python benchmarks/large.py [--runs 64] [--hidden 13334] [--name large-mlp] [--out metrics/large.json] [--print]

The network is the built-in `mlp` (digits, one hidden layer) at `hidden` = 13,334: 75 * hidden + 10 =
1,000,060 weights, with a batched forward, so the behavioural parts (refinement, evaluate) run it. The
preset (`preset()`, printed with `--print`) is a set of `-S` overrides of params.yaml: the zoo (8 epochs
at batch 128, 2 checkpoints per run: epochs 2 and 8), ingest with 8 files in flight, the chunk codec
trained on windows, encode with fewer refinement steps and smaller batches, reconstruct with 16 samples.
It runs as

    dvc exp run --temp --force -n <name> evaluate -S ... (the preset)

(a scratch copy of the committed code: the workspace keeps its own params and outputs; `--force` runs
every stage even where DVC's run cache holds its outputs; `evaluate` as the target leaves the probe stage
out), timed, with the peak RSS of its largest process (getrusage of the children: the stages run one
after another, so this is the pipeline's peak). Then it reads the experiment's `metrics/eval.json` and
prints JSON (also written to `--out`): wall time, peak RSS, held-out agreement, fidelity gain vs the
oracle substitute, PCA of the same size, compression. Goal (issue 13): <= 30 min and <= 8 GiB on 2 cores.
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from frontier import _dvc, _experiments, _point


def preset(runs: int, hidden: int) -> list[str]:
    return [
        # Hydra override syntax: replace the architectures mapping, add the (absent) arch_kwargs
        "~zoo.architectures", f"+zoo.architectures={{mlp: {runs}}}", f"+zoo.arch_kwargs.mlp.hidden={hidden}",
        "zoo.epochs=8", "zoo.save_epochs=[2,8]", "zoo.batch_size=128", "zoo.group_size=16",
        "ingest.chunk_size=8",
        "train.codec=chunk", "train.chunk_size=64", "train.chunk_latent=16", "train.window=256",
        "train.behaviour_weight=0.0", "train.batch_size=8",
        "encode.refine_steps=100", "encode.batch_size=16",
        "reconstruct.n_samples=16", "reconstruct.batch_size=16",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=13334)
    ap.add_argument("--name", default="large-mlp")
    ap.add_argument("--out", default="metrics/large.json", help="where the JSON is also written")
    ap.add_argument("--print", action="store_true", help="print the dvc command (JSON) and exit")
    a = ap.parse_args()
    cmd = ["dvc", "exp", "run", "--temp", "--force", "-n", a.name, "evaluate"]  # --force: every stage, timed
    for s in preset(a.runs, a.hidden):
        cmd += ["-S", s]
    if a.print:
        print(json.dumps({"command": " ".join(f"'{c}'" if "{" in c or "[" in c else c for c in cmd)}))
        return
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB -> MiB
    metrics = _experiments(json.loads(_dvc("exp", "show", "--json")))[a.name]
    out = {"experiment": a.name, "runs": a.runs, "weights": 75 * a.hidden + 10, "wall_s": round(wall, 1),
           "peak_rss_mib": round(peak, 1), "test_models": metrics.get("models"), **_point(a.name, metrics),
           "command": " ".join(cmd)}
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
