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
    from spulctl.distributed import rank_private_dir, world

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert world() == (0, 1)
    assert rank_private_dir(tmp_path / "out") is None
    shutil.rmtree(tmp_path, ignore_errors=True)


def _launch(tmp_path: Path, port: int, *args: str, fsdp: bool = False) -> subprocess.CompletedProcess:
    # `--use_fsdp` replaces `--multi_gpu` (accelerate takes one of them); both start torchrun processes
    extra = ["--use_fsdp", "--fsdp_version", "2"] if fsdp else ["--multi_gpu"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           str(port), *extra, *args]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)


def test_fsdp_shards_the_frozen_base_and_gives_the_single_process_bundle(tiny_model_dir: Path, demo_splits: Path,
                                                                          tmp_path: Path):
    """Batches of 5 in micro-batches of 2: rank 0 runs 2 slices a step, rank 1 one, so the sharded base only works
    if the ranks pad to the same number of passes; the reference rows are computed shard-wise and summed (92 rows
    in 3 batches: rank 1 pads one). `--no-cached-reference` is overridden under FSDP (a forget-only slice would run
    one pass and a mixed one two); the single process computes that reference live, to the same numbers."""
    from safetensors.torch import load_file

    common = ["--model", str(tiny_model_dir), "--splits", str(demo_splits), "-p", "4", "--max-steps", "3",
              "--batch-size", "5", "--micro-batch", "2", "--eval-limit", "0", "--retain-limit", "20",
              "--no-report-before", "--no-select", "--prompt-init", "random", "--kernels", "torch",
              "--no-cached-reference"]
    one = subprocess.run([sys.executable, "-m", "spulctl", "unlearn", "-o", str(tmp_path / "one"), *common],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = _launch(tmp_path, 29519, "-m", "spulctl", "unlearn", "-o", str(tmp_path / "two"), *common, fsdp=True)
    assert two.returncode == 0, two.stderr[-3000:]
    flat = two.stdout.replace("\n", " ")
    assert "FSDP: 2 frozen decoder layers sharded across 2 processes" in " ".join(flat.split()), two.stdout
    a = load_file(str(tmp_path / "one" / "prompt.safetensors"))["prompt"]
    b = load_file(str(tmp_path / "two" / "prompt.safetensors"))["prompt"]
    assert (a - b).abs().max().item() <= 1e-5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]


def test_fsdp_refuses_a_trainable_base(tiny_model_dir: Path, demo_splits: Path, tmp_path: Path):
    two = _launch(tmp_path, 29520, "-m", "spulctl", "unlearn", "-o", str(tmp_path / "ga"), "--model",
                  str(tiny_model_dir), "--splits", str(demo_splits), "--method", "ga", "--max-steps", "1",
                  "--eval-limit", "0", "--no-report-before", fsdp=True)
    assert two.returncode != 0
    assert "FSDP shards frozen bases only" in two.stdout + two.stderr
    assert not (tmp_path / "ga").exists()


RESUME_SCRIPT = """
import sys
from pathlib import Path
from spulctl.train import TrainConfig
from spulctl.unlearn import UnlearnConfig, unlearn

def cfg(model, splits, out, lr=2e-2):
    return UnlearnConfig(model=str(model), splits=Path(splits), out=Path(out), prompt_tokens=4, eval_limit=0,
                         retain_limit=60, forget_share=0.0, prompt_encoder="mlp", prompt_init="vocab",
                         report_before=False, kernels="torch",
                         train=TrainConfig(lr=lr, epochs=1, batch_size=8, seed=0, checkpoint_every=2, max_steps=6))

if __name__ == "__main__":
    if sys.argv[3] == "resume":
        unlearn(cfg(sys.argv[1], sys.argv[2], sys.argv[4]), resume=True)
    if sys.argv[3] == "resume-other-lr":
        unlearn(cfg(sys.argv[1], sys.argv[2], sys.argv[4], lr=1e-2), resume=True)
"""


