"""The headline bar on zoos of architectures weightvae does not build in: does a 4x code of *your* networks
compute what they computed?

    python benchmarks/user_zoos.py [--runs 64] [--epochs 3] [--compression R] [--out DIR] [--zoos gelu_cnn tab_mlp]
        [--tiny]

For each zoo of `tests/user_nets.py` (a GELU / average-pooling CNN on its own split of digits; an MLP on
scikit-learn's wine table, and one with BatchNorm; a residual LayerNorm MLP on the binary breast cancer table),
`--runs` networks are really trained (Adam, varied learning rate, weight decay and
batch size; a checkpoint after each of `--epochs` epochs), then a git + DVC copy of this repository with the
default params plus the registration (`registry:`, `ingest.zoo_dir`, the module in the stages' deps, as the
README says) runs `dvc repro evaluate` (ingest -> train -> encode -> reconstruct -> evaluate). From its
`metrics/eval.json` (test split) the bar the default zoo passes:
compression >= 4x, fidelity gain vs the oracle substitute >= 0.5, retention >= 0.99, agreement >= PCA of the same
size + 0.3. Prints JSON: each zoo's figures, each criterion's pass/fail, and the seconds each part took.
`--compression R` sets `train.compression` (default: params.yaml's, 16); `--unsorted` sets `ingest.canonicalize: false`
(hidden units in stored order: the control for sorting them). `--tiny`: 12 runs x 2 epochs and the
CI-sized params of tests/ci_params.yaml (a smoke run; the bar is reported, not expected to pass). A full run
(64 runs x 3 checkpoints each) takes minutes on 2 CPU cores (128 runs of each of the four zoos: about 10 minutes).
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_pipeline import _sh, copy_repo
from user_nets import TASKS, ZOOS, train_zoo

REGISTRY = {"architectures": {arch: f"tests.user_nets:build_{arch}" for arch in TASKS},
            "tasks": {"digits_own": "tests.user_nets:load_digits_own", "wine": "tests.user_nets:load_wine",
                      "breast_cancer": "tests.user_nets:load_breast_cancer"}}
MODULE = "tests/user_nets.py"


def default_sizes() -> dict:
    """Overrides that undo tests/ci_params.yaml (which `copy_repo` merges): the default params' own values."""
    ci = yaml.safe_load((ROOT / "tests" / "ci_params.yaml").read_text())
    default = yaml.safe_load((ROOT / "params.yaml").read_text())
    return {section: {k: default[section][k] for k in keys if k in default.get(section, {})}
            for section, keys in ci.items()}


def bar(head: dict, group: str) -> dict:
    """The issue's criteria on one group of eval.json."""
    g = head["groups"][group]
    m = g["methods"]
    vae, pca = m["vae"], m.get("pca", {})
    figures = {"compression_ratio": g.get("compression_ratio"), "latent_size": g.get("latent_size"),
               "learned_weights": g.get("learned_weights"), "models": g.get("models"),
               "original_acc": g.get("original_acc"), "retention": vae.get("retention"),
               "agreement": vae.get("agreement"), "pca_agreement": pca.get("agreement"),
               "fidelity_gain_vs_oracle": g.get("fidelity_gain_vs_oracle"),
               "vae_encoder_agreement": m.get("vae_encoder", {}).get("agreement"),
               "pca_refined_agreement": m.get("pca_refined", {}).get("agreement"),
               "random_refined_agreement": m.get("random_refined", {}).get("agreement"),
               "oracle_agreement": m.get("oracle_train", {}).get("agreement"),
               "random_train_agreement": m.get("random_train", {}).get("agreement")}

    def ok(value, need):
        return value is not None and value >= need

    passes = {"compression >= 4": ok(figures["compression_ratio"], 4.0 - 1e-9),
              "fidelity_gain_vs_oracle >= 0.5": ok(figures["fidelity_gain_vs_oracle"], 0.5),
              "retention >= 0.99": ok(figures["retention"], 0.99),
              "agreement >= pca + 0.3": figures["pca_agreement"] is not None
              and ok(figures["agreement"], figures["pca_agreement"] + 0.3)}
    return {"figures": figures, "passes": passes, "all_pass": all(passes.values())}


