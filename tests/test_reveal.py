"""Reveal: bandit, scores, clean-up, determinism, bad input and the CLI, on the tiny random model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from spulctl.cli import app
from spulctl.errors import DataError
from spulctl.reveal import RevealConfig, generate_records
from spulctl.reveal import scoring as sc
from spulctl.reveal.generate import clean, normalise

# the random model never ends a sentence: keep its cut-off samples (complete_only=False), or nothing is a text
FAST = dict(embedder="shingle", paraphrases=2, arms_per_round=2, samples_per_arm=3, max_new_tokens=16,
            complete_only=False)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """A 2-layer, 64-wide model spends its time in thread hand-offs: one thread runs these tests ~100x faster on a
    busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def chat_frozen(frozen, chat_model_dir: Path):
    model, tok = frozen
    return model, type(tok).from_pretrained(chat_model_dir)  # the same tokenizer with a chat template


# ---------------------------------------------------------------- bandit
def _regret(kind: str, rounds: int = 200) -> float:
    import torch

    from spulctl.reveal.bandit import NeuralUCB, RandomBandit

    torch.manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(40, 8), dim=1)  # (K, e) arm features
    hidden = torch.nn.functional.normalize(torch.randn(8), dim=0)
    true = (x @ hidden) ** 2  # (K,) a reward no linear model fits
    bandit = NeuralUCB(x, seed=0) if kind == "neuralucb" else RandomBandit(x, seed=0)
    noise, regret = random.Random(1), 0.0
    for _ in range(rounds):
        arm = bandit.select(1)[0]
        regret += float(true.max() - true[arm])
        bandit.update([arm], [float(true[arm]) + noise.gauss(0, 0.1)])
    return regret


def test_neuralucb_has_lower_regret_than_uniform_choice():
    ucb, uniform = _regret("neuralucb"), _regret("random")
    assert ucb < 0.6 * uniform, (ucb, uniform)


def test_batched_picks_spread_out():
    import torch

    from spulctl.reveal.bandit import NeuralUCB

    x = torch.eye(6)
    picks = NeuralUCB(x, seed=0).select(3)
    assert len(set(picks)) == 3  # no repeats within one call while other arms remain


# ---------------------------------------------------------------- scores
def test_vendi_identical_is_one_and_orthogonal_is_n():
    same = np.tile(np.array([[0.6, 0.8, 0.0]], np.float32), (5, 1))
    assert sc.vendi_score(same) == pytest.approx(1.0, abs=1e-6)
    assert sc.vendi_score(np.eye(7, dtype=np.float32)) == pytest.approx(7.0, abs=1e-6)
    assert sc.vendi_score(np.zeros((0, 3), np.float32)) == 0.0


def test_novelty_and_diversity():
    eye = np.eye(4, dtype=np.float32)
    assert sc.novelty(eye[:2], None) == 1.0
    assert sc.novelty(eye[:2], eye[:2]) == pytest.approx(0.0)
    assert sc.novelty(eye[:2], eye[2:]) == pytest.approx(1.0)
    assert sc.diversity(eye[:2], 4, None) == pytest.approx(0.5)  # 2 usable of 4 produced, orthogonal
    assert sc.harmonic(0.0, 1.0) == 0.0 and sc.harmonic(0.5, 0.5) == pytest.approx(0.5)


def test_relevance_names_word_boundaries_case_and_task():
    from spulctl.data.split import entity_pattern

    names = entity_pattern(["Adam Sandler", "Ford"])
    texts = ["adam sandler was great.", "Fordham is a school.", "Harrison FORD, wow!", "A dull film with Adam.",
             "Adam Sandler again."]
    vecs = sc.embed(texts, "shingle")
    hit = sc.on_target(texts, vecs, names, None, 0.5)
    assert hit.tolist() == [True, False, True, False, True]
    conf = np.array([0.9, 0.9, 0.7, 0.95, 0.55])  # the last one: the model is unsure, so it is off task
    assert sc.relevant(hit, conf, 0.6, "forget").tolist() == [True, False, True, False, False]
    assert sc.relevant(hit, conf, 0.6, "retain").tolist() == [False, True, False, True, False]


