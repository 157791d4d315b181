"""Forget-share batches, the step budget, the aggregate score, the selection and stop rules, rewrites."""

from __future__ import annotations

from pathlib import Path

import pytest

from spulctl.data.rewrite import counterfactuals, forget_variants, surname_aliases, variant_rewriters
from spulctl.data.sampling import MixedBatches, step_budget
from spulctl.errors import SpulError
from spulctl.selection import StopRule, aggregate_score, best_index


@pytest.mark.parametrize(("n_forget", "n_retain", "share", "k_f"),
                         [(10, 1000, 0.5, 8), (3, 600, 0.25, 4), (50, 7, 0.5, 8), (5, 0, 0.5, 16)])
def test_every_batch_holds_the_forget_share(n_forget, n_retain, share, k_f):
    mb = MixedBatches(n_forget, n_retain, 16, share, steps_per_round=20, seed=3)
    assert mb.forget_per_batch == k_f
    for r in range(3):
        for batch in mb.round(r):
            assert len(batch) == 16
            assert sum(i < n_forget for i in batch) == k_f
            assert all(0 <= i < n_forget + n_retain for i in batch)


def test_batches_are_seeded_and_rounds_independent():
    a = MixedBatches(30, 500, 16, 0.5, 10, seed=1)
    assert a.round(2) == MixedBatches(30, 500, 16, 0.5, 10, seed=1).round(2)  # a resumed run draws the same
    assert a.round(2) != MixedBatches(30, 500, 16, 0.5, 10, seed=2).round(2)
    assert a.round(0) != a.round(1)


def test_retain_rows_do_not_repeat_before_the_pool_is_used_up_and_forget_rows_cycle():
    mb = MixedBatches(5, 400, 16, 0.5, steps_per_round=50, seed=0)  # 8 retain a step: 50 steps = 400 rows
    rows = [i for b in mb.round(0) for i in b]
    retain = [i for i in rows if i >= 5]
    forget = [i for i in rows if i < 5]
    assert sorted(retain) == list(range(5, 405))  # each retain row exactly once
    assert sorted(set(forget)) == list(range(5)) and len(forget) == 400  # forget rows cycle, 80 passes
    counts = [forget.count(i) for i in range(5)]
    assert max(counts) - min(counts) == 0  # whole passes: each forget row equally often


def test_bad_share_and_empty_forget_are_refused():
    with pytest.raises(SpulError, match="forget-share"):
        MixedBatches(5, 10, 16, 1.5, 1)
    with pytest.raises(SpulError, match="empty"):
        MixedBatches(0, 10, 16, 0.5, 1)


def test_step_budget_counts_passes_over_the_forget_set_and_clamps():
    b = step_budget(n_forget=240, forget_per_batch=8, passes=10, min_steps=100, max_steps=600, rounds=10)
    assert b.steps == 300 and b.rounds == 10 and b.steps_per_round == 30
    assert b.forget_passes == pytest.approx(10.0)
    small = step_budget(20, 8, 10, 100, 600, 10)  # 25 steps wanted -> at least 100
    assert small.steps == 100 and "clamped" in small.reason
    big = step_budget(5000, 8, 10, 100, 600, 10)  # 6250 wanted -> at most 600
    assert big.steps == 600 and big.forget_passes == pytest.approx(600 * 8 / 5000)
    odd = step_budget(100, 8, 3, 10, 600, 7)  # 38 steps in 7 rounds -> rounds of 6, 42 steps
    assert odd.steps % odd.steps_per_round == 0 and odd.rounds * odd.steps_per_round == odd.steps
    with pytest.raises(SpulError):
        step_budget(100, 8, 3, 50, 10, 7)


