"""``spulctl sweep``: grid cells, outputs, resume by skipping finished cells."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spulctl.cli import app
from spulctl.errors import SpulError
from spulctl.evaluate.sweep import cell_key, parse_grid

runner = CliRunner()


def test_grid_parsing_and_keys():
    assert parse_grid({"alpha": "0.5, 1", "beta": None}) == {"alpha": [0.5, 1.0]}
    assert cell_key({"prompt_tokens": 30.0, "alpha": 0.5}) == "alpha=0.5_p=30"
    with pytest.raises(SpulError, match="comma-separated numbers"):
        parse_grid({"tau": "half"})


def test_sweep_runs_cells_and_resumes(tiny_model_dir: Path, demo_splits: Path, tmp_path: Path):
    pytest.importorskip("matplotlib")
    args = ["sweep", "-o", str(tmp_path / "sw"), "--splits", str(demo_splits), "--model", str(tiny_model_dir),
            "--alpha", "0.5,1", "--tau", "0.5", "--prompt-tokens", "4", "--max-steps", "1", "--epochs", "1",
            "--eval-limit", "10", "--retain-limit", "30", "--lr", "0.01"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    rows = [json.loads(x) for x in (tmp_path / "sw" / "results.jsonl").read_text().splitlines()]
    assert [r["key"] for r in rows] == ["alpha=0.5_p=4_tau=0.5", "alpha=1_p=4_tau=0.5"]
    assert all(r["metrics"]["test_forget"]["n"] == 10 for r in rows)
    assert (tmp_path / "sw" / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert "alpha=1_p=4_tau=0.5" in (tmp_path / "sw" / "sweep.md").read_text()
    again = runner.invoke(app, args)
    assert again.exit_code == 0
    assert again.output.count("done earlier, skipped") == 2
    assert len((tmp_path / "sw" / "results.jsonl").read_text().splitlines()) == 2
