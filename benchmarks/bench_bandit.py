"""NeuralUCB vs uniform instruction choice in ``spulctl reveal``: mean reward at the same budget, over seeds.

Runs ``spulctl reveal`` (forget mode) once per (bandit, seed) with the same target, model and text budget, reads
each run's per-round report and writes:

* ``--out`` JSON: the command, machine, per-run mean reward / kept / seconds, per-bandit mean, spread (sd, min,
  max) and the per-round rewards;
* a PNG beside it: reward by round, mean over seeds with the min–max band, one line per bandit.

Usage::

    python benchmarks/bench_bandit.py --model smollm2-135m --entities "a,b,c" --budget 320 --seeds 0,1,2 \\
        --threads 1 --out benchmarks/results/bandit_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_one(args: argparse.Namespace, bandit: str, seed: int, work: Path) -> dict:
    """One reveal run; returns its per-round rewards and totals."""
    out = work / f"{bandit}-s{seed}.jsonl"
    cmd = [sys.executable, "-m", "spulctl", "reveal", "--model", args.model, "--entities", args.entities,
           "--mode", "forget", "--n", str(args.budget), "--budget", str(args.budget), "--bandit", bandit,
           "--seed", str(seed), "-o", str(out), "--no-plot", "--overwrite"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    report_file = out.with_name(f"{out.stem}.report.json")
    if done.returncode != 0 or not report_file.is_file():
        raise SystemExit(f"{bandit} seed {seed}: reveal failed (exit {done.returncode}): {done.stderr[-500:]}")
    report = json.loads(report_file.read_text())
    rewards = [r["reward"] for r in report["per_round"]]
    return {"bandit": bandit, "seed": seed, "rounds": len(rewards), "mean_reward": statistics.fmean(rewards),
            "rewards": rewards, "kept": report["kept"], "generated": report["generated"],
            "seconds": round(seconds, 1)}


def spread(values: list[float]) -> dict[str, float]:
    """Mean, sample sd, min and max."""
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def plot(runs: list[dict], path: Path) -> None:
    """Reward by round per bandit: mean over seeds, min–max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for bandit in sorted({r["bandit"] for r in runs}):
        rows = [r["rewards"] for r in runs if r["bandit"] == bandit]
        n = min(len(r) for r in rows)
        x = list(range(1, n + 1))
        per_round = [[r[i] for r in rows] for i in range(n)]
        ax.plot(x, [statistics.fmean(v) for v in per_round], "-o", markersize=3,
                label=f"{bandit} (mean of {len(rows)})")
        ax.fill_between(x, [min(v) for v in per_round], [max(v) for v in per_round], alpha=0.2)
    ax.set_xlabel("round")
    ax.set_ylabel("reward")
    ax.set_title("reveal: instruction choice, reward by round")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--entities", required=True)
    p.add_argument("--budget", type=int, default=320, help="texts generated per run (the same for both bandits)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--bandits", default="neuralucb,random")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-bandit-") as tmp:
        for seed in seeds:
            for bandit in args.bandits.split(","):
                run = run_one(args, bandit, seed, Path(tmp))
                print(f"{bandit:10s} seed {seed}: mean reward {run['mean_reward']:.4f} over {run['rounds']} rounds, "
                      f"kept {run['kept']}/{run['generated']}, {run['seconds']:.0f} s", flush=True)
                runs.append(run)
    by_bandit = {b: spread([r["mean_reward"] for r in runs if r["bandit"] == b]) for b in args.bandits.split(",")}
    wins = sum(next(r["mean_reward"] for r in runs if r["bandit"] == "neuralucb" and r["seed"] == s)
               > next(r["mean_reward"] for r in runs if r["bandit"] == "random" and r["seed"] == s) for s in seeds) \
        if {"neuralucb", "random"} <= set(args.bandits.split(",")) else None
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": platform.platform(),
              "cpus": os.cpu_count(), "threads": args.threads, "settings": vars(args) | {"out": str(args.out)},
              "mean_reward": by_bandit, "neuralucb_wins_per_seed": wins, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    plot(runs, args.out.with_suffix(".png"))
    for b, s in by_bandit.items():
        print(f"{b:10s} mean reward {s['mean']:.4f} (sd {s['sd']:.4f}, {s['min']:.4f}–{s['max']:.4f})")
    if wins is not None:
        print(f"neuralucb above random on {wins} of {len(seeds)} seeds")


if __name__ == "__main__":
    main()
