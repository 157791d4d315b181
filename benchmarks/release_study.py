"""The orthogonality study of ``--method release``: the same run at several λ, and the interference each round adds.

Runs ``spulctl unlearn --method release`` once per λ (``--ortho-lambda``) with everything else equal (a run whose
adapter already exists is reused, so an interrupted study picks up where it stopped), reads each adapter's manifest
(the per-round table) and writes:

* ``--out`` JSON: the command, machine, per λ the per-round rows (held-out forget / retain scores, penalty, steps,
  seconds) and the **interference** of each round: the held-out retain score before it minus the one after it (the
  retain drop that round adds; positive = it cost retain; round 1's is against the model before unlearning);
* a PNG beside it: held-out forget and retain scores by round (round 0 = before unlearning), one line per λ.

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


def run_one(args: argparse.Namespace, lam: float, extra: list[str]) -> tuple[Path, float | None]:
    """One Release run at ``lam`` (skipped when its adapter exists); returns its folder and wall seconds."""
    out = args.work / f"lambda-{lam:g}"
    if (out / "spulctl-manifest.json").is_file():
        return out, None
    cmd = [sys.executable, "-m", "spulctl", "unlearn", "--method", "release", "--model", args.model, "--splits",
           args.splits, "-o", str(out), "--ortho-lambda", str(lam), "--seed", str(args.seed), "--resume", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    with open(args.work / f"lambda-{lam:g}.log", "w") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        raise SystemExit(f"release at λ={lam:g} failed (exit {done.returncode}); see {log.name}")
    return out, time.perf_counter() - t0


def interference(before: float | None, rows: list[dict]) -> list[dict]:
    """Per trained round k: the held-out retain score before it (round 0: before unlearning) minus the one after it
    (None where either is undefined)."""
    out, prev = [], before
    for row in rows:
        if not row.get("trained"):
            continue
        now = row.get("retain_acc")
        drop = None if prev is None or now is None else round(prev - now, 2)
        out.append({"round": row["round"], "retain_drop": drop})
        prev = now
    return out


def plot(study: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharex=True)
    for run in study["runs"]:
        rows = [r for r in run["rounds"] if r.get("trained")]
        x = [0] + [r["round"] for r in rows]
        for ax, key in zip(axes, ("forget_acc", "retain_acc"), strict=True):
            y = [run["before"].get(key)] + [r.get(key) for r in rows]
            ax.plot(x, [float("nan") if v is None else v for v in y], marker="o", label=f"λ = {run['lambda']:g}")
    for ax, title in zip(axes, ("held-out forget score ↓", "held-out retain score ↑"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("round (0 = before)")
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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, required=True, help="folder for the adapters and their logs")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("extra", nargs="*", help="more unlearn flags, after --")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    runs = []
    for lam in (float(x) for x in args.lambdas.split(",")):
        folder, seconds = run_one(args, lam, args.extra)
        release = json.loads((folder / "spulctl-manifest.json").read_text())["release"]
        runs.append({"lambda": lam, "adapter": str(folder), "seconds": seconds, "stop": release["stop"],
                     "before": release["before"], "rounds": release["rounds"],
                     "interference": interference(release["before"].get("retain_acc"), release["rounds"])})
    study = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
             "machine": f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} thread(s)", "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(study, indent=1) + "\n")
    plot(study, args.out.with_suffix(".png"))
    print(json.dumps([{"lambda": r["lambda"], "interference": r["interference"]} for r in runs], indent=1))


if __name__ == "__main__":
    main()
