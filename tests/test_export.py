"""``spulctl export`` / ``predict``: ONNX parity with the torch classifier, manifests, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spulctl.cli import app
from spulctl.data.demo import demo_records
from spulctl.io import write_jsonl_atomic as write_jsonl
from spulctl.train import TrainConfig
from spulctl.unlearn import UnlearnConfig, unlearn

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
runner = CliRunner()


@pytest.fixture(scope="module")
def exported(tiny_model_dir: Path, demo_splits: Path, tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("export")
    unlearn(UnlearnConfig(model=str(tiny_model_dir), out=base / "bundle", splits=demo_splits, prompt_tokens=5,
                          eval_limit=0, retain_limit=60, train=TrainConfig(lr=5e-2, epochs=1, max_steps=3)))
    result = runner.invoke(app, ["export", "--model", str(tiny_model_dir), "--bundle", str(base / "bundle"),
                                 "-o", str(base / "onnx")])
    assert result.exit_code == 0, result.output
    return base


def test_onnx_matches_torch_classifier(exported: Path, tiny_model_dir: Path):
    from spulctl.bundle import PromptedClassifier, load_bundle
    from spulctl.export.runtime import OnnxPredictor
    from spulctl.models import load_model

    texts = [r["text"] for r in demo_records(120)]
    model, tok = load_model(str(tiny_model_dir), device="cpu")
    ref = PromptedClassifier(model, load_bundle(exported / "bundle"), tok).predict(texts)
    got = OnnxPredictor(exported / "onnx", provider="cpu", batch_size=16).predict(texts)
    assert [g["label"] for g in got] == [r["label"] for r in ref]
    diff = max(abs(g["scores"][w] - r["scores"][w]) for g, r in zip(got, ref, strict=True) for w in g["scores"])
    assert diff <= 1e-3, diff
    manifest = json.loads((exported / "onnx" / "manifest.json").read_text())
    assert manifest["prefix"] == "baked-initializers" and manifest["bundle"]["p"] == 5
    assert manifest["check"]["max_abs_score_diff"] <= 1e-3


def test_predict_cli_writes_jsonl_and_csv(exported: Path, tmp_path: Path):
    queries = write_jsonl(tmp_path / "q.jsonl", [{"text": r["text"]} for r in demo_records(10)])
    result = runner.invoke(app, ["predict", "--onnx", str(exported / "onnx"), "--input", str(queries),
                                 "--output", str(tmp_path / "p.jsonl"), "--provider", "cpu"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and set(rows[0]["scores"]) == {"negative", "positive"}
    result = runner.invoke(app, ["predict", "--onnx", str(exported / "onnx"), "--input", str(queries),
                                 "--output", str(tmp_path / "p.csv")])
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0] == "text,label,score_negative,score_positive" and len(lines) == 11
    again = runner.invoke(app, ["predict", "--onnx", str(exported / "onnx"), "--input", str(queries),
                                "--output", str(tmp_path / "p.csv")])
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_corrupted_prefix_is_refused(exported: Path, tmp_path: Path):
    import shutil

    copy = tmp_path / "onnx"
    shutil.copytree(exported / "onnx", copy)
    data = bytearray((copy / "prefix.safetensors").read_bytes())
    data[-3] ^= 0x55
    (copy / "prefix.safetensors").write_bytes(bytes(data))
    queries = write_jsonl(tmp_path / "q.jsonl", [{"text": "x y z"}])
    result = runner.invoke(app, ["predict", "--onnx", str(copy), "--input", str(queries)])
    assert result.exit_code == 2
    assert "prefix.safetensors: sha256 does not match" in result.output


def test_export_refuses_bundle_for_another_model(exported: Path, tmp_path: Path, tiny_model_dir: Path):
    import shutil

    from safetensors.torch import load_file, save_file

    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    f = next(other.glob("*.safetensors"))
    w = {k: (v * 1.01 if "embed" in k else v).contiguous() for k, v in load_file(str(f)).items()}
    save_file(w, str(f), metadata={"format": "pt"})
    result = runner.invoke(app, ["export", "--model", str(other), "--bundle", str(exported / "bundle"),
                                 "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "trained for model" in result.output
    assert not (tmp_path / "o").exists()


def test_no_bundle_export_serves_the_unprompted_model(tiny_model_dir: Path, tmp_path: Path):
    result = runner.invoke(app, ["export", "--model", str(tiny_model_dir), "--no-bundle", "-o", str(tmp_path / "u")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "u" / "manifest.json").read_text())
    assert manifest["prefix"] is None and manifest["check"]["max_abs_score_diff"] <= 1e-3
    bad = runner.invoke(app, ["export", "--model", str(tiny_model_dir), "-o", str(tmp_path / "v")])
    assert bad.exit_code == 2 and "--no-bundle" in bad.output
