"""Familiarize on the tiny model: artifacts, manifest, resume after a kill, CLI errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from spulctl.cli import app
from spulctl.familiarize import MANIFEST, FamiliarizeConfig, familiarize
from spulctl.train import TrainConfig

runner = CliRunner()


def _cfg(model: Path, splits: Path, out: Path, **train) -> FamiliarizeConfig:
    t = dict(lr=5e-3, epochs=1, batch_size=8, seed=0, checkpoint_every=2, max_steps=6, max_grad_norm=1.0)
    t.update(train)
    return FamiliarizeConfig(model=str(model), splits=splits, out=out, train=TrainConfig(**t), eval_limit=40,
                             retain_limit=80)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(next(folder.glob("*.safetensors"))))


def test_familiarize_cli_writes_merged_model_and_manifest(tiny_model_dir: Path, demo_splits: Path, tmp_path: Path):
    out = tmp_path / "fam"
    result = runner.invoke(app, ["familiarize", str(demo_splits), "-o", str(out), "--model", str(tiny_model_dir),
                                 "--max-steps", "4", "--batch-size", "8", "--retain-limit", "60",
                                 "--eval-limit", "30", "--lr", "0.005"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    weights = _weights(out)
    assert not any("lora" in k for k in weights), "LoRA must be merged"
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["steps"] == 4
    assert manifest["records"]["train_retain"] == 60
    assert set(manifest["metrics"]) == {"test_retain", "test_forget"}
    assert manifest["metrics"]["test_retain"]["n"] == 30
    assert len(manifest["data_sha256"]["train_forget"]) == 64
    base = _weights(tiny_model_dir)
    changed = [k for k in base if not torch.equal(base[k], weights[k])]
    assert changed and all("proj" in k for k in changed), changed  # only the adapted linear layers moved
    assert not list(tmp_path.glob(".fam.ckpt")), "checkpoints are removed after success"


def test_familiarize_teaches_the_answer_format(tiny_model_dir: Path, demo_splits: Path, tmp_path: Path):
    """The random tiny model cannot learn sentiment in a few steps, but it must learn to answer with a label word."""
    from spulctl.data.task import TaskSpec
    from spulctl.familiarize import evaluate_splits
    from spulctl.models import load_model

    model, tok = load_model(str(tiny_model_dir), device="cpu")
    before = evaluate_splits(model, tok, TaskSpec(), demo_splits, 100, 32, lambda _e: None)
    assert before["test_retain"]["off_label_share"] > 90
    cfg = _cfg(tiny_model_dir, demo_splits, tmp_path / "fam", max_steps=None, epochs=2, lr=1e-2)
    cfg.eval_limit = 100
    manifest = familiarize(cfg)
    history = [h["loss"] for h in manifest["loss_history"]]
    assert history[-1] < 0.8 * history[0], history
    assert manifest["metrics"]["test_retain"]["off_label_share"] == 0, manifest["metrics"]


def test_resume_after_kill_gives_the_same_model(tiny_model_dir: Path, demo_splits: Path, tmp_path: Path):
    straight = tmp_path / "straight"
    familiarize(_cfg(tiny_model_dir, demo_splits, straight))

    killed = tmp_path / "killed"

    def kill_at_step_5(event: dict) -> None:
        if event["kind"] == "step" and event["step"] == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        familiarize(_cfg(tiny_model_dir, demo_splits, killed), on_event=kill_at_step_5)
    assert not killed.exists(), "no partial output after a kill"
    state = json.loads((tmp_path / ".killed.ckpt" / "checkpoint.json").read_text())
    assert state["global_step"] == 4
    events: list[dict] = []
    manifest = familiarize(_cfg(tiny_model_dir, demo_splits, killed), resume=True, on_event=events.append)
    assert next(e for e in events if e["kind"] == "start")["resumed_from"] == 4
    assert manifest["steps"] == 6
    a, b = _weights(straight), _weights(killed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_checkpoint_of_another_run_is_refused(tiny_model_dir: Path, demo_splits: Path, tmp_path: Path):
    def kill(event: dict) -> None:
        if event["kind"] == "step" and event["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        familiarize(_cfg(tiny_model_dir, demo_splits, tmp_path / "m"), on_event=kill)
    result = runner.invoke(app, ["familiarize", str(demo_splits), "-o", str(tmp_path / "m"), "--model",
                                 str(tiny_model_dir), "--resume", "--lr", "0.1", "--max-steps", "6"])
    assert result.exit_code == 2
    assert "different run" in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["--epochs", "0"], "--epochs: must be >= 1"),
    (["--batch-size", "0"], "--batch-size: must be >= 1"),
    (["--lora-r", "0"], "lora: invalid settings"),
    (["--lr", "-1"], "invalid lr"),
])
def test_familiarize_bad_options(tiny_model_dir: Path, demo_splits: Path, tmp_path: Path, args, message):
    result = runner.invoke(app, ["familiarize", str(demo_splits), "-o", str(tmp_path / "o"), "--model",
                                 str(tiny_model_dir), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "o").exists()


def test_familiarize_missing_split_file(tiny_model_dir: Path, tmp_path: Path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "train_forget.jsonl").write_text('{"text": "a", "label": 0}\n')
    result = runner.invoke(app, ["familiarize", str(tmp_path / "s"), "-o", str(tmp_path / "o"), "--model",
                                 str(tiny_model_dir)])
    assert result.exit_code == 2
    assert "no train_retain" in result.output


def test_qlora_on_cpu_merges_into_full_precision(tiny_model_dir: Path, demo_splits: Path, tmp_path: Path):
    pytest.importorskip("bitsandbytes")
    cfg = _cfg(tiny_model_dir, demo_splits, tmp_path / "q", max_steps=3)
    cfg.load_in_4bit = True
    manifest = familiarize(cfg)
    assert manifest["load_in_4bit"] is True and manifest["steps"] == 3
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    assert "quantization_config" not in config
    weights = _weights(tmp_path / "q")
    assert all(w.dtype == torch.float32 for w in weights.values())
    base = _weights(tiny_model_dir)
    assert any(not torch.equal(base[k], weights[k]) for k in base), "the adapter was merged"


def test_never_seen_trains_on_train_retain_only(tiny_model_dir: Path, demo_splits: Path, tmp_path: Path):
    from spulctl.data.readers import load_split

    events: list[dict] = []
    cfg = _cfg(tiny_model_dir, demo_splits, tmp_path / "never", max_steps=2)
    cfg.never_seen, cfg.retain_limit = True, None
    manifest = familiarize(cfg, on_event=events.append)
    n_retain = len(load_split(demo_splits, "train_retain"))
    assert len(load_split(demo_splits, "train_forget")) > 0  # there was something to leave out
    assert next(e for e in events if e["kind"] == "start")["examples"] == n_retain
    assert any("training on 0 forget + " in e.get("message", "") and "--never-seen" in e["message"] for e in events)
    assert manifest["never_seen"] is True and manifest["records"] == {"train_forget": 0, "train_retain": n_retain}
    assert json.loads((tmp_path / "never" / MANIFEST).read_text())["never_seen"] is True
    plain = familiarize(_cfg(tiny_model_dir, demo_splits, tmp_path / "plain", max_steps=1))
    assert plain["never_seen"] is False and plain["records"]["train_forget"] > 0


def test_familiarize_in_bf16_saves_a_bf16_model(tiny_model_dir: Path, demo_splits: Path, tmp_path: Path):
    out = tmp_path / "fam"
    result = runner.invoke(app, ["familiarize", str(demo_splits), "-o", str(out), "--model", str(tiny_model_dir),
                                 "--max-steps", "3", "--batch-size", "8", "--retain-limit", "40",
                                 "--eval-limit", "10", "--lr", "0.005", "--dtype", "bfloat16"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["dtype"] == "bfloat16" and manifest["steps"] == 3
    assert all(math.isfinite(h["loss"]) for h in manifest["loss_history"])
    weights = _weights(out)
    assert {w.dtype for w in weights.values()} == {torch.bfloat16}  # merged and saved in the training dtype
    base = _weights(tiny_model_dir)
    assert any(not torch.equal(base[k].to(torch.bfloat16), weights[k]) for k in base if "proj" in k)
    bad = runner.invoke(app, ["familiarize", str(demo_splits), "-o", str(tmp_path / "x"), "--model",
                              str(tiny_model_dir), "--dtype", "float8"])
    assert bad.exit_code == 2 and "float8" in bad.output and not (tmp_path / "x").exists()
