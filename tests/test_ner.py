"""The generative NER task: data builder, answer format, P/R/F1, teacher-forced familiarization, generation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from spulctl.cli import app
from spulctl.data.ner import NerTaskSpec, encode_ner, format_answer, parse_answer
from spulctl.evaluate.ner_metrics import prf

runner = CliRunner()

SENTENCES = [
    "Barack Obama gave a speech in Chicago on Tuesday.",
    "Tom Hanks and Meg Ryan star in this film.",
    "Steven Spielberg directed the movie for Universal Pictures.",
    "Angela Merkel met the press in Berlin.",
    "Microsoft opened a new office in London.",
    "The United Nations held a meeting in Geneva.",
    "Google and Apple compete in California.",
    "Toyota builds cars in Japan.",
    "The acting is dull and the plot drags.",
    "A warm, funny and heartfelt story.",
    "It is far too long for its own good.",
    "The soundtrack is lovely.",
]


def _records(types: dict[str, list[str]]) -> dict:
    return {"PERSON": [], "ORG": [], "GPE": [], **types}


# ------------------------------------------------------------------ answer format
def test_answer_format_round_trips():
    ents = _records({"PERSON": ["Tom Hanks", "Meg Ryan's"], "GPE": ["New York"]})
    answer = format_answer(ents)
    assert answer == "PERSON: Tom Hanks, Meg Ryan; ORG: none; GPE: New York"
    assert parse_answer(answer) == {"PERSON": {"tom hanks", "meg ryan"}, "ORG": set(), "GPE": {"new york"}}
    assert format_answer(_records({})) == "PERSON: none; ORG: none; GPE: none"
    assert format_answer(_records({"ORG": ["A, B; C"]})) == "PERSON: none; ORG: A B C; GPE: none"


@pytest.mark.parametrize(("text", "expected"), [
    ("", {}),
    ("blah blah", {}),
    ("PERSON: ; ORG: none, , ; GPE:", {}),
    ("gpe: paris ;person:  Ann  Lee ,Bob.", {"GPE": {"paris"}, "PERSON": {"ann lee", "bob"}}),
    ("PERSON: ann; PERSON: bob; LOC: mars", {"PERSON": {"ann"}}),
    ("ORG: acme\nPERSON: nobody", {"ORG": {"acme"}}),
    ("PERSON: ann; ORG: acme; GPE: none; PERSON: ann; ORG: acme; GP", {"PERSON": {"ann"}, "ORG": {"acme"}}),
])
def test_parser_tolerates_junk(text, expected):
    assert parse_answer(text) == {t: expected.get(t, set()) for t in ("PERSON", "ORG", "GPE")}


# ------------------------------------------------------------------ P/R/F1
def test_prf_micro_over_records_by_hand():
    gold = [{"PERSON": {"a", "b"}, "ORG": set(), "GPE": {"x"}},
            {"PERSON": {"c"}, "ORG": {"o"}, "GPE": set()}]
    pred = [{"PERSON": {"a"}, "ORG": {"z"}, "GPE": {"x"}},
            {"PERSON": {"c", "d"}, "ORG": set(), "GPE": set()}]
    m = prf(gold, pred)
    # PERSON: tp 2 (a, c), fp 1 (d), fn 1 (b) -> P 2/3, R 2/3, F1 2/3
    assert (m["PERSON"]["tp"], m["PERSON"]["fp"], m["PERSON"]["fn"]) == (2, 1, 1)
    assert m["PERSON"]["precision"] == pytest.approx(200 / 3) and m["PERSON"]["f1"] == pytest.approx(200 / 3)
    # ORG: tp 0, fp 1, fn 1 -> 0 everywhere
    assert (m["ORG"]["precision"], m["ORG"]["recall"], m["ORG"]["f1"]) == (0, 0, 0)
    # GPE: perfect
    assert (m["GPE"]["precision"], m["GPE"]["recall"], m["GPE"]["f1"]) == (100, 100, 100)
    # all: tp 3, fp 2, fn 2 -> F1 = 6 / 10
    assert m["all"]["f1"] == pytest.approx(60.0)
    assert m["exact_match"] == 0.0 and m["n"] == 2


def test_prf_undefined_scores_are_none_not_zero():
    m = prf([{"PERSON": set()}], [{"PERSON": set()}], ("PERSON",))
    assert m["PERSON"] == {"precision": None, "recall": None, "f1": None, "tp": 0, "fp": 0, "fn": 0}
    assert m["exact_match"] == 100.0
    m = prf([{"PERSON": set()}], [{"PERSON": {"x"}}], ("PERSON",))
    assert (m["PERSON"]["precision"], m["PERSON"]["recall"], m["PERSON"]["f1"]) == (0, None, 0)


# ------------------------------------------------------------------ data builder (spaCy)
@pytest.fixture(scope="module")
def ner_texts(tmp_path_factory) -> Path:
    pytest.importorskip("spacy")
    path = tmp_path_factory.mktemp("ner-in") / "texts.jsonl"
    rows = SENTENCES + SENTENCES[:3]  # duplicates are dropped before splitting
    path.write_text("".join(json.dumps({"sentence": s, "label": "whatever"}) + "\n" for s in rows))
    return path


@pytest.fixture(scope="module")
def built(ner_texts: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ner") / "splits"
    result = runner.invoke(app, ["data", "ner", str(ner_texts), "-o", str(out), "--test-size", "0.5",
                                 "--empty-share", "0.2", "--seed", "1"])
    if result.exit_code == 2 and "spaCy" in result.output:
        pytest.skip(result.output.strip())
    assert result.exit_code == 0, result.output
    return out


def _read(folder: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (folder / f"{name}.jsonl").read_text().splitlines()]


def test_builder_membership_and_answers(built: Path):
    info = json.loads((built / "split.json").read_text())
    assert info["task"] == "ner" and info["texts"] == {"given": 15, "unique": 12, "labelled": 12}
    splits = {n: _read(built, n) for n in ("train_forget", "train_retain", "test_forget", "test_retain")}
    for name, recs in splits.items():
        assert recs and info["counts"][name] == len(recs)
        for r in recs:
            assert r["answer"] == format_answer(r["entities"])
            has_person = bool(r["entities"]["PERSON"])
            assert has_person == name.endswith("forget"), (name, r)
    texts = [r["text"] for recs in splits.values() for r in recs]
    assert len(texts) == len(set(texts))
    forget_text = {r["text"]: r for recs in (splits["train_forget"], splits["test_forget"]) for r in recs}
    assert "tom hanks" in {n.lower() for n in forget_text[SENTENCES[1]]["entities"]["PERSON"]}
    retain = [r for n in ("train_retain", "test_retain") for r in splits[n]]
    empty = [r for r in retain if not any(r["entities"].values())]
    pools = info["pools"]
    assert len(empty) == pools["none_kept"] == round(0.2 / 0.8 * pools["org_gpe_only"])
    assert pools["person"] + pools["org_gpe_only"] + pools["none"] == 12
    assert sum(info["records_with"][n]["PERSON"] for n in splits) == pools["person"]


def test_builder_is_deterministic_and_never_clobbers(built: Path, ner_texts: Path, tmp_path: Path):
    again = tmp_path / "again"
    args = ["data", "ner", str(ner_texts), "-o", str(again), "--test-size", "0.5", "--empty-share", "0.2",
            "--seed", "1"]
    assert runner.invoke(app, args).exit_code == 0
    for name in ("train_forget", "train_retain", "test_forget", "test_retain"):
        assert (again / f"{name}.jsonl").read_bytes() == (built / f"{name}.jsonl").read_bytes()
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    limited = runner.invoke(app, [*args[:4], str(tmp_path / "few"), "--limit", "3"])
    assert limited.exit_code == 2 and "is empty" in limited.output
    assert not (tmp_path / "few").exists()


# ------------------------------------------------------------------ task encoding, training and generation
def _ner_splits(folder: Path) -> Path:
    """Hand-written NER splits (no spaCy needed), as ``spulctl data ner`` writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = {"train_forget": [("Ann Lee likes Paris.", {"PERSON": ["Ann Lee"], "GPE": ["Paris"]}),
                             ("Bob sang.", {"PERSON": ["Bob"]})],
            "train_retain": [("Acme is in Rome.", {"ORG": ["Acme"], "GPE": ["Rome"]}), ("It rained.", {})],
            "test_forget": [("Ann Lee sang.", {"PERSON": ["Ann Lee"]})],
            "test_retain": [("Acme left Rome.", {"ORG": ["Acme"], "GPE": ["Rome"]})]}
    for name, recs in rows.items():
        lines = [json.dumps({"text": t, "answer": format_answer(_records(e)), "entities": _records(e)})
                 for t, e in recs]
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "split.json").write_text(json.dumps({"task": "ner"}))
    return folder