def run_zoo(arch: str, root: Path, runs: int, epochs: int, tiny: bool, compression: float | None = None,
            canonicalize: bool = True) -> dict:
    t0 = time.perf_counter()
    zoo = root / f"{arch}_zoo"
    records = train_zoo(arch, zoo, runs=runs, epochs=epochs)
    t_zoo = time.perf_counter() - t0
    overrides = {} if tiny else default_sizes()
    if compression is not None:
        overrides.setdefault("train", {})["compression"] = compression
    # a tiny zoo needs larger val/test shares to have any networks there
    overrides.update(ingest={"zoo_dir": str(zoo), "canonicalize": canonicalize,
                             **({"split": [0.5, 0.25, 0.25]} if tiny else {})},
                     registry=REGISTRY)
    repo = copy_repo(root / f"{arch}_repo", overrides)
    dvc = yaml.safe_load((repo / "dvc.yaml").read_text())
    for stage in dvc["stages"].values():  # the user's module in the deps of every stage that reads `registry`
        if "registry" in stage.get("params", []):
            stage["deps"].append(MODULE)
    (repo / "dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))
    t1 = time.perf_counter()
    log = _sh(["dvc", "repro", "evaluate"], repo)
    head = json.loads((repo / "metrics" / "eval.json").read_text())
    enc = json.loads((repo / "metrics" / "encode.json").read_text())
    out = {"architecture": arch, "task": TASKS[arch], "runs": runs, "checkpoints_per_run": epochs,
           "zoo_test_acc_mean": round(sum(r["metrics"]["test_acc"] for r in records) / len(records), 4),
           "kwargs": ZOOS[arch][2], **bar(head, f"{TASKS[arch]}/{arch}"),
           "encode_behaviour_kl": {s: [v.get("behaviour_kl_encoder_mean"), v.get("behaviour_kl_mean")]
                                   for s, v in enc["splits"].items()},
           "seconds": {"zoo": round(t_zoo, 1), "dvc_repro": round(time.perf_counter() - t1, 1)},
           "skipped": head.get("skipped", []),
           "log_lines": [ln for ln in log.splitlines() if ln.startswith(("train:", "encode:", "evaluate:"))][-8:]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3, help="checkpoints per run (one after each epoch)")
    ap.add_argument("--compression", type=float, default=None, help="train.compression (default: params.yaml's)")
    ap.add_argument("--unsorted", action="store_true",
                    help="ingest.canonicalize false: the hidden units in stored order (the control for sorting them)")
    ap.add_argument("--zoos", nargs="+", default=sorted(TASKS), choices=sorted(TASKS))
    ap.add_argument("--out", type=Path, default=None, help="keep the zoos and repository copies here")
    ap.add_argument("--tiny", action="store_true", help="12 runs x 2 epochs, CI-sized params: a smoke run")
    args = ap.parse_args()
    runs, epochs = (12, 2) if args.tiny else (args.runs, args.epochs)
    if shutil.which("dvc") is None or shutil.which("git") is None:
        sys.exit("benchmarks/user_zoos.py needs `dvc` and `git` on PATH")
    root = args.out or Path(tempfile.mkdtemp(prefix="weightvae-user-zoos-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        results = {arch: run_zoo(arch, root, runs, epochs, args.tiny, args.compression, not args.unsorted)
                   for arch in args.zoos}
    except (AssertionError, subprocess.CalledProcessError) as e:
        keep = f"outputs under {root}" if args.out else "rerun with --out DIR to keep the outputs"
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        why = " / ".join(lines[:1] + [ln for ln in lines if ln.startswith(("weightvae", "ERROR"))][-2:])
        sys.exit(f"benchmarks/user_zoos.py: {why} ({keep})")
    finally:
        if args.out is None:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({"tiny": args.tiny, "runs": runs, "compression": args.compression,
                      "canonicalize": not args.unsorted, "results": results},
                     indent=1))


if __name__ == "__main__":
    main()