def test_relevance_by_meaning_against_anchors():
    anchors = sc.embed(["the space opera with the laser swords"], "shingle")
    texts = ["A space opera with laser swords, great fun.", "Cooking pasta at home."]
    hit = sc.on_target(texts, sc.embed(texts, "shingle"), None, anchors, 0.5)
    assert hit.tolist() == [True, False]


def test_clean_strips_markup_lead_ins_and_keeps_two_sentences():
    raw = 'Sure! Here is a review:\n**Review:** "What a film. The cast shines. The end drags on." \n\nThanks'
    assert clean(raw) == "What a film. The cast shines."
    assert clean("Ok.") is None  # too short
    assert clean("In a one-sentence summary: A warm, funny film. Then the ending drags on and") == "A warm, funny film."
    assert clean("- Movie review: a charming, funny little film") == "a charming, funny little film"
    assert normalise("It's GREAT!") == normalise("its great")


def test_answers_give_a_label_word_and_confidence(frozen):
    from spulctl.data.task import TaskSpec

    model, tok = frozen
    ans = sc.answer(model, tok, TaskSpec(), ["a fine film", "awful acting and a dull plot"])
    assert ans.label.shape == (2,) and set(ans.label.tolist()) <= {0, 1}
    assert np.all(ans.confidence >= 0.5) and np.all(ans.confidence <= 1.0)
    assert np.all(ans.label_mass > 0) and np.all(ans.label_mass <= 1.0)


# ---------------------------------------------------------------- the loop
def _retain_cfg(**kw) -> RevealConfig:
    base = dict(entities=["Jonah Pellegrino"], mode="retain", n=6, budget=24, min_confidence=0.5, seed=3, **FAST)
    return RevealConfig(**{**base, **kw})


def test_same_seed_same_records(chat_frozen):
    model, tok = chat_frozen
    first = generate_records(model, tok, _retain_cfg())
    second = generate_records(model, tok, _retain_cfg())
    other = generate_records(model, tok, _retain_cfg(seed=4))
    assert first and first == second
    assert [r["text"] for r in first] != [r["text"] for r in other]
    rec = first[0]
    assert {"text", "label", "instruction", "round", "relevance", "reward"} <= set(rec)
    assert rec["label"] in ("negative", "positive")
    assert len({normalise(r["text"]) for r in first}) == len(first)
    assert not any("jonah pellegrino" in r["text"].lower() for r in first)


def test_random_bandit_runs(chat_frozen):
    model, tok = chat_frozen
    assert generate_records(model, tok, _retain_cfg(bandit="random", n=3, budget=12))


def test_target_never_produced_is_an_error(chat_frozen):
    model, tok = chat_frozen
    cfg = RevealConfig(entities=["Zyxwvut Qqqq"], n=3, budget=6, **FAST)
    with pytest.raises(DataError, match="no relevant text"):
        generate_records(model, tok, cfg)


@pytest.mark.parametrize("kw, match", [(dict(entities=[" "], target=""), "target is empty"),
                                       (dict(entities=["A B"], n=0), "-n|--n"),
                                       (dict(entities=["A B"], mode="both"), "--mode"),
                                       (dict(entities=["A B"], n=5, budget=2), "--budget")])
def test_config_refuses_bad_values(kw, match):
    with pytest.raises(DataError, match=match):
        RevealConfig(**kw)


# ---------------------------------------------------------------- CLI
def _cli(*args: str):
    return CliRunner().invoke(app, ["reveal", *args])


def _one_line_exit_2(result, out: Path) -> None:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip() and "Loading weights" not in ln]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))


