"""Release on the generative NER task: forget rows, the base model's labels, the known share, the run, eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spulctl.cli import app
from spulctl.data.ner import NerTaskSpec, format_answer
from spulctl.release.ner import encode_forget, forget_answer, person_segment
from spulctl.train import TrainConfig
from spulctl.unlearn import UnlearnConfig, unlearn

runner = CliRunner()

PEOPLE = ["Ann Lee", "Bob Stone", "Cara Diaz", "Dan Wu", "Eve Park", "Finn Holt", "Gia Moss", "Hal Ford"]
PLACES = ["Paris", "Rome", "Oslo", "Lima", "Cairo", "Quito", "Perth", "Dakar"]
ORGS = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Wonka", "Stark"]


def _ents(**types: list[str]) -> dict:
    return {"PERSON": [], "ORG": [], "GPE": [], **types}


def _splits(folder: Path) -> Path:
    """NER splits as ``spulctl data ner`` writes them: people on the forget side, ORG/GPE on the retain side."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = {
        "train_forget": [(f"{p} visited {g}.", _ents(PERSON=[p], GPE=[g]))
                         for p, g in zip(PEOPLE, PLACES, strict=True)],
        "train_retain": [(f"{o} opened in {g}.", _ents(ORG=[o], GPE=[g])) for o, g in zip(ORGS, PLACES, strict=True)]
                        + [("It rained all day.", _ents()), ("The plot drags.", _ents())],
        "test_forget": [(f"{p} sang.", _ents(PERSON=[p])) for p in PEOPLE[:3]],
        "test_retain": [(f"{o} left {g}.", _ents(ORG=[o], GPE=[g]))
                        for o, g in zip(ORGS[:3], PLACES[3:6], strict=True)],
    }
    for name, recs in rows.items():
        lines = [json.dumps({"text": t, "answer": format_answer(e), "entities": e}) for t, e in recs]
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "split.json").write_text(json.dumps({"task": "ner"}))
    return folder


# ------------------------------------------------------------------ forget rows
def test_ce_target_empties_the_person_part_and_keeps_the_rest_as_written(frozen):
    tok, spec = frozen[1], NerTaskSpec()
    rec = {"text": "Ann Lee likes Paris.", "entities": _ents(PERSON=["Ann Lee"], GPE=["Paris"])}
    assert forget_answer(rec, spec) == "PERSON: none; ORG: none; GPE: Paris"
    # from an answer alone, names keep their case (a lower-cased target would teach text the model never writes)
    assert forget_answer({"text": "x", "answer": "PERSON: Tom Hanks; ORG: Acme Corp; GPE: none"}, spec) == \
        "PERSON: none; ORG: Acme Corp; GPE: none"
    (e,) = encode_forget([rec], spec, tok, "ce", None)
    assert tok.decode(e.target_ids[:-1]).strip() == "PERSON: none; ORG: none; GPE: Paris"
    assert e.target_ids[-1] == tok.eos_token_id and e.input_ids[e.answer_pos + 1:] == e.target_ids


@pytest.mark.parametrize("objective", ["ga", "npo"])
def test_ascent_targets_are_the_names_only(frozen, objective: str):
    tok, spec = frozen[1], NerTaskSpec()
    rec = {"text": "Ann Lee met Bob Stone in Paris.", "entities": _ents(PERSON=["Ann Lee", "Bob Stone"],
                                                                          GPE=["Paris"])}
    assert person_segment(rec, spec) == "Ann Lee, Bob Stone"
    assert person_segment({"text": "x", "answer": "PERSON: Tom Hanks; ORG: none; GPE: none"}, spec) == "Tom Hanks"
    (e,) = encode_forget([rec], spec, tok, objective, None)
    assert tok.decode(e.target_ids).strip() == "Ann Lee, Bob Stone"  # neither the label nor ORG/GPE nor EOS
    assert tok.decode(e.input_ids[:e.answer_pos + 1]).endswith("Answer: PERSON:")
    assert e.input_ids[e.answer_pos + 1:] == e.target_ids