def test_aggregate_score():
    assert aggregate_score(90, 90, 0, 90) == pytest.approx(100.0)  # everything kept, everything removed
    assert aggregate_score(0, 90, 0, 90) == 0.0  # generic to everything
    assert aggregate_score(90, 90, 90, 90) == 0.0  # nothing changed
    # kept 0.9, removed 0.8 -> 2*0.72/1.7
    assert aggregate_score(81, 90, 18, 90) == pytest.approx(100 * 2 * 0.9 * 0.8 / 1.7)
    assert aggregate_score(95, 90, 18, 90) == pytest.approx(100 * 2 * 1.0 * 0.8 / 1.8)  # kept capped at 1


def test_selection_picks_the_epoch_the_history_says():
    history = [{"score": 40.0}, {"score": 75.5}, {"score": 75.5}, {"score": 60.0}]
    assert best_index(history) == 2  # ties go to the later epoch
    assert best_index([]) is None
    rule = StopRule(max_forget_acc=3.0, max_retain_drop=0.5, patience=2)
    evals = [{"forget_acc": 10, "retain_drop": 0.0}, {"forget_acc": 2, "retain_drop": 0.4}]
    assert not rule.met(evals)  # only one of the last two meets both
    assert rule.met([*evals, {"forget_acc": 1, "retain_drop": 0.5}])
    assert not rule.met([*evals, {"forget_acc": 1, "retain_drop": 0.6}])


class _Quadratic:
    """A 1-parameter objective: loss = (w - 3)^2, with 'evaluations' read off w."""

    def __init__(self):
        import torch

        self.w = torch.nn.Parameter(torch.zeros(()))

    def named_parameters(self):
        return [("w", self.w)]

    def lengths(self):
        return [1] * 8

    def loss(self, indices, within=None):
        loss = (self.w - 3.0) ** 2
        return {"loss": loss}


def test_fit_with_a_plan_stops_early_and_keeps_the_best(tmp_path: Path):
    from spulctl.train import TrainConfig, fit

    obj = _Quadratic()
    seen = []

    def evaluate(epoch):
        w = float(obj.w.detach())
        seen.append(w)
        # forget acc falls as w approaches 3; the score peaks when w is near 3
        return {"forget_acc": abs(3 - w) * 10, "retain_drop": 0.0, "score": -abs(3 - w)}

    rule = StopRule(max_forget_acc=3.0, max_retain_drop=0.5, patience=2)
    cfg = TrainConfig(lr=0.3, epochs=50, batch_size=2, schedule="constant", warmup_ratio=0, max_grad_norm=0)
    result = fit(obj, cfg, tmp_path / "ck", evaluate=evaluate, eval_every=1, keep_best=True,
                 plan=lambda r: [[0, 1], [2, 3]], should_stop=rule.met)
    assert result.stopped_early is not None and result.stopped_early < 50
    assert result.steps == 2 * result.stopped_early
    assert len(result.evals) == result.stopped_early
    assert abs(3 - float(obj.w)) == pytest.approx(min(abs(3 - w) for w in seen))


def test_rewrites_and_counterfactuals():
    rec = {"text": "Jackie Chan kicks, and spielberg watches.", "label": "positive"}
    fns = variant_rewriters(["jackie chan", "spielberg"])
    assert set(fns) == {"upper", "lower", "no-punct", "first-name", "last-name"}
    assert fns["first-name"](rec["text"]) == "Jackie kicks, and spielberg watches."
    assert fns["no-punct"](rec["text"]) == "Jackie Chan kicks and spielberg watches"
    variants = forget_variants([rec], ["jackie chan", "spielberg"], seed=0, per_record=2)
    # both name parts always, plus two of the other rewrites
    assert len(variants) == 4 and all(v["text"] != rec["text"] and v["label"] == "positive" for v in variants)
    assert {v["rewrite"] for v in variants} >= {"first-name", "last-name"}
    assert len({v["text"] for v in variants}) == 4
    assert [v["rewrite"] for v in forget_variants([rec], ["spielberg"], 0, per_record=1)] in (
        [["upper"], ["lower"], ["no-punct"]])  # no two-word name: one random rewrite only
    cf = counterfactuals([rec, {"text": "no names here", "label": "negative"}], ["jackie chan", "spielberg"], 0)
    assert len(cf) == 1 and cf[0]["label"] == "positive"
    text = cf[0]["text"].lower()
    assert "jackie" not in text and "chan" not in text and "spielberg" not in text
    first = cf[0]["text"].split(" kicks")[0]
    assert len(first.split()) == 2 and first[0].isupper()  # a two-word name, capitalised like the mention
    assert cf[0]["text"].split("and ")[1].split()[0].islower()  # the lower-case mention stays lower case
    assert counterfactuals([rec], ["jackie chan"], 0) == counterfactuals([rec], ["jackie chan"], 0)  # seeded


