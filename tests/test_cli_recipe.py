"""``--config recipe.toml`` on unlearn, familiarize and eval; offline hub aliases; predict's output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spulctl.cli import app

runner = CliRunner()


def _unlearn_args(model: Path, splits: Path, out: Path) -> list[str]:
    return ["unlearn", "--model", str(model), "--splits", str(splits), "-o", str(out), "--eval-limit", "0",
            "--retain-limit", "16", "--no-report-before"]


def test_recipe_sets_options_flags_win_and_lands_in_bundle_json(tiny_model_dir: Path, demo_splits: Path,
                                                                 tmp_path: Path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('prompt-tokens = 3\nmax_steps = 1\nepochs = 1\nlr = 0.05\nkl-direction = "reverse"\n')
    out = tmp_path / "bundle"
    result = runner.invoke(app, [*_unlearn_args(tiny_model_dir, demo_splits, out), "--config", str(recipe),
                                 "--lr", "0.01"])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["settings"]["prompt_tokens"] == 3 and meta["settings"]["kl_direction"] == "reverse"
    assert meta["settings"]["train"]["max_steps"] == 1
    assert meta["settings"]["train"]["lr"] == 0.01  # the command line overrides the recipe
    assert meta["recipe"]["content"]["lr"] == 0.05 and meta["recipe"]["path"] == str(recipe)
    import hashlib

    assert meta["recipe"]["sha256"] == hashlib.sha256(recipe.read_bytes()).hexdigest()


@pytest.mark.parametrize(("text", "expected"), [
    ("prompt_tokenz = 3\n", "unknown key 'prompt_tokenz'"),
    ("epochs = 'many'\n", "key 'epochs' = 'many'"),
    ("epochs = \n", "not valid TOML"),
])
def test_bad_recipe_is_one_line_naming_file_and_key(tiny_model_dir: Path, demo_splits: Path, tmp_path: Path,
                                                    text: str, expected: str):
    recipe = tmp_path / "r.toml"
    recipe.write_text(text)
    result = runner.invoke(app, [*_unlearn_args(tiny_model_dir, demo_splits, tmp_path / "b"), "--config", str(recipe)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(recipe) in lines[0] and expected in lines[0], result.stderr
    assert not (tmp_path / "b").exists()


def test_eval_recipe_is_copied_into_report(tiny_model_dir: Path, demo_splits: Path, tmp_path: Path):
    recipe = tmp_path / "eval.toml"
    recipe.write_text(f'model = "{tiny_model_dir}"\nlimit = 2\nbatch_size = 2\n')
    result = runner.invoke(app, ["eval", str(demo_splits), "-o", str(tmp_path / "report"), "--config", str(recipe)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["recipe"]["content"] == {"model": str(tiny_model_dir), "limit": 2, "batch_size": 2}
    assert all(m["n"] == 2 for m in report["results"]["model"].values())


def test_familiarize_accepts_a_recipe(tiny_model_dir: Path, demo_splits: Path, tmp_path: Path):
    recipe = tmp_path / "fam.toml"
    recipe.write_text('max-steps = 1\neval_limit = 0\nretain-limit = 8\nlora_r = 2\nbatch_size = 4\n')
    out = tmp_path / "fam"
    result = runner.invoke(app, ["familiarize", str(demo_splits), "-o", str(out), "--model", str(tiny_model_dir),
                                 "--config", str(recipe)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "spulctl-manifest.json").read_text())
    assert manifest["lora"]["r"] == 2 and manifest["steps"] == 1
    assert manifest["recipe"]["content"]["max-steps"] == 1


def test_hub_alias_offline_is_one_line_without_retries(demo_splits: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SPULCTL_HOME", str(demo_splits.parent / "home"))
    for args in (["eval", str(demo_splits), "--model", "llama-2-7b", "--limit", "2"], ["models", "pull", "opt-1.3b"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "offline" in lines[0] and "--model /path/to/" in lines[0]


def test_hub_unreachable_fails_fast_without_the_offline_switch(monkeypatch: pytest.MonkeyPatch):
    import socket

    from spulctl import models
    from spulctl.errors import ModelError

    def refuse(*_a, **_k):
        raise OSError("network is unreachable")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(ModelError, match="not in the local Hugging Face cache"):
        models.require_hub("llama-2-13b", "meta-llama/Llama-2-13b-hf")


def test_predict_prints_answer_text_and_scores_ids_behind_a_flag(tiny_model_dir: Path, tmp_path: Path):
    from spulctl.pipeline import run_export

    run_export(str(tiny_model_dir), tmp_path / "onnx", no_bundle=True)
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"text": "A fine film."}\n{"text": "A dull one."}\n')
    result = runner.invoke(app, ["predict", "--onnx", str(tmp_path / "onnx"), "--input", str(queries)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in result.stdout.splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert isinstance(row["answer"], str) and "top1" not in row
        assert set(row["scores"]) == {"negative", "positive"}
    with_ids = runner.invoke(app, ["predict", "--onnx", str(tmp_path / "onnx"), "--input", str(queries), "--ids"])
    assert with_ids.exit_code == 0, with_ids.output
    assert all(isinstance(json.loads(x)["top1"], int) for x in with_ids.stdout.splitlines())