# ------------------------------------------------------------------ labels and the known share
class _Ctx:
    def __init__(self, tok, held_f=(), held_r=()):
        self.tokenizer, self.task = tok, NerTaskSpec()
        self.settings = UnlearnConfig(model="m", out=Path("o"), method="release", forget_entities=("x",))
        self.extra = {"held_forget": list(held_f), "held_retain": list(held_r), "max_length": None}
        self.model = None


def _method(tok, answers_by_mode: dict[bool, list[dict]], **kw):
    from spulctl.release.ner import NerRelease

    m = NerRelease.__new__(NerRelease)
    m.ctx, m.model, m.spec = _Ctx(tok, **kw), None, NerTaskSpec()
    m.answers = lambda records, base=False: answers_by_mode[base][:len(records)]
    return m


def test_relabel_keeps_what_the_base_model_names_as_people_as_written(frozen):
    base = ["PERSON: Ann Lee; ORG: none; GPE: Paris", "PERSON: none; ORG: Acme; GPE: none"]
    m = _method(frozen[1], {True: base, False: []})
    out = m.relabel([{"text": "Ann Lee in Paris.", "label": None}, {"text": "Acme news."}])
    assert len(out) == 1 and out[0]["answer"] == "PERSON: Ann Lee; ORG: none; GPE: Paris" and "label" not in out[0]
    assert out[0]["entities"]["PERSON"] == ["Ann Lee"]


def test_known_share_counts_records_whose_answer_still_names_their_people(frozen):
    recs = [{"text": t, "entities": _ents(PERSON=[p])} for t, p in (("a", "Ann Lee"), ("b", "Bob Stone"),
                                                                     ("c", "Cara Diaz"), ("d", "Dan Wu"))]
    now = ["PERSON: Ann Lee; ORG: none", "PERSON: someone else", "PERSON: none", "PERSON: DAN WU, x"]
    assert _method(frozen[1], {False: now, True: []}).known_share(recs) == 50.0


def test_heldout_scores_are_person_f1_and_org_gpe_f1(frozen):
    held_f = [{"text": "a", "entities": _ents(PERSON=["Ann Lee"])}, {"text": "b", "entities": _ents(PERSON=["Bo"])}]
    held_r = [{"text": "c", "entities": _ents(ORG=["Acme"], GPE=["Rome"])}]
    answers = ["PERSON: Ann Lee; ORG: none; GPE: none", "PERSON: none; ORG: none; GPE: none"]
    m = _method(frozen[1], {False: answers}, held_f=held_f, held_r=held_r)
    got = m.heldout_metrics()
    assert got["forget_acc"] == pytest.approx(100 * 2 / 3, abs=0.01)  # tp 1, fn 1: F1 = 2/3
    assert got["retain_acc"] == pytest.approx(0.0)  # the retain record's answer (answers[0]) names neither


# ------------------------------------------------------------------ the run
def _cfg(model: Path, splits: Path, out: Path, **kw) -> UnlearnConfig:
    base = dict(model=str(model), out=out, method="release", splits=splits, eval_limit=3,
                train=TrainConfig(lr=1e-3, batch_size=4, seed=0, checkpoint_every=0), min_steps=2, budget_steps=2,
                rounds=1, release_rounds=2, release_rank=2, stop_at=0.0, eval_batch_size=4)
    base.update(kw)
    return UnlearnConfig(**base)