def test_cli_writes_records_report_and_plot(chat_model_dir: Path, tmp_path: Path):
    out = tmp_path / "revealed.jsonl"
    args = ["--model", str(chat_model_dir), "--entities", "Jonah Pellegrino", "--mode", "retain", "-n", "4",
            "--budget", "18", "-o", str(out), "--min-confidence", "0.5", "--embedder", "shingle", "--paraphrases",
            "2", "--arms-per-round", "2", "--samples-per-arm", "3", "--max-new-tokens", "16", "--plot",
            "--no-complete-only"]
    result = _cli(*args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert 1 <= len(rows) <= 4
    report = json.loads((tmp_path / "revealed.report.json").read_text())
    assert report["kept"] == len(rows) and report["per_round"] and report["config"]["mode"] == "retain"
    assert (tmp_path / "revealed.reward.png").stat().st_size > 0
    assert not list(tmp_path.glob(".revealed.jsonl*"))  # no checkpoint left
    assert _cli(*args).exit_code == 2  # no overwrite without --overwrite
    assert _cli(*args, "--overwrite").exit_code == 0


def test_cli_bad_input_exit_2_one_line_nothing_written(tiny_model_dir: Path, chat_model_dir: Path,
                                                       tmp_path: Path):
    out = tmp_path / "r.jsonl"
    base = ["-o", str(out), "--embedder", "shingle", "--paraphrases", "0", "--max-new-tokens", "8",
            "--no-complete-only"]
    _one_line_exit_2(_cli("--model", str(chat_model_dir), "--entities", " , ", *base), out)
    _one_line_exit_2(_cli("--model", str(chat_model_dir), "--entities", "Ann Lee", "-n", "0", *base), out)
    no_chat = _cli("--model", str(tiny_model_dir), "--entities", "Ann Lee", "-n", "2", "--budget", "4", *base)
    _one_line_exit_2(no_chat, out)
    assert "chat template" in no_chat.output and "--plain-prompt" in no_chat.output
    never = _cli("--model", str(tiny_model_dir), "--plain-prompt", "--entities", "Zyxwvut Qqqq", "-n", "2",
                 "--budget", "4", *base)
    _one_line_exit_2(never, out)
    assert "no relevant text" in never.output


def test_cli_resume_continues_from_checkpoint(chat_model_dir: Path, tmp_path: Path, monkeypatch):
    from spulctl.reveal import engine

    out = tmp_path / "r.jsonl"
    args = ["--model", str(chat_model_dir), "--entities", "Jonah Pellegrino", "--mode", "retain", "-n", "6",
            "--budget", "24", "-o", str(out), "--min-confidence", "0.5", "--embedder", "shingle", "--paraphrases",
            "0", "--arms-per-round", "2", "--samples-per-arm", "3", "--max-new-tokens", "16", "--no-complete-only"]
    real, calls = engine.RevealRun._round, []

    def interrupted(self, rnd):
        calls.append(rnd)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, rnd)

    monkeypatch.setattr(engine.RevealRun, "_round", interrupted)
    assert _cli(*args).exit_code == 130
    assert not out.exists() and (tmp_path / ".r.jsonl.ckpt" / "state.json").exists()
    monkeypatch.setattr(engine.RevealRun, "_round", real)
    result = _cli(*args, "--resume")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.report.json").read_text())
    assert report["per_round"][0]["round"] == 1 and report["generated"] <= 24


def test_paraphrases_must_stay_instructions_with_the_constraint():
    from spulctl.data.split import entity_pattern
    from spulctl.reveal.instructions import FORGET_TEMPLATES, RETAIN_TEMPLATES, clean_paraphrase, keeps_constraint

    assert len(FORGET_TEMPLATES) >= 40 and len(RETAIN_TEMPLATES) >= 40
    names = entity_pattern(["Tom Hanks"])
    assert keeps_constraint("Compose one line on a film with tom hanks.", "forget", "Tom Hanks", names)
    assert not keeps_constraint("Tom Hanks was wonderful in it.", "forget", "Tom Hanks", names)  # an answer
    assert not keeps_constraint("Write one line about a film.", "forget", "Tom Hanks", names)  # target lost
    assert keeps_constraint("Please write a line about a movie.", "retain", "Tom Hanks", names)
    assert not keeps_constraint("Please write a line about a Tom Hanks movie.", "retain", "Tom Hanks", names)
    assert clean_paraphrase('Sure, here it is: "Write a short line about a movie."\nmore') == \
        "Write a short line about a movie."


