"""The orthogonality study's arithmetic (benchmarks/release_study.py): per-round interference and its seed mean."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "release_study.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("release_study", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_interference_is_the_change_each_trained_round_adds(study):
    before = {"forget_acc": 100.0, "retain_acc": 93.0}
    rounds = [{"round": 1, "trained": True, "forget_acc": 3.0, "retain_acc": 91.0},
              {"round": 2, "trained": True, "forget_acc": 30.0, "retain_acc": 91.5},
              {"round": 3, "trained": False}]
    got = study.interference(before, rounds)
    assert got == [{"round": 1, "retain_drop": 2.0, "forget_rise": -97.0},
                   {"round": 2, "retain_drop": -0.5, "forget_rise": 27.0}]
    assert study.interference({}, rounds[:1]) == [{"round": 1, "retain_drop": None, "forget_rise": None}]


def test_mean_over_seeds_skips_undefined_values(study):
    runs = [{"interference": [{"round": 1, "retain_drop": 2.0, "forget_rise": -90.0},
                              {"round": 2, "retain_drop": 1.0, "forget_rise": 20.0}]},
            {"interference": [{"round": 1, "retain_drop": 4.0, "forget_rise": None}]}]
    got = study.mean_by_round(runs)
    assert got[0] == {"round": 1, "retain_drop": 3.0, "retain_drop_values": [2.0, 4.0], "forget_rise": -90.0,
                      "forget_rise_values": [-90.0]}
    assert got[1]["retain_drop"] == 1.0 and got[1]["retain_drop_values"] == [1.0]
