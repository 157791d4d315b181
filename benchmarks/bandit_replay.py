"""How much can instruction choice gain? Per-arm rewards from a uniform-choice `reveal` run, replayed.

Reads the report of a ``spulctl reveal --bandit random`` run (each round's ``arms`` and ``arm_rewards``) and asks:

1. **Do the arms differ?** The spread of the per-arm mean rewards against the noise of one pull, and whether an
   arm's first-pull reward predicts its later ones (the reward's novelty term falls as similar texts are kept).
2. **What would a bandit gain?** Both bandits of ``spulctl.reveal.bandit`` are replayed against the recorded
   rewards: each pull of arm a returns a reward drawn from a's recorded first pull (its first time) or from its later
   pulls. The replay favours any bandit (an arm's recorded mean includes the luck that makes it look good), so a
   gain here is an upper bound for the live run at the same budget.

    spulctl reveal --model smollm2-135m --entities "..." --bandit random --budget 1280 --n 1280 -o runs/arms.jsonl
    python benchmarks/bandit_replay.py runs/arms.report.json --out benchmarks/results/bandit_replay_cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def load_pulls(report: Path) -> tuple[list[str], list[tuple[int, float]]]:
    """(instruction text per arm index, [(arm, reward) in pull order]) from a reveal report."""
    rows = json.loads(report.read_text())["per_round"]
    if not rows or "arm_rewards" not in rows[0]:
        raise SystemExit(f"{report}: no per-arm rewards (a report from an older spulctl)")
    texts: dict[int, str] = {}
    pulls = []
    for row in rows:
        for arm, text, reward in zip(row["arms"], row["instructions"], row["arm_rewards"], strict=True):
            texts.setdefault(arm, text)
            pulls.append((arm, reward))
    k = max(texts) + 1
    return [texts.get(a, "") for a in range(k)], pulls


def arm_stats(pulls: list[tuple[int, float]], k: int) -> dict:
    """Per-arm first and later rewards, their spreads and correlation."""
    first: dict[int, float] = {}
    later: dict[int, list[float]] = {a: [] for a in range(k)}
    for arm, r in pulls:
        if arm in first:
            later[arm].append(r)
        else:
            first[arm] = r
    means = [statistics.fmean([first[a], *later[a]]) for a in first]
    within = [statistics.stdev([first[a], *later[a]]) for a in first if later[a]]
    both = [a for a in first if later[a]]
    corr = statistics.correlation([first[a] for a in both], [statistics.fmean(later[a]) for a in both])
    return {"arms": len(first), "pulls": len(pulls), "mean_reward": statistics.fmean(r for _, r in pulls),
            "sd_of_arm_means": statistics.pstdev(means), "mean_within_arm_sd": statistics.fmean(within),
            "first_pull_mean": statistics.fmean(first.values()),
            "later_pull_mean": statistics.fmean(r for a in both for r in later[a]),
            "corr_first_vs_later": corr, "_first": first, "_later": later}


def replay(kind: str, feats, stats: dict, rounds: int, arms_per_round: int, seed: int, lam: float, nu: float) -> float:
    """Mean reward of one replayed run."""
    import random

    from spulctl.reveal.bandit import make_bandit

    rng = random.Random(seed + 1_000)
    bandit = make_bandit(kind, feats, lam, nu, seed)
    first, later = stats["_first"], stats["_later"]
    pulled: set[int] = set()
    got = []
    for _ in range(rounds):
        arms = bandit.select(arms_per_round)
        rewards = [rng.choice(later[a]) if a in pulled and later[a] else first.get(a, 0.0) for a in arms]
        pulled.update(arms)
        bandit.update(arms, rewards)
        got += rewards
    return statistics.fmean(got)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("report", type=Path, help="report JSON of a `spulctl reveal --bandit random` run")
    p.add_argument("--rounds", default="20,40,80", help="replayed budgets, in rounds")
    p.add_argument("--arms-per-round", type=int, default=4)
    p.add_argument("--seeds", type=int, default=24)
    p.add_argument("--settings", default="1:1,1:0.1,0.001:0.01", help="NeuralUCB λ:ν pairs")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()

    import torch

    from spulctl.reveal.scoring import embed

    texts, pulls = load_pulls(args.report)
    stats = arm_stats(pulls, len(texts))
    feats = torch.from_numpy(embed(texts))  # (K, e), the instructions as the run filled them first
    table = []
    for rounds in (int(r) for r in args.rounds.split(",")):
        base = [replay("random", feats, stats, rounds, args.arms_per_round, s, 1.0, 1.0) for s in range(args.seeds)]
        table.append({"rounds": rounds, "bandit": "random", "mean": statistics.fmean(base), "wins": None})
        for pair in args.settings.split(","):
            lam, nu = (float(x) for x in pair.split(":"))
            got = [replay("neuralucb", feats, stats, rounds, args.arms_per_round, s, lam, nu)
                   for s in range(args.seeds)]
            table.append({"rounds": rounds, "bandit": f"neuralucb lam={lam:g} nu={nu:g}",
                          "mean": statistics.fmean(got), "wins": sum(g > b for g, b in zip(got, base, strict=True))})
            print(f"{rounds} rounds, {table[-1]['bandit']}: {table[-1]['mean']:.4f} vs uniform "
                  f"{statistics.fmean(base):.4f} (wins {table[-1]['wins']}/{args.seeds})", flush=True)
    public = {k: v for k, v in stats.items() if not k.startswith("_")}
    print(json.dumps(public, indent=1))
    args.out.write_text(json.dumps({"report": str(args.report), "arms": public, "replay": table,
                                    "seeds": args.seeds}, indent=1) + "\n")


if __name__ == "__main__":
    main()
