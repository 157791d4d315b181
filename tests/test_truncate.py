"""Inputs of any length: one truncation policy (spulctl.data.truncate) wherever text is encoded.

A 200,000-word record goes through the library's encode, the torch classifier and every command on a tiny model with
a 64-token context window: each finishes (or refuses with one line, exit 2) and reports how many records it cut.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from spulctl.data.demo import demo_records
from spulctl.data.task import TaskSpec, encode, label_vocab
from spulctl.data.truncate import CHARS_PER_TOKEN, fit_prompts, resolve_max_length
from spulctl.errors import DataError, SpulError

CONTEXT = 64
LONG_WORDS = 200_000


def long_text(name: str = "Jonah Pellegrino") -> str:
    """A 200,000-word review that names ``name`` at the start."""
    return f"{name} was great. " + " ".join(["a fine film with great acting"] * (LONG_WORDS // 6))


@pytest.fixture(scope="module")
def short_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a 64-token context window (max_position_embeddings = 64)."""
    out = tmp_path_factory.mktemp("tiny-ctx64") / "model"
    shutil.copytree(tiny_model_dir, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["max_position_embeddings"] = CONTEXT
    (out / "config.json").write_text(json.dumps(cfg))
    return out


@pytest.fixture(scope="module")
def tok(short_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(short_model_dir)


def test_short_prompts_are_tokenised_whole(tok) -> None:
    spec = TaskSpec()
    texts = [r["text"] for r in demo_records(5)]
    ids, cut = fit_prompts(texts, spec, tok, [512] * len(texts))
    assert ids == [tok(spec.prompt(t), add_special_tokens=False)["input_ids"] for t in texts]
    assert cut == [False] * len(texts)


def test_long_text_keeps_template_and_start_of_text(tok) -> None:
    spec, text = TaskSpec(), long_text()
    start = time.perf_counter()
    (ids,), (cut,) = fit_prompts([text], spec, tok, [40])
    assert time.perf_counter() - start < 5  # never tokenises the 200,000 words whole
    assert cut and len(ids) <= 40
    decoded = tok.decode(ids)
    head, tail = spec.template.split("{text}")
    assert decoded.startswith(head + "Jonah Pellegrino") and decoded.endswith(tail)
    assert ids[-3:] == tok(spec.prompt("x"), add_special_tokens=False)["input_ids"][-3:]  # same answer position


def test_char_precut_counts_as_truncated(tok) -> None:
    text = "a " * (CHARS_PER_TOKEN * 100)  # fits in tokens once pre-cut, but characters were dropped
    (_,), (cut,) = fit_prompts([text], TaskSpec(), tok, [100])
    assert cut


def test_encode_bounds_every_example(tok) -> None:
    spec = TaskSpec()
    vocab = label_vocab(spec, tok)
    records = [*demo_records(3), {"text": long_text(), "label": "positive"}]
    examples = encode(records, spec, tok, vocab, max_length=96)
    assert [e.truncated for e in examples] == [False, False, False, True]
    long = examples[-1]
    assert len(long.input_ids) <= 96 and long.input_ids[long.answer_pos + 1:] == long.target_ids


def test_template_that_cannot_fit_is_one_line_error(tok) -> None:
    with pytest.raises(DataError, match="template alone"):
        encode([{"text": long_text(), "label": "positive"}], TaskSpec(), tok, max_length=5)


def test_resolve_max_length(short_model_dir: Path) -> None:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(short_model_dir)
    assert resolve_max_length(cfg) == CONTEXT
    assert resolve_max_length(cfg, prompt_tokens=4) == CONTEXT - 4
    assert resolve_max_length(cfg, 4, 50) == 50
    with pytest.raises(SpulError, match="context window of 64"):
        resolve_max_length(cfg, 4, 61)
    with pytest.raises(SpulError, match=">= 1"):
        resolve_max_length(cfg, 0, 0)


def test_prompted_classifier_cuts_long_text(short_model_dir: Path, tok) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from spulctl.bundle import Bundle, PromptedClassifier
    from spulctl.models import fingerprint

    model = AutoModelForCausalLM.from_pretrained(short_model_dir).eval()
    meta = {"base_model": {"fingerprint": fingerprint(model)}, "task": TaskSpec().to_dict()}
    clf = PromptedClassifier(model, Bundle(torch.randn(4, 64) * 0.1, meta, short_model_dir), tok)
    assert clf.max_length == CONTEXT - 4
    out = clf.predict(["A fine film.", long_text()])
    assert [o["truncated"] for o in out] == [False, True]


def _one_line_refusal(result) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if "Loading weights" not in line and line.strip()]
    assert "Traceback" not in result.output and len(lines) == 1 and lines[0].startswith("error:"), result.output


def _prepend(path: Path, record: dict) -> None:
    path.write_text(json.dumps(record) + "\n" + path.read_text())


def test_a_200000_word_record_through_every_command(short_model_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from spulctl.cli import app

    run = CliRunner().invoke
    data = tmp_path / "data.jsonl"
    records = [*demo_records()[:300], {"text": long_text(), "label": "positive"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    splits, fam, bundle = tmp_path / "splits", tmp_path / "fam", tmp_path / "bundle"
    r = run(app, ["split", str(data), "-o", str(splits), "--by", "entity", "--entities", "Jonah Pellegrino"])
    assert r.exit_code == 0, r.output
    for name, who in (("train_forget", "Jonah Pellegrino"), ("test_forget", "Jonah Pellegrino"),
                      ("train_retain", "Somebody"), ("test_retain", "Anybody")):  # a long record first in every split
        _prepend(splits / f"{name}.jsonl", {"text": long_text(who) + name, "label": "positive"})
    small = ["--max-steps", "1", "--batch-size", "4", "--retain-limit", "6"]
    r = run(app, ["familiarize", str(splits), "-o", str(fam), "--model", str(short_model_dir), *small,
                  "--eval-limit", "2"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((fam / "spulctl-manifest.json").read_text())
    assert manifest["truncation"]["truncated"] >= 1 and manifest["truncation"]["max_length"] == CONTEXT
    assert manifest["metrics"]["test_forget"]["truncated"] >= 1
    r = run(app, ["unlearn", "--model", str(fam), "--splits", str(splits), "-o", str(bundle), "-p", "4", *small,
                  "--eval-limit", "2"])
    assert r.exit_code == 0, r.output
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["data"]["truncation"]["truncated"] >= 1 and meta["data"]["truncation"]["max_length"] == CONTEXT - 4
    r = run(app, ["eval", str(splits), "--model", str(fam), "--bundle", str(bundle), "-o", str(tmp_path / "report"),
                  "--limit", "2"])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["truncation"]["truncated"]["bundle"]["test_forget"] >= 1
    _one_line_refusal(run(app, ["eval", str(splits), "--model", str(fam), "--limit", "2", "--max-length", "3"]))
    onnx = tmp_path / "onnx"
    r = run(app, ["export", "--model", str(fam), "--bundle", str(bundle), "-o", str(onnx)])
    assert r.exit_code == 0, r.output
    assert json.loads((onnx / "manifest.json").read_text())["max_length"] == CONTEXT - 4
    r = run(app, ["export", "--model", str(fam), "--bundle", str(bundle), "-o", str(tmp_path / "peft"),
                  "--format", "peft"])
    assert r.exit_code == 0, r.output
    queries = tmp_path / "queries.jsonl"
    queries.write_text(json.dumps({"text": "A fine film."}) + "\n" + json.dumps({"text": long_text()}) + "\n")
    r = run(app, ["predict", "--onnx", str(onnx), "--input", str(queries), "--output", str(tmp_path / "p.jsonl")])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [row["truncated"] for row in rows] == [False, True] and "1 cut to 60 tokens" in r.output
    _one_line_refusal(run(app, ["predict", "--onnx", str(onnx), "--input", str(queries), "--max-length", "61"]))
