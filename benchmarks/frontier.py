"""The rate-fidelity frontier: agreement and fidelity gain against the code size, the trained codec against the
same refinement in a PCA and a random subspace of the same size (the controls), the encoder alone and PCA.

    python benchmarks/frontier.py [--run | --rerun] [--ratios 4 8 16 32 64] [--out metrics/frontier]

Each point is a DVC experiment of this repository, for the codec `params.yaml` names (`train.codec`),

    dvc exp run --temp -n frontier-<codec>-<r>x -S train.latent_dim=<d> -S reconstruct.n_samples=0 \\
        -S generator.steps=10 evaluate

with `d = round(learned weights / r)`: train, encode, reconstruct and evaluate rerun, nothing upstream
(`--temp` runs it in a scratch copy of the committed code, so the workspace keeps its own params). A
frontier point measures reconstruction only, so it samples nothing, and the generator stage that reconstruct
depends on trains for 10 steps only (no sample of it is scored); the target `evaluate` leaves the probe and
generation stages out.
`--run` runs the missing ones (one after another; each takes minutes on 2 cores; `--rerun`: every one again, on
the committed code, as after a change to the codec or refinement), then the script reads
every `frontier-<codec>-*` experiment's `metrics/eval.json` from `dvc exp show --json --all-commits` (of any
commit; the newest run of a name wins) and writes `<out>.json` (one row per point: latent size, compression,
and for `vae`, the controls, `vae_encoder` and `pca` agreement, fidelity gain vs the oracle substitute,
retention and R^2, beside the substitutes) and `<out>.png` (agreement and fidelity gain against
compression, the substitutes as horizontal lines).
The workspace's own results (params.yaml after `dvc repro`) stand for the point at its
`train.latent_dim` when that is a count. Without `--run` it only collects what is there. Prints the JSON.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: what every frontier point changes besides the latent size: reconstruction only, no training-split codes
POINT = ("-S", "reconstruct.n_samples=0", "-S", "generator.steps=10")
RATIOS = (4, 8, 16, 32, 64)


def codec() -> str:
    """The codec params.yaml trains (`train.codec`): a frontier is of one codec."""
    import yaml

    return yaml.safe_load((ROOT / "params.yaml").read_text())["train"]["codec"]


def point_names(codec: str, ratios, weights: int) -> dict[str, int]:
    """experiment name -> latent size of each point."""
    return {f"frontier-{codec}-{r:g}x": max(1, round(weights / r)) for r in ratios}


def _dvc(*args: str) -> str:
    res = subprocess.run(["dvc", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        sys.exit(f"dvc {' '.join(args)} failed:\n{res.stderr[-2000:]}")
    return res.stdout


def _eval(node: dict) -> dict | None:
    return ((node["data"].get("metrics") or {}).get("metrics/eval.json") or {}).get("data")


def _experiments(shown) -> dict[str, dict]:
    """name -> metrics/eval.json of every named experiment in `dvc exp show --json` output; the
    workspace's under `workspace:<train.latent_dim>` (the default params.yaml is one frontier point)."""
    out = {}
    for rev in shown:
        if rev.get("rev") == "workspace" and isinstance(rev.get("data"), dict) and _eval(rev):
            dim = rev["data"]["params"]["params.yaml"]["data"]["train"]["latent_dim"]
            out[f"workspace:{dim}"] = _eval(rev)

    def walk(node, inside=False):
        if isinstance(node, dict):
            if inside and node.get("name") and isinstance(node.get("data"), dict):
                m = _eval(node)
                if m:
                    out.setdefault(node["name"], m)  # newest commit first: its run wins
            for k, v in node.items():
                walk(v, inside or k == "experiments")
        elif isinstance(node, list):
            for v in node:
                walk(v, inside)

    walk(shown)
    return out


def _point(name: str, m: dict) -> dict:
    row = {"experiment": name, "latent_size": m.get("latent_size"), "compression": m.get("compression_ratio"),
           "fidelity_gain_vs_oracle": m.get("fidelity_gain_vs_oracle")}
    for method in ("vae", "vae_encoder", "pca_refined", "random_refined", "pca", "oracle_train", "random_train",
                   "nearest_train"):
        row[method] = {k: m.get(method, {}).get(k) for k in ("agreement", "retention", "r2", "r2_layer_mean")}
    pca, oracle = m.get("pca", {}).get("agreement"), m.get("oracle_train", {}).get("agreement")
    if pca is not None and oracle is not None:  # the pca's fidelity gain vs the oracle, from its mean agreement
        row["pca_fidelity_gain_vs_oracle_of_means"] = 1 - (1 - pca) / max(1 - oracle, 1e-9)
    return row


