"""Data-parallel runs through accelerate: 2 CPU processes (gloo) give what 1 process gives with the same batch (SPUL
bundle, LoRA familiarization) and write one set of artifacts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("accelerate", reason="accelerate is not installed")
ARGS = ["-p", "4", "--max-steps", "3", "--batch-size", "8", "--eval-limit", "0", "--retain-limit", "20",
        "--no-report-before", "--no-select", "--prompt-init", "random", "--kernels", "torch"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def test_two_cpu_processes_give_the_single_process_bundle(tiny_model_dir: Path, demo_splits: Path, tmp_path: Path):
    from safetensors.torch import load_file

    common = ["--model", str(tiny_model_dir), "--splits", str(demo_splits), *ARGS]
    one = subprocess.run([sys.executable, "-m", "spulctl", "unlearn", "-o", str(tmp_path / "one"), *common],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    before = set(Path(tempfile.gettempdir()).glob("spulctl-rank*"))
    # on a machine without GPUs, `--multi_gpu` starts torchrun processes that train over gloo
    # (accelerate 1.x's `--cpu` launches a single process)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
              "29517", "-m", "spulctl", "unlearn", "-o", str(tmp_path / "two"), *common]
    two = subprocess.run(launch, env=_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    a = load_file(str(tmp_path / "one" / "prompt.safetensors"))["prompt"]
    b = load_file(str(tmp_path / "two" / "prompt.safetensors"))["prompt"]
    assert (a - b).abs().max().item() <= 1e-5
    meta_one = json.loads((tmp_path / "one" / "bundle.json").read_text())
    meta_two = json.loads((tmp_path / "two" / "bundle.json").read_text())
    for h1, h2 in zip(meta_one["training"]["loss_history"], meta_two["training"]["loss_history"], strict=True):
        assert h1 == pytest.approx(h2, rel=1e-5, abs=1e-6)
    # exactly one set of artifacts: the output, its checkpoint dir gone, nothing left by rank 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]
    assert set(Path(tempfile.gettempdir()).glob("spulctl-rank*")) == before
    assert two.stdout.count("saved to") == 1, two.stdout
    assert "data-parallel: 2 processes" in two.stdout.replace("\n", " "), two.stdout


def test_two_cpu_processes_give_the_single_process_lora_familiarization(tiny_model_dir: Path, demo_splits: Path,
                                                                        tmp_path: Path):
    from safetensors.torch import load_file

    common = ["familiarize", str(demo_splits), "--model", str(tiny_model_dir), "--max-steps", "3", "--batch-size",
              "8", "--retain-limit", "40", "--eval-limit", "0", "--lora-dropout", "0", "--lora-r", "4", "--lr", "1e-2"]
    one = subprocess.run([sys.executable, "-m", "spulctl", *common, "-o", str(tmp_path / "one")], env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
              "29518", "-m", "spulctl", *common, "-o", str(tmp_path / "two")]
    two = subprocess.run(launch, env=_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (load_file(str(tmp_path / n / "model.safetensors")) for n in ("one", "two"))
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    assert max((a[k] - base[k]).abs().max().item() for k in a if k in base) > 1e-3  # the runs did train
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]
    assert two.stdout.count("saved to") == 1, two.stdout


def test_single_process_keeps_its_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from spulctl.train import rank_private_dir, world

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert world() == (0, 1)
    assert rank_private_dir(tmp_path / "out") is None
    shutil.rmtree(tmp_path, ignore_errors=True)
