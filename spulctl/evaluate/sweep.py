"""``spulctl sweep``: unlearn + evaluate over a grid of α, β, p and τ (paper Tables 2–3, Fig. 2).

Each cell writes its bundle under ``out/cells/<key>/`` and appends one JSON line to ``out/results.jsonl``;
a re-run skips cells already there, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from spulctl.errors import SpulError

AXES = ("alpha", "beta", "prompt_tokens", "tau")


def parse_grid(values: dict[str, str | None]) -> dict[str, list[float]]:
    """``{"alpha": "0.5,1"}`` -> ``{"alpha": [0.5, 1.0]}``; axes left empty take the base config's value.

    Raises:
        SpulError: a value that is not a number.
    """
    grid = {}
    for axis, text in values.items():
        if not text:
            continue
        try:
            grid[axis] = [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise SpulError(f"--{axis.replace('_', '-')} {text}: expected comma-separated numbers") from None
    return grid


def cell_key(cell: dict[str, float]) -> str:
    """Stable directory name of a cell, e.g. ``alpha=0.5_beta=1_p=30_tau=1``."""
    short = {"prompt_tokens": "p"}
    return "_".join(f"{short.get(k, k)}={v:g}" for k, v in sorted(cell.items()))


def run_sweep(base: Any, grid: dict[str, list[float]], out: Path, emit: Callable[[dict], None]) -> list[dict]:
    """Run every cell of ``grid`` on top of the ``UnlearnConfig`` ``base``; returns all rows (old and new)."""
    from spulctl.unlearn import unlearn

    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.jsonl"
    rows = [json.loads(x) for x in results_file.read_text().splitlines()] if results_file.is_file() else []
    done = {r["key"] for r in rows}
    axes = sorted(grid)
    cells = [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*(grid[a] for a in axes))]
    for i, cell in enumerate(cells, start=1):
        key = cell_key(cell)
        if key in done:
            emit({"kind": "note", "message": f"[{i}/{len(cells)}] {key}: done earlier, skipped"})
            continue
        emit({"kind": "note", "message": f"[{i}/{len(cells)}] {key}"})
        cfg = replace(base, out=out / "cells" / key / "bundle",
                      **{k: (int(v) if k == "prompt_tokens" else v) for k, v in cell.items()})
        meta = unlearn(cfg, resume=True, overwrite=True, on_event=emit)
        row = {"key": key, **cell, "metrics": meta["metrics"]["after"], "before": meta["metrics"]["before"],
               "train_seconds": meta["training"]["seconds"]}
        with results_file.open("a") as f:
            f.write(json.dumps(row) + "\n")
        rows.append(row)
    write_sweep_outputs(rows, out)
    return rows


def write_sweep_outputs(rows: list[dict], out: Path) -> None:
    """``sweep.md`` (one row per cell) and ``sweep.png`` (accuracy vs each swept axis)."""
    from spulctl.evaluate.report import split_score
    from spulctl.io import write_text_atomic

    lines = ["| cell | test_retain acc % ↑ | test_forget acc % ↓ | forget restricted % | aggregate ↑ | seconds |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in sorted(rows, key=lambda r: -(split_score(r["metrics"], r.get("before") or {}) or 0.0)):
        m = r["metrics"]
        score = split_score(m, r.get("before") or {})
        lines.append(f"| {r['key']} | {m.get('test_retain', {}).get('accuracy', float('nan')):.1f} | "
                     f"{m.get('test_forget', {}).get('accuracy', float('nan')):.1f} | "
                     f"{m.get('test_forget', {}).get('restricted_accuracy', float('nan')):.1f} | "
                     f"{'–' if score is None else f'{score:.1f}'} | {r['train_seconds']:.0f} |")
    write_text_atomic(out / "sweep.md", "\n".join(lines) + "\n")
    _plot(rows, out / "sweep.png")


def _plot(rows: list[dict], path: Path) -> None:
    from spulctl.evaluate.plots import _plt

    plt = _plt()
    axes = [a for a in AXES if len({r.get(a) for r in rows if a in r}) > 1] or [a for a in AXES if a in rows[0]]
    fig, ax = plt.subplots(1, len(axes), figsize=(4.5 * len(axes), 3.8), squeeze=False)
    for a, axis in zip(ax[0], axes, strict=True):
        pts = sorted((r[axis], r["metrics"]) for r in rows if axis in r)
        xs = [p[0] for p in pts]
        for split, style in (("test_retain", "o-"), ("test_forget", "s--")):
            a.plot(xs, [p[1].get(split, {}).get("accuracy", float("nan")) for p in pts], style, label=split)
        a.set_xlabel(axis)
        a.set_ylabel("accuracy %")
        a.grid(alpha=0.3)
    ax[0][0].legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