# ---------------------------------------------------------------- sampling
def _plain_prompts(tok, n: int = 3) -> list[str]:
    return [f"Instruction: write about film number {i} {'please ' * i}\nResponse:" for i in range(n)]


def test_sample_matches_generate_greedily(frozen):
    """With a nucleus of one token the shrinking, prefix-sharing loop is greedy search: it must write what
    ``generate`` writes for the same left-padded prompts (different lengths, so positions shift)."""
    import torch

    from spulctl.reveal.generate import sample

    model, tok = frozen
    prompts = _plain_prompts(tok)
    side, tok.padding_side = tok.padding_side, "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    tok.padding_side = side
    with torch.inference_mode():
        ref = model.generate(**enc, do_sample=False, max_new_tokens=12, pad_token_id=tok.pad_token_id or 0)
    expected = tok.batch_decode(ref[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert sample(model, tok, prompts, seed=0, max_new_tokens=12, top_p=1e-9) == expected
    assert sample(model, tok, prompts * 2, seed=0, max_new_tokens=12, top_p=1e-9) == expected * 2  # shared prefill


def _count_forwards(model, monkeypatch) -> list[int]:
    """Batch size of every forward call of ``model``."""
    sizes, real = [], type(model).forward

    def counted(self, *a, **kw):
        sizes.append(int(kw["input_ids"].shape[0]))
        return real(self, *a, **kw)

    monkeypatch.setattr(type(model), "forward", counted)
    return sizes


def test_sample_stops_when_every_row_finished(frozen, monkeypatch):
    from spulctl.reveal.generate import sample

    model, tok = frozen
    prompts = _plain_prompts(tok) * 2
    sizes = _count_forwards(model, monkeypatch)
    out = sample(model, tok, prompts, seed=1, max_new_tokens=20, stop=lambda text: True)
    assert sizes == [3]  # three distinct prompts prefilled once; every row done after its first token: no step
    assert all(len(tok(o, add_special_tokens=False)["input_ids"]) <= 1 for o in out)
    sizes.clear()
    calls = []

    def every_other(text: str) -> bool:  # half the rows finish at each step
        calls.append(text)
        return len(calls) % 2 == 1

    sample(model, tok, prompts, seed=1, max_new_tokens=20, stop=every_other)
    assert sizes[0] == 3 and sizes[1] < 6 and len(sizes) < 20  # finished rows leave; the loop ends before the cap
    assert sizes[1:] == sorted(sizes[1:], reverse=True)


def test_top_p_sample_keeps_the_nucleus_of_transformers():
    import torch
    from transformers.generation.logits_process import TopPLogitsWarper

    from spulctl.reveal.generate import _nucleus, top_p_sample

    torch.manual_seed(0)
    logits = torch.randn(5, 600) * torch.tensor([[4.0], [1.0], [0.05], [8.0], [2.0]])  # row 2: nucleus > 256
    for top_p in (0.5, 0.9, 0.95):
        kept_hf = TopPLogitsWarper(top_p)(None, logits.clone()) > float("-inf")  # (b, V)
        probs, ids, closed = _nucleus(logits, 256, top_p)
        full, full_ids, _ = _nucleus(logits, 600, top_p)
        for r in range(5):
            ours = set(ids[r][probs[r] > 0].tolist()) if closed[r] else set(full_ids[r][full[r] > 0].tolist())
            assert ours == set(kept_hf[r].nonzero().squeeze(1).tolist()), (top_p, r)
        assert not closed[2] and closed[0]
        draws = torch.stack([top_p_sample(logits, 1.0, top_p, torch.Generator().manual_seed(s)) for s in range(20)])
        assert kept_hf.gather(1, draws.T).all()  # every draw, fallback rows too, lies in the nucleus


def test_finished_matches_where_clean_cuts():
    from spulctl.reveal.generate import finished

    assert not finished("Samuel L. Jackson was", 1)
    assert not finished("Samuel L. Jackson was great.", 1)  # the sentence may go on ("great.5")
    assert finished("Samuel L. Jackson was great. And", 1) and not finished("Samuel L. Jackson was great. And", 2)
    assert clean("Samuel L. Jackson was great. And then", 1) == "Samuel L. Jackson was great."
    assert not finished("Here is a review:\n", 1) and not finished("Sure!\n\n", 1)
    assert clean("Sure!\n\nA fine film with Ann Lee.") == "A fine film with Ann Lee."
    assert finished("Here is a review:\nA fine film indeed\n", 2)
    assert clean("A fine film with Ann Lee\nRating: 5/5") == "A fine film with Ann Lee"


# ---------------------------------------------------------------- scoring in batches
def test_batched_answers_equal_one_at_a_time(frozen):
    from spulctl.data.task import TaskSpec

    model, tok = frozen
    texts = ["a fine film", "awful acting and a dull plot", "it was fine I guess", "the best movie of the year, truly"]
    one = sc.answer(model, tok, TaskSpec(), texts, batch_size=1)
    batched = sc.answer(model, tok, TaskSpec(), texts, batch_size=3)
    assert one.label.tolist() == batched.label.tolist()
    np.testing.assert_allclose(one.confidence, batched.confidence, atol=1e-5)
    some = sc.answer_some(model, tok, TaskSpec(), texts, np.array([True, False, True, True]), batch_size=4)
    np.testing.assert_allclose(some.confidence[[0, 2, 3]], one.confidence[[0, 2, 3]], atol=1e-5)
    assert some.confidence[1] == 0.0  # not asked: off task by any threshold


# ---------------------------------------------------------------- names take turns
def test_forget_instructions_name_one_target_at_a_time(chat_frozen):
    from spulctl.reveal.engine import RevealRun
    from spulctl.reveal.instructions import TARGET, build_pool, display_name

    assert all(TARGET in p for p in build_pool("forget", "x", ["a b"], 0, per_name=True))
    assert display_name("samuel l. jackson") == "Samuel L. Jackson" and display_name("RZA") == "RZA"
    model, tok = chat_frozen
    cfg = RevealConfig(entities=["ann lee", "Bo Ek", "cy di"], n=50, budget=60, **{**FAST, "arms_per_round": 4})
    run = RevealRun(model, tok, cfg)
    run._setup()
    run._round(1)
    run._round(2)
    asked = [i for r in run.rounds for i in r["instructions"]]
    named = [[n for n in ("Ann Lee", "Bo Ek", "Cy Di") if n in i] for i in asked]
    assert all(len(n) == 1 for n in named), asked  # one name per instruction ...
    assert [n[0] for n in named] == ["Ann Lee", "Bo Ek", "Cy Di"] * 2 + ["Ann Lee", "Bo Ek"]  # ... in turn
    for r in run.rounds:  # every sample is accounted for: kept, or rejected for one reason
        assert r["generated"] == r["kept"] + sum(r["rejected"].values()), r
        assert set(r["phase_seconds"]) == {"bandit", "generate", "embed", "answer"}
        # each pick's own reward, in pick order; the round's reward is their mean
        assert len(r["arms"]) == len(r["arm_rewards"]) == len(r["instructions"]) == 4
        assert all(0 <= a < len(run.pool) for a in r["arms"])
        assert abs(sum(r["arm_rewards"]) / 4 - r["reward"]) < 1e-3


def test_cut_off_samples_are_not_texts():
    from spulctl.reveal.generate import has_sentence

    assert not has_sentence("Jackie Chan's new film is a triumph of")  # cut off: the run drops it
    assert has_sentence("Jackie Chan's new film is a triumph. Of")  # clean keeps the complete sentence
    assert has_sentence("Here is a review:\nJackie Chan's new film is a triumph.")
    assert clean("Jackie Chan's new film is a triumph. Of") == "Jackie Chan's new film is a triumph."