def test_encoding_supervises_every_answer_token(frozen):
    from spulctl.step import collate

    tok = frozen[1]
    recs = [{"text": "Ann Lee likes Paris.", "answer": "PERSON: Ann Lee; ORG: none; GPE: Paris"},
            {"text": "It rained.", "entities": _records({})}]
    spec = NerTaskSpec()
    examples = encode_ner(recs, spec, tok)
    for r, e in zip(recs, examples, strict=True):
        answer = r.get("answer") or format_answer(r["entities"])
        n = len(tok(" " + answer, add_special_tokens=False)["input_ids"]) + 1  # + EOS
        assert len(e.target_ids) == n > 5 and e.target_ids[-1] == tok.eos_token_id
        assert e.input_ids[e.answer_pos + 1:] == e.target_ids
        assert tok.decode(e.input_ids[: e.answer_pos + 1]) == spec.prompt(r["text"])
    batch = collate(examples, tok.pad_token_id)
    assert int((batch.targets != -100).sum()) == sum(len(e.target_ids) for e in examples)


def test_teacher_forced_steps_reduce_the_answer_loss(tiny_model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spulctl.familiarize import _LabelObjective

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).train()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    recs = [{"text": "Ann Lee likes Paris.", "entities": _records({"PERSON": ["Ann Lee"], "GPE": ["Paris"]})},
            {"text": "Acme is in Rome.", "entities": _records({"ORG": ["Acme"], "GPE": ["Rome"]})}]
    objective = _LabelObjective(model, encode_ner(recs, NerTaskSpec(), tok), tok.pad_token_id)
    opt = torch.optim.Adam([p for _, p in objective.named_parameters()], lr=3e-3)
    losses = []
    for _ in range(8):
        loss = objective.loss([0, 1])["loss"]
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.7 * losses[0], losses


