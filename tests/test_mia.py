"""Membership inference: the zlib and reference attacks, `eval --mia-reference`, `familiarize --never-seen`."""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spulctl.cli import app
from spulctl.evaluate.mia import auc_tpr, likelihood_ratio, zlib_bytes, zlib_score

runner = CliRunner()


def test_zlib_score_hand_computed():
    # "a" deflates to 2 header bytes + 3 bytes of block + 4 bytes of Adler-32 checksum
    assert zlib_bytes("a") == 9 == len(zlib.compress(b"a"))
    # mean token log-prob −3 (NLL 3) over a 9-byte zlib entropy: −3 / 9
    assert zlib_score(-3.0, "a") == pytest.approx(-1 / 3)
    assert zlib_score((-2.0 + -4.0) / 2, "a") == pytest.approx(-3 / 9)
    # higher = more member-like: a likelier text scores higher, and so does the same likelihood on a text that is
    # harder to compress
    assert zlib_score(-1.0, "a") > zlib_score(-3.0, "a")
    repetitive, varied = "ab" * 50, "the quick brown fox jumps over the lazy dog while 7 zebras quietly hum"
    assert zlib_bytes(repetitive) < zlib_bytes(varied)
    assert zlib_score(-2.0, varied) > zlib_score(-2.0, repetitive)
    assert zlib_bytes("é") == len(zlib.compress("é".encode()))  # bytes of UTF-8, not characters


def test_zlib_scores_from_the_model_are_its_prompt_logprobs_over_zlib(frozen):
    import torch

    from spulctl.data.demo import demo_records
    from spulctl.data.task import TaskSpec, encode
    from spulctl.evaluate.mia import attack_scores, token_logprobs
    from spulctl.step import collate

    model, tok = frozen
    ex = encode(demo_records(5), TaskSpec(), tok)
    texts = [tok.decode(e.input_ids[:e.answer_pos + 1], skip_special_tokens=True) for e in ex]
    scores = attack_scores(model, ex, tok.pad_token_id, None, texts=texts)
    assert set(scores) == {"loss", "min_k", "zlib"}
    assert "zlib" not in attack_scores(model, ex, tok.pad_token_id, None)
    with torch.no_grad():
        for i, e in enumerate(ex):
            lp = token_logprobs(model, collate([e], tok.pad_token_id), None)[0, :e.answer_pos]
            assert scores["zlib"][i] == pytest.approx(float(lp.mean()) / zlib_bytes(texts[i]), rel=1e-5)
            assert scores["zlib"][i] < 0
    # zlib compresses the string the model read: the filled template, decoded back from the prompt's tokens
    assert texts == [TaskSpec().prompt(r["text"]) for r in demo_records(5)]


def test_reference_equal_to_target_cannot_tell():
    target = [-0.3, -1.2, -0.1, -2.5, -0.7, -0.4]
    ratio = likelihood_ratio(target, target)
    assert ratio == [0.0] * 6
    assert auc_tpr(ratio[:3], ratio[3:])["auc"] == 0.5
    with pytest.raises(ValueError, match="3 target scores vs 2"):
        likelihood_ratio([0.0, 1.0, 2.0], [0.0, 1.0])


def test_reference_attack_separates_what_the_loss_attack_cannot():
    """Records differ in difficulty far more than training moves them: the loss alone barely tells members, the
    reference (a model that never saw them) cancels the difficulty and leaves the training's lift."""
    import random

    rng = random.Random(0)
    difficulty = [rng.uniform(0.0, 5.0) for _ in range(200)]  # per-record CE of the label under any model
    member = [i % 2 == 0 for i in range(200)]
    reference = [-d for d in difficulty]  # never saw any record
    target = [-d + (0.3 if m else 0.0) + rng.uniform(-0.05, 0.05) for d, m in zip(difficulty, member, strict=True)]
    ratio = likelihood_ratio(target, reference)

    def split(scores: list[float]) -> tuple[list[float], list[float]]:
        return [x for x, m in zip(scores, member, strict=True) if m], [x for x, m in zip(scores, member, strict=True)
                                                                       if not m]

    loss, ref = auc_tpr(*split(target)), auc_tpr(*split(ratio))
    assert ref["auc"] == 1.0 and ref["tpr@0.01fpr"] == 1.0
    assert loss["auc"] < 0.65, loss