def plot(rows: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from weightvae.io import atomic_path

    rows = sorted(rows, key=lambda r: r["compression"])
    x = [r["compression"] for r in rows]
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ax1.plot(x, [r["vae"]["agreement"] for r in rows], "o-", label="trained codec (refined codes)")
    ax1.plot(x, [r["pca"]["agreement"] for r in rows], "s--", label="PCA, same size")
    for name, style, label in (("vae_encoder", "o:", "encoder alone"), ("pca_refined", "^--", "PCA + refinement"),
                               ("random_refined", "v--", "random subspace + refinement")):
        if all(r[name]["agreement"] is not None for r in rows):  # points run before the controls lack them
            ax1.plot(x, [r[name]["agreement"] for r in rows], style, label=label)
    for name, style in (("oracle_train", ":"), ("random_train", "-."), ("nearest_train", "--")):
        ax1.axhline(rows[0][name]["agreement"], color="0.4", ls=style, lw=1, label=f"substitute: {name}")
    ax1.set(xscale="log", xlabel="compression (learned weights / latent values)", ylabel="agreement with the original",
            ylim=(0, 1.02), title="Held-out agreement")
    ax2.plot(x, [r["fidelity_gain_vs_oracle"] for r in rows], "o-", label="trained codec")
    ax2.axhline(0, color="0.4", ls=":", lw=1, label="= the oracle substitute")
    ax2.set(xscale="log", xlabel="compression", ylabel="fidelity gain vs the oracle substitute",
            title="Fidelity gain (1: identical predictions)")
    for ax in (ax1, ax2):
        ax.set_xticks(x, [f"{v:.0f}x" if v >= 1.5 else f"{v:.2f}x" for v in x])
        ax.set_xticks([], minor=True)  # no log-scale minor labels under the points
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, metadata={"Software": None})


def _collect(names: dict[str, int]) -> dict[str, dict]:
    """name -> metrics/eval.json of each finished point; the workspace's own run stands for the point at its
    latent size, and an entry whose latent size is not its point's (an experiment still running shows its
    baseline's metrics) is left out."""
    have = _experiments(json.loads(_dvc("exp", "show", "--json", "--all-commits")))
    for name, dim in names.items():
        if name not in have and f"workspace:{dim}" in have:
            have[name] = have[f"workspace:{dim}"]
    return {n: m for n, m in have.items() if n in names and m.get("latent_size") == names[n]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="store_true", help="run the missing experiments first")
    ap.add_argument("--rerun", action="store_true", help="run every experiment again first (the newest run wins)")
    ap.add_argument("--ratios", type=float, nargs="+", default=list(RATIOS))
    ap.add_argument("--weights", type=int, default=1706, help="learned weights per model (default CNN: 1706)")
    ap.add_argument("--out", default="metrics/frontier", help="output stem: <out>.json and <out>.png")
    args = ap.parse_args()
    names = point_names(codec(), args.ratios, args.weights)
    have = _collect(names)
    if args.run or args.rerun:
        for name, dim in names.items():
            if name not in have or args.rerun:
                print(f"running {name}: train.latent_dim={dim}", file=sys.stderr, flush=True)
                _dvc("exp", "run", "--temp", "-n", name, "-S", f"train.latent_dim={dim}", *POINT, "evaluate")
        have = _collect(names)
    rows = [_point(n, have[n]) for n in names if n in have]
    missing = [n for n in names if n not in have]
    if rows:
        out = ROOT / args.out  # an absolute --out stays as it is
        out.parent.mkdir(parents=True, exist_ok=True)
        (out.with_suffix(".json")).write_text(json.dumps({"points": rows, "missing": missing}, indent=2) + "\n")
        plot(rows, out.with_suffix(".png"))
    print(json.dumps({"points": rows, "missing": missing}, indent=2))


if __name__ == "__main__":
    main()