def test_a_run_killed_in_one_process_resumes_in_two(tiny_model_dir: Path, demo_splits: Path, tmp_path: Path):
    """The checkpoint (prompt, optimizer moments, RNG, schedule) and the cached reference are rank 0's; the
    ranks above 0 get them by broadcast, so a run resumes at another world size and ends where it would have."""
    import importlib.util

    from safetensors.torch import load_file

    script = tmp_path / "resume_run.py"
    script.write_text(RESUME_SCRIPT)
    spec = importlib.util.spec_from_file_location("resume_run", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from spulctl.unlearn import unlearn

    unlearn(mod.cfg(tiny_model_dir, demo_splits, tmp_path / "straight"))

    def kill(event: dict) -> None:
        if event["kind"] == "step" and event["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        unlearn(mod.cfg(tiny_model_dir, demo_splits, tmp_path / "killed"), on_event=kill)
    assert (tmp_path / ".killed.ckpt" / "checkpoint.json").is_file()
    # another run's checkpoint: rank 0 finds out, and every rank raises its error (none is left waiting)
    other = _launch(tmp_path, 29524, str(script), str(tiny_model_dir), str(demo_splits), "resume-other-lr",
                    str(tmp_path / "killed"))
    assert other.returncode != 0
    assert (other.stdout + other.stderr).count("checkpoint belongs to a different run") >= 2
    two = _launch(tmp_path, 29521, str(script), str(tiny_model_dir), str(demo_splits), "resume",
                  str(tmp_path / "killed"))
    assert two.returncode == 0, two.stderr[-3000:]
    a = load_file(str(tmp_path / "straight" / "prompt.safetensors"))["prompt"]
    b = load_file(str(tmp_path / "killed" / "prompt.safetensors"))["prompt"]
    assert (a - b).abs().max().item() <= 1e-5
    assert not (tmp_path / ".killed.ckpt").exists()


REVEAL_ARGS = ["--entities", "Jonah Pellegrino", "--mode", "retain", "-n", "6", "--budget", "24",
               "--min-confidence", "0.5", "--embedder", "shingle", "--paraphrases", "0", "--arms-per-round", "2",
               "--samples-per-arm", "3", "--max-new-tokens", "12", "--no-complete-only"]


@pytest.mark.parametrize("fsdp", [False, True], ids=["split-rows", "fsdp"])
def test_reveal_in_two_processes(chat_model_dir: Path, tmp_path: Path, fsdp: bool):
    """Data-parallel: the ranks split each round's samples and gather them back, so the run generates the
    same number of texts as one process and rank 0 alone writes. FSDP: every rank samples every row alike (the
    sharded layers need the same passes on all ranks), so the records are exactly the single process's."""
    one = subprocess.run([sys.executable, "-m", "spulctl", "reveal", "--model", str(chat_model_dir), *REVEAL_ARGS,
                          "-o", str(tmp_path / "one.jsonl")], env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = _launch(tmp_path, 29522 + fsdp, "-m", "spulctl", "reveal", "--model", str(chat_model_dir), *REVEAL_ARGS,
                  "-o", str(tmp_path / "two.jsonl"), fsdp=fsdp)
    assert two.returncode == 0, two.stderr[-3000:]
    rows = {n: [json.loads(x) for x in (tmp_path / f"{n}.jsonl").read_text().splitlines()] for n in ("one", "two")}
    reports = {n: json.loads((tmp_path / f"{n}.report.json").read_text()) for n in ("one", "two")}
    # every round holds all 2 x 3 samples (rank 0's three and rank 1's three, gathered), within the budget
    assert [r["generated"] for r in reports["two"]["per_round"]] == [6] * len(reports["two"]["per_round"])
    assert reports["two"]["generated"] <= 24
    assert 1 <= len(rows["two"]) <= 6 and reports["two"]["kept"] == len(rows["two"])
    if fsdp:
        assert rows["two"] == rows["one"] and reports["two"]["per_round"][0]["instructions"] == \
            reports["one"]["per_round"][0]["instructions"]
    else:  # rank 1's rows are its own draws (its own seed): not the single process's texts
        assert [r["text"] for r in rows["two"]] != [r["text"] for r in rows["one"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{n}.{ext}" for n in ("one", "two") for ext in ("jsonl", "report.json"))
    assert two.stdout.count("wrote ") == 1, two.stdout