@pytest.fixture()
def prompt_bundle(small_bundle: Path) -> Path:
    return small_bundle


def test_eval_mia_reference_equal_to_the_model(tiny_model_dir: Path, demo_splits: Path, prompt_bundle: Path,
                                               tmp_path: Path):
    result = runner.invoke(app, ["eval", str(demo_splits), "--model", str(tiny_model_dir), "--bundle",
                                 str(prompt_bundle), "--limit", "12", "--mia-reference", str(tiny_model_dir),
                                 "-o", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["mia_reference"] == {"model": str(tiny_model_dir), "never_seen": None}
    for side in ("forget", "retain"):
        model_side, bundle_side = report["mia"]["model"][side], report["mia"]["bundle"][side]
        assert set(model_side) == set(bundle_side) == {"loss", "min_k", "zlib", "reference"}
        # the model is its own reference: every score is 0, the attack is at chance exactly
        assert model_side["reference"]["auc"] == 0.5
        assert 0.0 <= bundle_side["reference"]["auc"] <= 1.0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| reference AUC | reference TPR@1%FPR |" in md and "| zlib AUC |" in md
    assert f"Reference model: `{tiny_model_dir}` (not a familiarized model)" in md
    assert "reference AUC 0.500" in result.output


def test_eval_mia_without_reference_runs_three_attacks(tiny_model_dir: Path, demo_splits: Path, tmp_path: Path):
    result = runner.invoke(app, ["eval", str(demo_splits), "--model", str(tiny_model_dir), "--limit", "12", "--mia",
                                 "-o", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert set(report["mia"]["model"]["forget"]) == {"loss", "min_k", "zlib"}
    assert report["mia_reference"] == {"model": None, "skipped": "no --mia-reference given"}
    md = (tmp_path / "r" / "report.md").read_text()
    assert "Reference attack skipped: no --mia-reference given." in md and "reference AUC" not in md
    assert "reference attack skipped" in result.output


def test_eval_bad_mia_reference(tiny_model_dir: Path, demo_splits: Path, tmp_path: Path):
    missing = tmp_path / "no-such-model"
    result = runner.invoke(app, ["eval", str(demo_splits), "--model", str(tiny_model_dir), "--limit", "4",
                                 "--mia-reference", str(missing)])
    assert result.exit_code == 2, result.output
    assert f"--mia-reference {missing}" in result.output
    assert "Traceback" not in result.output


def test_never_seen_model_as_reference_and_subject(tiny_model_dir: Path, demo_splits: Path, tmp_path: Path):
    """`familiarize --never-seen` trains without train_forget (not even needed on disk); `eval` scores it as a
    subject (its test_forget accuracy) and names it as the MIA reference."""
    splits = tmp_path / "splits"
    shutil.copytree(demo_splits, splits)
    for f in splits.glob("train_forget.*"):
        f.unlink()
    out = tmp_path / "never"
    result = runner.invoke(app, ["familiarize", str(splits), "-o", str(out), "--model", str(tiny_model_dir),
                                 "--never-seen", "--max-steps", "2", "--batch-size", "8", "--retain-limit", "40",
                                 "--eval-limit", "10"])
    assert result.exit_code == 0, result.output
    assert "never saw train_forget" in result.output
    manifest = json.loads((out / "spulctl-manifest.json").read_text())
    assert manifest["never_seen"] is True and manifest["trained_on"] == ["train_retain"]
    assert manifest["records"] == {"train_forget": 0, "train_retain": 40}
    assert set(manifest["data_sha256"]) == {"train_retain"}
    result = runner.invoke(app, ["eval", str(demo_splits), "--model", str(tiny_model_dir), "--limit", "12",
                                 "--compare", f"never={out}", "--mia-reference", str(out), "-o", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["results"]["never"]["test_forget"]["n"] == 12
    assert 0.0 <= report["results"]["never"]["test_forget"]["accuracy"] <= 100.0
    assert [s["never_seen"] for s in report["subjects"]] == [None, True]
    assert report["mia_reference"] == {"model": str(out), "never_seen": True}
    assert report["mia"]["never"]["forget"]["reference"]["auc"] == 0.5  # its own reference
    md = (tmp_path / "r" / "report.md").read_text()
    assert "`never` familiarized with `--never-seen`" in md
    assert "(familiarized with `--never-seen`: it never saw train_forget)" in md