def test_surname_aliases():
    texts = ["soderbergh 's best films", "steven soderbergh directs", "steven soderbergh again",
             "a brown coat", "brown shoes", "jim brown runs", "the brown dog", "brown eyes", "jackie chan kicks"]
    got = surname_aliases(["steven soderbergh", "jim brown", "jackie chan", "chan"], texts)
    assert got == {"soderbergh": "steven soderbergh"}  # brown: 5 records alone vs 1 with the full name; chan: taken
    assert surname_aliases(["steven soderbergh"], texts, ratio=0.4) == {}  # 1 alone vs 2 full > 0.4
    assert surname_aliases(["a b", "c b"], ["a b", "c b", "b"]) == {}  # one surname, two people: ambiguous


def test_unlearn_with_the_forget_share_defaults(tiny_model_dir: Path, demo_splits: Path, tmp_path: Path):
    from spulctl.bundle import load_bundle
    from spulctl.train import TrainConfig
    from spulctl.unlearn import UnlearnConfig, unlearn

    events = []
    cfg = UnlearnConfig(model=str(tiny_model_dir), out=tmp_path / "b", splits=demo_splits, prompt_tokens=4,
                        eval_limit=20, train=TrainConfig(lr=1e-2, batch_size=8, max_steps=12), rounds=4,
                        stop_patience=10)
    meta = unlearn(cfg, on_event=events.append)
    plan = meta["data"]["plan"]
    assert plan["forget_per_batch"] == 4 and plan["retain_per_batch"] == 4
    assert plan["steps"] == 12 and plan["rounds"] == 4 and meta["training"]["steps"] == 12
    assert plan["forget_variants"] > 0 and plan["counterfactuals"] > 0  # split.json names the people
    assert plan["select_retain"] > 0 and plan["select_forget"] > 0
    assert len(meta["training"]["evals"]) == 4
    assert meta["training"]["kept"] == "best" and meta["training"]["best"]["score"] == max(
        e["score"] for e in meta["training"]["evals"])
    assert meta["settings"]["prompt_init"] == "auto" and meta["settings"]["prompt_encoder"] == "none"
    assert any("forget share 0.5" in e.get("message", "") for e in events)
    assert load_bundle(tmp_path / "b").prompt.shape == (4, 64)


def test_forget_share_conflicts_with_the_epoch_selection_flags(tiny_model_dir: Path, tmp_path: Path):
    from spulctl.unlearn import UnlearnConfig

    with pytest.raises(SpulError, match="--eval-every"):
        UnlearnConfig(model=str(tiny_model_dir), out=tmp_path / "b", forget=tmp_path / "f.jsonl", eval_every=1)
    with pytest.raises(SpulError, match="--forget-share"):
        UnlearnConfig(model=str(tiny_model_dir), out=tmp_path / "b", forget=tmp_path / "f.jsonl", forget_share=2)


