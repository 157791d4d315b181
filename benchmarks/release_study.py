"""The orthogonality study of ``--method release``: the same run at several λ, and the interference each round adds.

Runs ``spulctl unlearn --method release`` once per λ (``--ortho-lambda``) and seed (``--seeds``) with everything
else equal (a run whose adapter already exists is reused, so an interrupted study picks up where it stopped;
``WORK/seed-S/lambda-L`` holds each), reads each adapter's manifest (the per-round table) and writes:

* ``--out`` JSON: the command, machine, per λ and seed the per-round rows (held-out forget / retain scores, penalty,
  steps, seconds) and the **interference** of each round: the held-out retain score before it minus the one after
  it (``retain_drop``: the retain drop that round adds; positive = it cost retain; round 1's is against the model
  before unlearning), and the held-out forget score after it minus the one before it (``forget_rise``: positive =
  the round gave back forgetting earlier rounds had bought); then per λ the mean of both over seeds, per round;
* a PNG beside it: held-out forget and retain scores by round (round 0 = before unlearning), one colour per λ, one
  line style per seed.

On the NER task the held-out scores are PERSON F1 (forget) and ORG+GPE F1 (retain); on the sentiment task, accuracy.
The unnormalised penalty sums over every adapted layer (210 on SmolLM2: 30 layers × 7 linears), so a per-layer
mean at λ is the sum at λ / 210: include that value to study the normalisation too.

Usage::

    python benchmarks/release_study.py --model fam-ner/ --splits ner-splits/ --lambdas 0,0.5,0.0024 \\
        --work runs/ortho --out benchmarks/results/release_ortho_cpu.json -- --release-rounds 3 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path


def run_one(args: argparse.Namespace, lam: float, seed: int, extra: list[str]) -> tuple[Path, float | None]:
    """One Release run at ``lam`` and ``seed`` (skipped when its adapter exists); returns its folder and wall
    seconds (None when reused)."""
    out = args.work / f"seed-{seed}" / f"lambda-{lam:g}"
    if (out / "spulctl-manifest.json").is_file():
        return out, None
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "spulctl", "unlearn", "--method", "release", "--model", args.model, "--splits",
           args.splits, "-o", str(out), "--ortho-lambda", str(lam), "--seed", str(seed), "--resume", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    with open(out.parent / f"lambda-{lam:g}.log", "w") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        raise SystemExit(f"release at λ={lam:g}, seed {seed} failed (exit {done.returncode}); see {log.name}")
    return out, time.perf_counter() - t0


def interference(before: dict, rows: list[dict]) -> list[dict]:
    """Per trained round k: ``retain_drop`` = held-out retain score before it (round 0: before unlearning) minus
    the one after it; ``forget_rise`` = held-out forget score after it minus the one before it (None where either is
    undefined)."""
    out, prev = [], before
    for row in rows:
        if not row.get("trained"):
            continue
        out.append({"round": row["round"], "retain_drop": _diff(prev.get("retain_acc"), row.get("retain_acc")),
                    "forget_rise": _diff(row.get("forget_acc"), prev.get("forget_acc"))})
        prev = row
    return out


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 2)


def mean_by_round(runs: list[dict]) -> list[dict]:
    """Per round, the mean (and the values) of ``retain_drop`` and ``forget_rise`` over the given runs (seeds)."""
    rounds = sorted({r["round"] for run in runs for r in run["interference"]})
    out = []
    for k in rounds:
        row: dict = {"round": k}
        for key in ("retain_drop", "forget_rise"):
            vals = [r[key] for run in runs for r in run["interference"] if r["round"] == k and r[key] is not None]
            row[key] = round(sum(vals) / len(vals), 2) if vals else None
            row[f"{key}_values"] = vals
        out.append(row)
    return out


def plot(study: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharex=True)
    lambdas = sorted({run["lambda"] for run in study["runs"]})
    seeds = sorted({run["seed"] for run in study["runs"]})
    styles = ["-", "--", ":", "-."]
    for run in study["runs"]:
        rows = [r for r in run["rounds"] if r.get("trained")]
        x = [0] + [r["round"] for r in rows]
        color, style = f"C{lambdas.index(run['lambda'])}", styles[seeds.index(run["seed"]) % len(styles)]
        for ax, key in zip(axes, ("forget_acc", "retain_acc"), strict=True):
            y = [run["before"].get(key)] + [r.get(key) for r in rows]
            ax.plot(x, [float("nan") if v is None else v for v in y], marker="o", color=color, linestyle=style,
                    label=f"λ = {run['lambda']:g}, seed {run['seed']}")
    for ax, title in zip(axes, ("held-out forget score ↓", "held-out retain score ↑"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("round (0 = before)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--splits", required=True)
    parser.add_argument("--lambdas", default="0,0.5,0.0024")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; each λ runs once per seed")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, required=True, help="folder for the adapters and their logs")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("extra", nargs="*", help="more unlearn flags, after --")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    runs = []
    lambdas = [float(x) for x in args.lambdas.split(",")]
    for seed in (int(x) for x in args.seeds.split(",")):
        for lam in lambdas:
            folder, seconds = run_one(args, lam, seed, args.extra)
            release = json.loads((folder / "spulctl-manifest.json").read_text())["release"]
            runs.append({"lambda": lam, "seed": seed, "adapter": str(folder), "seconds": seconds,
                         "stop": release["stop"], "before": release["before"], "rounds": release["rounds"],
                         "interference": interference(release["before"], release["rounds"])})
    study = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
             "machine": f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} thread(s)", "runs": runs,
             "mean_over_seeds": [{"lambda": lam, "rounds": mean_by_round([r for r in runs if r["lambda"] == lam])}
                                 for lam in lambdas]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(study, indent=1) + "\n")
    plot(study, args.out.with_suffix(".png"))
    print(json.dumps(study["mean_over_seeds"], indent=1))


if __name__ == "__main__":
    main()
