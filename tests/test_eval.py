"""``spulctl eval``: report files, comparisons, gates (pass and fail), JUnit."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spulctl.cli import app

runner = CliRunner()


@pytest.fixture()
def bundle(small_bundle: Path) -> Path:
    return small_bundle


def test_eval_writes_table1_report(tiny_model_dir: Path, demo_splits: Path, bundle: Path, tmp_path: Path):
    result = runner.invoke(app, ["eval", str(demo_splits), "--model", str(tiny_model_dir), "--bundle", str(bundle),
                                 "-o", str(tmp_path / "r"), "--limit", "20",
                                 "--compare", f"again={tiny_model_dir}", "--junit", str(tmp_path / "j.xml")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["schema_version"] == 1 and report["primary"] == "bundle"
    assert list(report["results"]) == ["model", "bundle", "again"]
    for per in report["results"].values():
        assert set(per) == {"train_retain", "train_forget", "test_retain", "test_forget"}
        assert all(m["n"] == 20 for m in per.values())
    # the same model evaluated twice gives identical numbers and zero deltas
    assert report["results"]["again"] == report["results"]["model"]
    assert all(d["accuracy"] == 0 for d in report["deltas"]["again"].values())
    md = (tmp_path / "r" / "report.md").read_text()
    assert "test_forget ↓" in md and "| bundle |" in md
    assert "<testsuite" in (tmp_path / "j.xml").read_text()


def test_gate_pass_and_fail(tiny_model_dir: Path, demo_splits: Path, bundle: Path, tmp_path: Path):
    base = ["eval", "--splits", str(demo_splits), "--model", str(tiny_model_dir), "--bundle", str(bundle),
            "--limit", "20"]
    ok = runner.invoke(app, [*base, "--max-forget-acc", "100", "--max-retain-drop", "100"])
    assert ok.exit_code == 0, ok.output
    assert "pass max-forget-acc" in ok.output
    bad = runner.invoke(app, [*base, "--min-retain-acc", "101", "--max-forget-acc", "-1", "--junit",
                              str(tmp_path / "j.xml")])
    assert bad.exit_code == 1
    assert "FAIL min-retain-acc" in bad.output and "FAIL max-forget-acc" in bad.output
    junit = (tmp_path / "j.xml").read_text()
    assert 'failures="2"' in junit and "min-retain-acc" in junit


def test_eval_refuses_bundle_for_another_model(demo_splits: Path, bundle: Path, tmp_path: Path,
                                               tiny_model_dir: Path):
    import shutil

    from safetensors.torch import load_file, save_file

    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    weights_file = next(other.glob("*.safetensors"))
    weights = load_file(str(weights_file))
    weights = {k: (v * 1.01 if "embed" in k else v) for k, v in weights.items()}
    save_file({k: v.contiguous() for k, v in weights.items()}, str(weights_file), metadata={"format": "pt"})
    result = runner.invoke(app, ["eval", str(demo_splits), "--model", str(other), "--bundle", str(bundle),
                                 "--limit", "5"])
    assert result.exit_code == 2 and "trained for model" in result.output


def test_eval_bad_compare_and_missing_splits(tiny_model_dir: Path, tmp_path: Path, demo_splits: Path):
    r = runner.invoke(app, ["eval", str(demo_splits), "--model", str(tiny_model_dir), "--compare", "novalue"])
    assert r.exit_code == 2 and "name=model-or-bundle" in r.output
    r = runner.invoke(app, ["eval", "--model", str(tiny_model_dir)])
    assert r.exit_code == 2 and "splits directory" in r.output
    (tmp_path / "empty").mkdir()
    r = runner.invoke(app, ["eval", str(tmp_path / "empty"), "--model", str(tiny_model_dir)])
    assert r.exit_code == 2 and "no split files" in r.output


def test_membership_inference_report_and_gate(tiny_model_dir: Path, demo_splits: Path, bundle: Path, tmp_path: Path):
    result = runner.invoke(app, ["eval", str(demo_splits), "--model", str(tiny_model_dir), "--bundle", str(bundle),
                                 "--limit", "24", "-o", str(tmp_path / "r"), "--max-mia-auc", "1.01"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    for subject in ("model", "bundle"):
        for side in ("forget", "retain"):
            for attack in ("loss", "min_k"):
                assert 0.0 <= report["mia"][subject][side][attack]["auc"] <= 1.0
    assert "Membership inference" in (tmp_path / "r" / "report.md").read_text()
    fail = runner.invoke(app, ["eval", str(demo_splits), "--model", str(tiny_model_dir), "--bundle", str(bundle),
                               "--limit", "24", "--max-mia-auc", "0"])
    assert fail.exit_code == 1 and "FAIL max-mia-auc" in fail.output


def test_auc_tpr_on_separable_scores():
    from spulctl.evaluate.mia import auc_tpr

    assert auc_tpr([2.0, 3.0, 4.0], [0.0, 1.0])["auc"] == 1.0
    assert auc_tpr([0.0, 1.0], [2.0, 3.0])["auc"] == 0.0
    assert auc_tpr([1.0, 1.0], [1.0, 1.0])["auc"] == 0.5


def test_token_logprobs_match_full_logits(tiny_model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spulctl.data.demo import demo_records
    from spulctl.data.task import TaskSpec, encode
    from spulctl.evaluate.mia import token_logprobs
    from spulctl.step import collate

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    batch = collate(encode(demo_records(3), TaskSpec(), tok), tok.pad_token_id)
    with torch.no_grad():
        fast = token_logprobs(model, batch, None, chunk=5)
        full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.log_softmax(-1)
    ref = full[:, :-1].gather(-1, batch.input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    mask = batch.attention_mask[:, 1:].bool()
    torch.testing.assert_close(fast[mask], ref[mask], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="Triton on CPU needs TRITON_INTERPRET=1")
def test_token_logprobs_through_the_fused_head_match_torch(tiny_model_dir: Path, demo_splits: Path, bundle: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spulctl.bundle import load_bundle
    from spulctl.data.demo import demo_records
    from spulctl.data.task import TaskSpec, encode
    from spulctl.evaluate.mia import token_logprobs
    from spulctl.step import collate

    pytest.importorskip("triton")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    batch = collate(encode(demo_records(2), TaskSpec(), tok), tok.pad_token_id)
    prompt = load_bundle(bundle).prompt
    mask = batch.attention_mask[:, 1:].bool()
    with torch.no_grad():
        for phi in (None, prompt):
            fused = token_logprobs(model, batch, phi, kernels="triton")
            ref = token_logprobs(model, batch, phi, kernels="torch")
            torch.testing.assert_close(fused[mask], ref[mask], rtol=1e-5, atol=1e-5)
    bad = runner.invoke(app, ["eval", str(demo_splits), "--model", str(tiny_model_dir), "--limit", "2", "--mia",
                              "--kernels", "cuda"])
    assert bad.exit_code == 2 and "--kernels cuda" in bad.output


def test_plots_are_pngs(tiny_model_dir: Path, demo_splits: Path, bundle: Path, tmp_path: Path):
    pytest.importorskip("matplotlib")
    result = runner.invoke(app, ["eval", str(demo_splits), "--model", str(tiny_model_dir), "--bundle", str(bundle),
                                 "--limit", "30", "--plots", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    for name in ("tsne.png", "tradeoff.png"):
        data = (tmp_path / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    # plots asked for inside the report directory survive the report being published
    inside = runner.invoke(app, ["eval", str(demo_splits), "--model", str(tiny_model_dir), "--bundle", str(bundle),
                                 "--limit", "10", "-o", str(tmp_path / "r"), "--plots", str(tmp_path / "r" / "plots")])
    assert inside.exit_code == 0, inside.output
    assert (tmp_path / "r" / "report.json").is_file()
    assert (tmp_path / "r" / "plots" / "tsne.png").read_bytes()[:4] == b"\x89PNG"


def test_robustness_probes(tiny_model_dir: Path, demo_splits: Path, bundle: Path, tmp_path: Path):
    from spulctl.evaluate.robustness import probe_records, rewrites

    probes = rewrites(demo_splits)
    assert {"upper", "lower", "no-punct", "first-name", "last-name"} <= set(probes)
    rows = probe_records([{"text": "Jonah Pellegrino shines.", "label": "positive"}], probes["last-name"])
    assert rows == [{"text": "Pellegrino shines.", "label": "positive"}]
    result = runner.invoke(app, ["eval", str(demo_splits), "--model", str(tiny_model_dir), "--bundle", str(bundle),
                                 "--limit", "12", "--robustness", "-o", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    for subject in ("model", "bundle"):
        assert {"probe:upper", "probe:first-name"} <= set(report["results"][subject])
    assert "Robustness" in (tmp_path / "r" / "report.md").read_text()


def test_name_probes_take_the_bundles_names_when_the_split_has_none(tmp_path: Path, demo_splits: Path):
    import shutil

    from spulctl.evaluate.robustness import bundle_names, rewrites

    plain = tmp_path / "splits"  # the same records without split.json (as the paper's SST-2 split ships)
    shutil.copytree(demo_splits, plain)
    (plain / "split.json").unlink()
    assert "last-name" not in rewrites(plain)
    b1, b2, b3 = (tmp_path / n for n in ("b1", "b2", "b3"))
    for folder, plan in ((b1, {"entities": ["Jonah Pellegrino", "Priya Raman"]}),
                         (b2, {"entities": ["Priya Raman", "Ann Lee"]}), (b3, None)):
        folder.mkdir()
        (folder / "bundle.json").write_text(json.dumps({"data": {"plan": plan}}))
    assert bundle_names([b1, b2, b3, tmp_path / "missing"]) == ["Jonah Pellegrino", "Priya Raman", "Ann Lee"]
    probes = rewrites(plain, [b1])
    assert probes["last-name"]("Jonah Pellegrino shines.") == "Pellegrino shines."
    assert rewrites(demo_splits, [b2])["first-name"]("Jonah Pellegrino shines.") == "Jonah shines."  # split.json wins


def test_onnx_backend_matches_torch(tiny_model_dir: Path, demo_splits: Path, bundle: Path, tmp_path: Path):
    """--backend onnx scores each subject through its ONNX Runtime export: the same report numbers as torch."""
    pytest.importorskip("onnxruntime")
    reports = {}
    for backend in ("torch", "onnx"):
        result = runner.invoke(app, ["eval", str(demo_splits), "--model", str(tiny_model_dir), "--bundle",
                                     str(bundle), "-o", str(tmp_path / backend), "--limit", "30", "--robustness",
                                     "--backend", backend])
        assert result.exit_code == 0, result.output
        reports[backend] = json.loads((tmp_path / backend / "report.json").read_text())
    assert reports["onnx"]["backend"] == "onnx"
    assert reports["onnx"]["results"] == reports["torch"]["results"]
    assert any(k.startswith("probe:") for k in reports["onnx"]["results"]["bundle"])
    bad = runner.invoke(app, ["eval", str(demo_splits), "--model", str(tiny_model_dir), "--backend", "tensorrt"])
    assert bad.exit_code != 0 and "--backend tensorrt" in bad.output