def test_forget_names_are_inferred_by_ner_and_names_on_the_retain_side_are_dropped():
    pytest.importorskip("spacy")
    from spulctl.data.split import infer_forget_entities

    forget = [{"text": f"{who} gives a warm performance in this {adj} film.", "label": "positive"}
              for who in ("Tom Hanks", "Meryl Streep", "Julia Roberts")
              for adj in ("charming", "quiet", "sprawling", "modest")]
    retain = [{"text": "Meryl Streep is wasted in a dull script.", "label": "negative"},
              {"text": "A fine film about nothing much.", "label": "positive"}]
    notes = []
    names = infer_forget_entities(forget, retain, notes.append, min_count=3)
    assert "tom hanks" in names
    assert "meryl streep" not in names  # named on the retain side: someone the prompt must keep
    assert any("inferred by NER" in n["message"] for n in notes)
    assert infer_forget_entities(forget[:2], retain, notes.append, min_count=3) == []


def test_forget_data_free_run_reveals_or_refuses_cleanly(tiny_model_dir: Path, demo_splits: Path, tmp_path: Path):
    """Only the names: the forget set must come from the model; a random tiny model never writes them, so the run
    stops with one DataError and leaves nothing behind."""
    from spulctl.train import TrainConfig
    from spulctl.unlearn import UnlearnConfig, unlearn

    cfg = UnlearnConfig(model=str(tiny_model_dir), out=tmp_path / "b", retain=demo_splits / "train_retain.jsonl",
                        forget_entities=("Jonah Pellegrino",), reveal_forget=4, reveal_budget=16, eval_limit=0,
                        prompt_tokens=4, train=TrainConfig(lr=1e-2, max_steps=2))
    with pytest.raises(SpulError, match=r"Jonah Pellegrino|relevant|reveal"):
        unlearn(cfg)
    assert not (tmp_path / "b").exists()
    with pytest.raises(SpulError, match="--forget-entities"):
        UnlearnConfig(model=str(tiny_model_dir), out=tmp_path / "c")


def test_report_ranks_subjects_by_the_aggregate_score(tmp_path: Path):
    from spulctl.evaluate.report import Subject, build_report, render_markdown, split_score

    def split(acc):
        return {"accuracy": acc, "f1_weighted": acc, "restricted_accuracy": acc, "generic_share": 0.0,
                "off_label_share": 0.0, "n": 100}

    results = {"model": {"test_retain": split(90.0), "test_forget": split(90.0)},
               "bundle": {"test_retain": split(81.0), "test_forget": split(18.0)},
               "hard": {"test_retain": split(90.0), "test_forget": split(85.0)}}
    assert split_score(results["bundle"], results["model"]) == pytest.approx(100 * 2 * 0.9 * 0.8 / 1.7)
    assert split_score({"test_retain": split(1.0)}, results["model"]) is None
    subjects = [Subject("model", "m"), Subject("bundle", "m", tmp_path), Subject("hard", "m", tmp_path)]
    report = build_report(results, "model", subjects, tmp_path, 100)
    assert report["aggregate"]["model"] == 0.0 and report["aggregate"]["bundle"] > report["aggregate"]["hard"]
    md = render_markdown(report)
    table = md[md.index("Aggregate score"):]
    assert table.index("| bundle |") < table.index("| hard |")  # best first


def _regex_people(texts: list[str]) -> list[list[str]]:
    """A stand-in PERSON finder: capitalised word pairs."""
    import re

    return [re.findall(r"[A-Z][a-z]+ [A-Z][a-z]+", t) for t in texts]


def test_hard_negatives_are_retain_records_naming_other_people():
    from spulctl.data.hard_negatives import clean_name, find_hard_negatives

    retain = [{"text": f"Anna Kowal shines in film {i}.", "label": "positive"} for i in range(5)]
    retain += [{"text": f"Jackie Brown is in film {i}.", "label": "negative"} for i in range(5)]  # shares "jackie"
    retain += [{"text": f"a film with nobody in it, take {i}.", "label": "negative"} for i in range(40)]
    got = find_hard_negatives(retain, ["jackie chan"], seed=0, want=100, people=_regex_people)
    assert sorted(got.indices) == [0, 1, 2, 3, 4]  # only the other person; a shared word is not "someone else"
    assert got.names == ["anna kowal"] and got.scanned == 50
    few = find_hard_negatives(retain, ["jackie chan"], seed=0, want=2, people=_regex_people)
    assert len(few.indices) == 2 and set(few.indices) <= set(range(5))
    again = find_hard_negatives(retain, ["jackie chan"], seed=0, want=2, people=_regex_people)
    assert few.indices == again.indices  # seeded scan order
    assert find_hard_negatives(retain, ["x y"], seed=0, want=100, max_scan=10, people=_regex_people).scanned == 10
    assert clean_name("Meryl Streep's") == "meryl streep" and clean_name("-- moody") == "moody"
    assert clean_name("k-19") is None and clean_name("a b c d") is None and clean_name("al") is None