def test_generation_parses_to_per_type_sets(frozen):
    from spulctl.evaluate.ner_metrics import generate_answers, score_ner_records

    model, tok = frozen
    spec = NerTaskSpec(max_new_tokens=6)
    texts = ["Ann Lee likes Paris.", "A much longer text about Acme and Rome and nobody else at all."]
    answers, cut = generate_answers(model, tok, spec, texts, batch_size=2)
    assert len(answers) == 2 and cut == 0
    assert all(isinstance(a, str) for a in answers)
    alone, _ = generate_answers(model, tok, spec, texts[:1], batch_size=1)
    assert alone[0] == answers[0], "left padding must not change a greedy answer"
    events: list[dict] = []
    recs = [{"text": t, "entities": _records({"GPE": ["Paris"]})} for t in texts]
    m = score_ner_records(model, tok, spec, recs, 2, events.append, "test")
    assert set(m) >= {"PERSON", "ORG", "GPE", "all", "exact_match", "accuracy", "n", "truncated"}
    assert m["GPE"]["tp"] + m["GPE"]["fn"] == 2
    assert [e["kind"] for e in events] == ["eval-start", "eval-step", "eval-done"]


def test_familiarize_on_ner_splits(tiny_model_dir: Path, tmp_path: Path):
    from spulctl.familiarize import FamiliarizeConfig, familiarize
    from spulctl.train import TrainConfig

    splits = _ner_splits(tmp_path / "splits")
    cfg = FamiliarizeConfig(model=str(tiny_model_dir), splits=splits, out=tmp_path / "fam", eval_limit=1,
                            train=TrainConfig(lr=5e-3, epochs=1, batch_size=2, seed=0, max_steps=2))
    manifest = familiarize(cfg)
    assert manifest["task"]["kind"] == "ner" and manifest["steps"] == 2
    assert set(manifest["metrics"]) == {"test_retain", "test_forget"}
    assert manifest["metrics"]["test_forget"]["PERSON"]["fn"] + manifest["metrics"]["test_forget"]["PERSON"][
        "tp"] == 1


def test_eval_on_ner_splits_reports_per_type_scores(tiny_model_dir: Path, tmp_path: Path):
    splits = _ner_splits(tmp_path / "splits")
    out = tmp_path / "report"
    result = runner.invoke(app, ["eval", str(splits), "--model", str(tiny_model_dir), "--compare",
                                 f"again={tiny_model_dir}", "-o", str(out), "--limit", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "ner" and set(report["results"]) == {"model", "again"}
    per = report["results"]["model"]
    assert set(per) == {"train_retain", "train_forget", "test_retain", "test_forget"}
    assert all(per[s]["n"] == 1 and set(per[s]) >= {"PERSON", "ORG", "GPE", "all"} for s in per)
    assert report["results"]["again"] == per, "the same model must score the same (greedy)"
    assert all(d in (None, 0.0) for s in report["deltas"]["again"].values() for d in s.values())
    md = (out / "report.md").read_text()
    assert "PERSON F1 (Δ)" in md and "| again | test_forget | 1 |" in md
    refused = runner.invoke(app, ["eval", str(splits), "--model", str(tiny_model_dir), "--mia"])
    assert refused.exit_code == 2 and "--mia is not supported on NER splits" in refused.output
