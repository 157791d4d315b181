"""The reveal run's artifacts: the records, the per-round report JSON and the reward plot."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from spulctl import __version__
from spulctl.io import write_json_atomic


def report_path(out: Path) -> Path:
    """``revealed.jsonl`` -> ``revealed.report.json``."""
    return out.with_name(f"{out.stem}.report.json")


def plot_path(out: Path) -> Path:
    """``revealed.jsonl`` -> ``revealed.reward.png``."""
    return out.with_name(f"{out.stem}.reward.png")


def summary(cfg: Any, rounds: list[dict], kept: int, generated: int, seconds: float) -> dict[str, Any]:
    """The report: config, totals, throughput, why samples were not kept, where the time went, per-round rows."""
    return {"spulctl_version": __version__, "config": cfg.to_dict(), "kept": kept, "generated": generated,
            "rounds": len(rounds), "seconds": round(seconds, 2),
            "kept_per_minute": round(60 * kept / seconds, 2) if seconds else None,
            "acceptance": round(kept / generated, 4) if generated else 0.0,
            "rejected": totals(r.get("rejected", {}) for r in rounds),
            "phase_seconds": totals(r.get("phase_seconds", {}) for r in rounds), "per_round": rounds}


def totals(rows: Any) -> dict[str, float]:
    """Key-wise sums of dicts of numbers (per-round rejection counts or phase seconds)."""
    out: dict[str, float] = {}
    for row in rows:
        for key, value in row.items():
            out[key] = round(out.get(key, 0) + value, 3)
    return out


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Write the report JSON atomically."""
    write_json_atomic(path, report)


def write_plot(path: Path, rounds: list[dict]) -> Path:
    """Reward (and its relevance and diversity parts) by round, as a PNG written atomically.

    Raises:
        MissingDependencyError: matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from spulctl.errors import MissingDependencyError

        raise MissingDependencyError("--plot needs matplotlib: pip install matplotlib") from None
    x = [r["round"] for r in rounds]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for key, style in (("reward", "-o"), ("relevance", "--"), ("diversity", ":")):
        ax.plot(x, [r[key] for r in rounds], style, label=key, markersize=3)
    ax.set_xlabel("round")
    ax.set_ylabel("mean over the round's instructions")
    ax.set_ylim(0, 1.05)
    ax.legend()
    ax.set_title("reveal: reward by round")
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