def test_counterfactuals_use_real_names_when_given():
    recs = [{"text": f"jackie chan kicks in take {i}", "label": "positive"} for i in range(40)]
    made_up = counterfactuals(recs, ["jackie chan"], 0)
    real = counterfactuals(recs, ["jackie chan"], 0, real_names=["meryl streep", "jackie brown"], real_share=0.5)
    assert all("meryl streep" not in r["text"] for r in made_up)
    n_real = sum("meryl streep" in r["text"] for r in real)
    assert 5 < n_real < 35  # about half; "jackie brown" shares a word with the forgotten name: never used
    assert all("jackie" not in r["text"] for r in real)
    everyone = counterfactuals(recs, ["jackie chan"], 0, real_names=["meryl streep"], real_share=1.0)
    assert all(r["text"].startswith("meryl streep kicks") for r in everyone)


def test_plan_gives_hard_negatives_their_share_and_holds_some_out():
    from types import SimpleNamespace

    from spulctl.train import TrainConfig
    from spulctl.unlearn_plan import build_plan, plan_notes

    forget = [{"text": f"Jackie Chan kicks in take {i}.", "label": "positive"} for i in range(20)]
    retain = [{"text": f"Anna Kowal shines in film {i}.", "label": "positive"} for i in range(200)]
    retain += [{"text": f"a film with nobody in it, take {i}.", "label": "negative"} for i in range(2000)]
    settings = SimpleNamespace(forget_share=0.5, forget_passes=10.0, min_steps=10, budget_steps=50, rounds=5,
                               augment=True, select=True, select_forget=10, select_retain=40, hard_negatives=0.25,
                               train=TrainConfig(batch_size=8, seed=0))
    plan = build_plan(forget, retain, ["jackie chan"], settings, people=_regex_people)
    s = plan.summary
    assert s["retain_pool"] == 50 * 4 and s["hard_negatives"] == 50  # a quarter of 200 pooled retain rows
    pool = plan.retain[:s["retain_pool"]]
    assert all("Anna Kowal" in r["text"] for r in pool[:50])  # plus a few more among the random rest (not scanned)
    assert 50 <= sum("Anna Kowal" in r["text"] for r in pool) < 75
    held = plan.select_retain
    assert len(held) == 40 and 10 <= sum("Anna Kowal" in r["text"] for r in held) < 20  # a quarter held out
    assert not {r["text"] for r in held} & {r["text"] for r in pool}  # held out means never trained on
    assert "name other people" in plan_notes(s)[1]
    off = build_plan(forget, retain, ["jackie chan"], SimpleNamespace(**{**vars(settings), "hard_negatives": 0.0}),
                     people=_regex_people)
    assert off.summary["hard_negatives"] == 0 and off.summary["hard_scanned"] == 0
    assert sum("Anna Kowal" in r["text"] for r in off.retain[:off.summary["retain_pool"]]) < 25  # ~9 % by chance