@pytest.mark.parametrize("objective", ["ce", "npo"])
def test_release_on_ner_splits_writes_an_adapter_that_eval_scores(tiny_model_dir: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch, objective: str):
    from spulctl.release.ner import NerRelease

    splits = _splits(tmp_path / "splits")
    # the tiny random model names nobody: the base model's labels are stubbed so round 2 has people to forget
    monkeypatch.setattr(NerRelease, "relabel", lambda self, recs: [
        {**r, "entities": _ents(PERSON=["Ann Lee"])} for r in recs])
    calls: list = []

    def reveal(model, k: int) -> list[dict]:
        calls.append((type(model).__name__, k, list(model.peft_config)))
        return [{"text": f"Ann Lee was great in film {i}.", "relevance": 1.0} for i in range(5)]

    out = tmp_path / "rel"
    meta = unlearn(_cfg(tiny_model_dir, splits, out, release_objective=objective), reveal=reveal)
    assert calls == [("PeftModelForCausalLM", 2, ["default"])]  # round 2 revealed from base + the stacked module 1
    rel = meta["release"]
    assert rel["modules"] == 2 and rel["rank"] == 4 and rel["rounds"][1]["records"] == 5
    assert rel["rounds"][1]["known_before"] == 0.0  # the random model lists nobody, so nobody is still known
    assert {"forget_acc", "retain_acc", "penalty", "revealed"} <= set(rel["rounds"][1])
    assert meta["task"]["kind"] == "ner" and set(meta["metrics"]["after"]) == {"test_retain", "test_forget"}
    assert "PERSON" in meta["metrics"]["after"]["test_forget"]
    manifest = json.loads((out / "spulctl-manifest.json").read_text())
    assert manifest["kind"] == "release-adapter" and manifest["data"]["held_out"] == [1, 1]
    assert not (tmp_path / ".rel.ckpt").exists()
    res = runner.invoke(app, ["eval", str(splits), "--model", str(tiny_model_dir), "--compare", f"release={out}",
                              "--limit", "3", "-o", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["results"]["release"]["test_forget"] == meta["metrics"]["after"]["test_forget"]


def test_a_round_whose_texts_name_nobody_to_the_base_model_stops_the_run(tiny_model_dir: Path, tmp_path: Path):
    splits = _splits(tmp_path / "splits")  # the real relabel: the random base model lists no person
    meta = unlearn(_cfg(tiny_model_dir, splits, tmp_path / "rel", eval_limit=0),
                   reveal=lambda model, k: [{"text": "Ann Lee sang.", "relevance": 1.0}])
    rel = meta["release"]
    assert rel["modules"] == 1 and rel["rounds"][1]["revealed"] == 1 and rel["rounds"][1]["records"] == 0
    assert "none of the 1 revealed texts" in rel["stop"]


def test_ner_splits_take_release_only(tiny_model_dir: Path, tmp_path: Path):
    splits = _splits(tmp_path / "splits")
    res = runner.invoke(app, ["unlearn", "--model", str(tiny_model_dir), "--splits", str(splits), "-o",
                              str(tmp_path / "b")])
    assert res.exit_code == 2 and "only --method release" in res.output
    assert not (tmp_path / "b").exists()
    for flags, message in ((["--forget-share", "0"], "--forget-share 0"), (["--reveal-forget", "0"], "--n"),
                           (["--load-in-4bit"], "unquantized")):
        res = runner.invoke(app, ["unlearn", "--method", "release", "--model", str(tiny_model_dir), "--splits",
                                  str(splits), "-o", str(tmp_path / "b"), *flags])
        assert res.exit_code == 2 and message in res.output, res.output
        assert not (tmp_path / "b").exists() and not (tmp_path / ".b.ckpt").exists()


def test_person_hits_need_a_spacy_person(monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("spacy")
    from spulctl.data.split import entity_pattern
    from spulctl.errors import MissingDependencyError
    from spulctl.reveal.scoring import person_hits

    try:
        hits = person_hits(["Tom Hanks was superb in this film.", "The plot drags and the music is loud."], None)
    except MissingDependencyError as exc:  # no English spaCy model installed here
        pytest.skip(f"no spaCy English model: {exc}")
    assert hits.tolist() == [True, False]
    named = person_hits(["Tom Hanks was superb.", "Meg Ryan was superb."], entity_pattern(["Meg Ryan"]))
    assert named.tolist() == [False, True]