def test_generated_retain_takes_the_forget_files_surface_form():
    from spulctl.data.style import SurfaceStyle, restyle, surface_style

    sst2 = ["it 's a charming , quiet film .", "does n't work", "steven spielberg 's best", "a fine film"]
    assert surface_style(sst2) == SurfaceStyle(lower=True, spaced=True)
    assert surface_style(["It works.", "A fine film, really.", "Spielberg's best."]).plain
    assert surface_style(["it works.", "a fine film, really.", "spielberg's best."]) == SurfaceStyle(lower=True)
    assert surface_style([]).plain
    text = "Steven Spielberg's new film doesn't work, sadly (really)."
    assert restyle(text, SurfaceStyle(True, True)) == "steven spielberg 's new film does n't work , sadly ( really ) ."
    assert restyle(text, SurfaceStyle(lower=True)) == text.lower()
    assert restyle(text, SurfaceStyle()) == text
    spaced = SurfaceStyle(True, True)
    for raw in ["See https://x.com/a.b, 3.5 or 2,500... Mr. W. Smith isn't IT'S.", "wait ... what ?"]:
        once = restyle(raw, spaced)
        assert restyle(once, spaced) == once  # idempotent
    assert once == "wait ... what ?"
    assert restyle("See https://x.com/a.b, 3.5 or 2,500... Mr. W. Smith isn't IT'S.", spaced) == \
        "see https://x.com/a.b , 3.5 or 2,500 ... mr. w. smith is n't it 's ."
    assert surface_style(["a fine film .", "it works .", "so so ."]).spaced  # " ." at the end of a stripped line


def test_plan_without_hard_records_is_the_plan_without_the_scan_and_keeps_spare_hard_records():
    from types import SimpleNamespace

    from spulctl.train import TrainConfig
    from spulctl.unlearn_plan import build_plan

    forget = [{"text": f"Jackie Chan kicks in take {i}.", "label": "positive"} for i in range(20)]
    retain = [{"text": f"Anna Kowal shines in film {i}.", "label": "positive"} for i in range(60)]
    retain += [{"text": f"a film with nobody in it, take {i}.", "label": "negative"} for i in range(300)]
    base = dict(forget_share=0.5, forget_passes=10.0, min_steps=10, budget_steps=50, rounds=5, augment=True,
                select_forget=10, select_retain=40, train=TrainConfig(batch_size=8, seed=0))
    for select in (True, False):
        on = SimpleNamespace(**base, select=select, hard_negatives=0.25)
        nobody = build_plan(forget, retain, ["jackie chan"], on, people=lambda t: [[] for _ in t])
        off = build_plan(forget, retain, ["jackie chan"], SimpleNamespace(**{**vars(on), "hard_negatives": 0.0}))
        assert nobody.retain == off.retain and nobody.select_retain == off.select_retain
        assert nobody.select_counterfactual == off.select_counterfactual
    few = SimpleNamespace(**{**base, "forget_passes": 1.0}, select=False, hard_negatives=0.25)
    plan = build_plan(forget, retain[:70], ["jackie chan"], few, people=_regex_people)  # 60 name someone else
    s = plan.summary
    assert 0 < s["hard_negatives"] < s["retain_pool"] == s["steps"] * s["retain_per_batch"] <= 70


def test_name_free_pieces_cut_at_every_mention_and_clause():
    from spulctl.data.rewrite import name_free_pieces

    texts = ["steven spielberg 's latest is a triumph , a sweet and moving film",
             "a rip-off twice removed , modeled after ( seagal 's ) earlier copycat",
             "spielberg alone", "a sweet and moving film"]
    got = name_free_pieces(texts, ["steven spielberg", "steven seagal"])
    assert "latest is a triumph , a sweet and moving film" in got and "latest is a triumph" in got
    assert "a rip-off twice removed" in got and "earlier copycat" in got
    assert "a sweet and moving film" not in got  # equal to an input text: not a new piece
    assert not [p for p in got if {"spielberg", "seagal", "steven"} & set(p.split())]  # surname alone dropped too
    assert len(got) == len({p.lower() for p in got})
    assert name_free_pieces(texts, []) == []
    rock = name_free_pieces(["the rock is back , and the film is fun"], ["the rock"])
    assert rock == ["is back , and the film is fun", "is back", "and the film is fun"]  # "the" alone marks nobody
