"""Reveal-and-Release (``--method release``): the penalty, stacking, NPO, the stop rule, the PEFT artifact."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from spulctl.cli import app
from spulctl.errors import SpulError
from spulctl.release.lora import delta_w, ortho_penalty, stack_modules
from spulctl.train import TrainConfig
from spulctl.unlearn import UnlearnConfig, unlearn

runner = CliRunner()


# ------------------------------------------------------------------ the penalty
def test_penalty_is_zero_for_orthogonal_rows_and_the_l1_overlap_otherwise():
    eye = torch.eye(6)
    prev, new = {"l": eye[:2] * 3.0}, {"l": eye[2:5] * 0.5}  # disjoint coordinates: orthogonal rows
    assert ortho_penalty(prev, new).item() == 0.0
    new["l"] = new["l"] + 0.1 * eye[:3]  # each new row leans 0.1 into the first coordinates
    expected = (prev["l"] @ new["l"].T).abs().sum()
    got = ortho_penalty(prev, new)
    assert got.item() > 0 and torch.isclose(got, expected)
    assert got.item() == pytest.approx(2 * 3.0 * 0.1)  # rows 0, 1 of new meet rows 0, 1 of prev once each
    # layers only in the new module add nothing; two layers add up
    both = ortho_penalty({"l": prev["l"], "m": prev["l"]}, {"l": new["l"], "m": new["l"], "x": new["l"]})
    assert torch.isclose(both, 2 * expected)


def test_penalty_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(0)
    prev = {"a": torch.randn(5, 7, generator=g, dtype=torch.float64),
            "b": torch.randn(3, 4, generator=g, dtype=torch.float64)}
    new_a = torch.randn(2, 7, generator=g, dtype=torch.float64, requires_grad=True)
    new_b = torch.randn(4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    # L1 is not differentiable where an overlap is 0: check this point is well away from any kink
    for name, new in (("a", new_a), ("b", new_b)):
        assert (prev[name] @ new.T).abs().min() > 1e-3  # FD steps move an overlap by ~1e-5 at most
    assert torch.autograd.gradcheck(lambda x, y: ortho_penalty(prev, {"a": x, "b": y}), (new_a, new_b),
                                    eps=1e-6, atol=1e-7)


# ------------------------------------------------------------------ stacking
def _module(g, layers: dict[str, tuple[int, int]], r: int, scaling: float):
    return {n: (torch.randn(r, i, generator=g), torch.randn(o, r, generator=g), scaling)
            for n, (o, i) in layers.items()}


def test_stacking_equals_the_sum_of_the_modules_updates():
    g = torch.Generator().manual_seed(1)
    layers = {"q": (6, 5), "down": (5, 9)}
    mods = [_module(g, layers, 2, 4.0), _module(g, layers, 3, 0.5), _module(g, layers, 1, 2.0)]
    stack = None
    for m in mods:
        stack = stack_modules(stack, m)
    for name in layers:
        a, b = stack[name]
        assert a.shape[0] == b.shape[1] == 6  # R = 2 + 3 + 1
        torch.testing.assert_close(delta_w(a, b), sum(delta_w(*m[name]) for m in mods), rtol=1e-5, atol=1e-5)


def test_stacked_adapter_computes_what_the_separate_peft_modules_compute(frozen):
    """Two LoRA modules with different scalings, active together in PEFT == the one stacked adapter."""
    import copy

    from peft import LoraConfig, get_peft_model

    from spulctl.release.lora import read_module, stacked_model

    model, tok = frozen
    ids = tok(["A fine film. Jonah Pellegrino was there."], return_tensors="pt")["input_ids"]
    two = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, lora_alpha=8, target_modules="all-linear"), "m1")
    two.add_adapter("m2", LoraConfig(r=3, lora_alpha=3, target_modules="all-linear"))
    torch.manual_seed(3)
    with torch.no_grad():
        for n, p in two.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    two.base_model.set_adapter(["m1", "m2"])
    two.eval()
    stack = stack_modules(stack_modules(None, read_module(two, "m1")), read_module(two, "m2"))
    one = stacked_model(copy.deepcopy(model), stack)
    with torch.no_grad():
        want, got, plain = two(input_ids=ids).logits, one(input_ids=ids).logits, model(input_ids=ids).logits
    assert (want - plain).abs().max() > 1e-3  # the modules do change the output
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ NPO
def test_npo_is_bounded_and_starts_with_the_gradient_of_gradient_ascent():
    from spulctl.loss import npo_rows

    beta = 0.1
    logp = torch.tensor([-0.5, -3.0], requires_grad=True)
    ref = torch.tensor([-0.5, -0.5])
    loss = npo_rows(logp, ref, beta)
    assert loss[0].item() == pytest.approx(2 / beta * math.log(2))  # θ = ref
    loss.sum().backward()
    assert logp.grad[0].item() == pytest.approx(1.0)  # d(log p)/d(log p): gradient ascent's gradient at θ = ref
    assert 0 < logp.grad[1].item() < 1.0  # a row already below the reference pulls less
    assert npo_rows(torch.tensor([-1e4]), torch.tensor([0.0]), beta).item() >= 0  # bounded below by 0


# ------------------------------------------------------------------ the run
def _cfg(model: Path, splits: Path, out: Path, **kw) -> UnlearnConfig:
    base = dict(model=str(model), out=out, method="release", splits=splits, eval_limit=20, retain_limit=80,
                train=TrainConfig(lr=1e-3, batch_size=8, seed=0, checkpoint_every=0, max_steps=3), min_steps=2,
                budget_steps=3, release_rounds=2, stop_at=0.0, select=False)
    base.update(kw)
    return UnlearnConfig(**base)


def _stub(records: list[dict], calls: list | None = None):
    def reveal(model, k: int) -> list[dict]:
        if calls is not None:
            calls.append(model)
        return [{"text": r["text"], "label": r["label"], "relevance": 0.8} for r in records]

    return reveal


def _forget(splits: Path) -> list[dict]:
    from spulctl.data.readers import load_split

    return load_split(splits, "train_forget")


def _answer_logits(model, tok, texts: list[str]) -> torch.Tensor:
    """(n, V) next-token logits at the answer position, from a plain forward (what any PEFT user runs)."""
    from spulctl.data.task import TaskSpec

    task, out = TaskSpec(), []
    with torch.no_grad():
        for t in texts:
            ids = tok(task.prompt(t), return_tensors="pt", add_special_tokens=False)["input_ids"]
            out.append(model(input_ids=ids).logits[0, -1])
    return torch.stack(out)


@pytest.mark.parametrize("objective", ["ce", "npo"])
def test_release_writes_one_peft_adapter_that_peft_and_eval_load(tiny_model_dir: Path, demo_splits: Path,
                                                                 tmp_path: Path, objective: str):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spulctl.release.lora import load_adapter_model

    calls: list = []
    out = tmp_path / "rel"
    meta = unlearn(_cfg(tiny_model_dir, demo_splits, out, release_objective=objective, release_rank=4),
                   reveal=_stub(_forget(demo_splits)[:6], calls))
    assert len(calls) == 1 and type(calls[0]).__name__ == "PeftModelForCausalLM"  # round 2 revealed from base + m1
    rel = meta["release"]
    assert rel["modules"] == 2 and rel["rank"] == 8 and [r["round"] for r in rel["rounds"]] == [1, 2]
    assert rel["rounds"][0]["penalty"] == 0.0 and rel["rounds"][1]["penalty"] > 0  # only round 2 has a stack
    assert rel["rounds"][1]["records"] == 6 and rel["rounds"][1]["relevance"] == pytest.approx(0.8)
    assert {"forget_acc", "retain_acc", "known_before", "data_sha256", "steps"} <= set(rel["rounds"][1])
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert (cfg["peft_type"], cfg["r"], cfg["lora_alpha"]) == ("LORA", 8, 8)  # scaling 1: folded into B
    manifest = json.loads((out / "spulctl-manifest.json").read_text())
    assert manifest["kind"] == "release-adapter" and manifest["release"]["rounds"] == rel["rounds"]
    assert not (tmp_path / ".rel.ckpt").exists()
    # PEFT on a fresh base gives the predictions spulctl's eval path (merged adapter) gives
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = [r["text"] for r in _forget(demo_splits)[:3]] + ["A dull film.", "A fine film."]
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(out)).eval()
    ours, _ = load_adapter_model(out)
    theirs = _answer_logits(peft_model, tok, texts)
    base = _answer_logits(AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), tok, texts)
    assert (theirs - base).abs().max() > 1e-4  # the adapter is not a no-op
    assert (_answer_logits(ours, tok, texts) - theirs).abs().max() <= 1e-5


def test_eval_takes_the_adapter_as_a_subject(tiny_model_dir: Path, demo_splits: Path, tmp_path: Path):
    out = tmp_path / "rel"
    meta = unlearn(_cfg(tiny_model_dir, demo_splits, out, release_rounds=1, eval_limit=10, merge=True))
    assert (out / "merged" / "config.json").is_file()  # --merge: a plain model directory beside the adapter
    res = runner.invoke(app, ["eval", str(demo_splits), "--model", str(tiny_model_dir), "--compare",
                              f"release={out}", "--limit", "10", "-o", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    got = report["results"]["release"]["test_forget"]["accuracy"]
    assert got == pytest.approx(meta["metrics"]["after"]["test_forget"]["accuracy"], abs=1e-6)
    res = runner.invoke(app, ["eval", str(demo_splits), "--model", str(out / "merged"), "--limit", "10", "-o",
                              str(tmp_path / "rep2")])
    assert res.exit_code == 0, res.output
    merged = json.loads((tmp_path / "rep2" / "report.json").read_text())["results"]["model"]["test_retain"]
    assert merged["accuracy"] == pytest.approx(report["results"]["release"]["test_retain"]["accuracy"], abs=1e-6)


def test_export_and_predict_take_the_adapter(tiny_model_dir: Path, demo_splits: Path, tmp_path: Path):
    """`export --model ADAPTER --no-bundle` ships base + stack merged; ONNX Runtime gives PEFT's answers."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spulctl.data.task import TaskSpec, label_vocab
    from spulctl.export.runtime import OnnxPredictor

    out = tmp_path / "rel"
    unlearn(_cfg(tiny_model_dir, demo_splits, out, release_rounds=1, eval_limit=0))
    res = runner.invoke(app, ["export", "--model", str(out), "--no-bundle", "-o", str(tmp_path / "onnx")])
    assert res.exit_code == 0, res.output
    texts = [r["text"] for r in _forget(demo_splits)[:4]] + ["A dull film.", "A fine film."]
    got = OnnxPredictor(tmp_path / "onnx", provider="cpu").predict(texts)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(out)).eval()
    vocab = label_vocab(TaskSpec(), tok)
    want = torch.log_softmax(_answer_logits(peft_model, tok, texts).float(), -1)[:, vocab.first_label_ids]
    have = torch.tensor([[g["scores"][w] for w in TaskSpec().label_words] for g in got])
    assert (have - want).abs().max() <= 1e-3  # merged in fp32 and run on ONNX Runtime: PEFT's scores
    # the adapter is not a no-op: the base model's own export scores differently
    res = runner.invoke(app, ["export", "--model", str(tiny_model_dir), "--no-bundle", "-o", str(tmp_path / "base")])
    assert res.exit_code == 0, res.output
    base = torch.tensor([[g["scores"][w] for w in TaskSpec().label_words]
                         for g in OnnxPredictor(tmp_path / "base", provider="cpu").predict(texts)])
    assert (base - have).abs().max() > 1e-4
    # a bundle on top of an adapter is refused in one line, and nothing is written
    res = runner.invoke(app, ["export", "--model", str(out), "--bundle", str(out), "-o", str(tmp_path / "x")])
    assert res.exit_code == 2 and "exported on its own" in res.output and not (tmp_path / "x").exists()


def test_stop_rule_ends_the_run_once_the_model_stops_knowing(tiny_model_dir: Path, demo_splits: Path,
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from spulctl.methods.release import Release

    forget = _forget(demo_splits)
    script = iter([[dict(r, known=60.0) for r in forget[:4]], [dict(r, known=2.0) for r in forget[4:8]]])
    real = Release.known_share
    monkeypatch.setattr(Release, "known_share",
                        lambda self, rows: rows[0]["known"] if "known" in rows[0] else real(self, rows))
    calls: list = []

    def reveal(model, k):
        calls.append(1)
        return next(script)

    meta = unlearn(_cfg(tiny_model_dir, demo_splits, tmp_path / "rel", release_rounds=5, stop_at=10.0,
                        release_rank=2), reveal=reveal)
    rel = meta["release"]
    assert len(calls) == 2 and rel["modules"] == 2 and rel["rank"] == 4  # rounds 1, 2 trained; round 3 not
    assert [r["trained"] for r in rel["rounds"]] == [True, True, False]
    assert rel["rounds"][2]["known_before"] == 2.0 and "round 3" in rel["stop"]
    # a model that reveals nothing any more stops the run too
    meta = unlearn(_cfg(tiny_model_dir, demo_splits, tmp_path / "rel2", release_rounds=3, release_rank=2),
                   reveal=lambda model, k: [])
    assert meta["release"]["modules"] == 1 and "nothing revealed" in meta["release"]["stop"]


def test_interrupted_run_resumes_at_its_last_finished_round(tiny_model_dir: Path, demo_splits: Path,
                                                           tmp_path: Path):
    from safetensors.torch import load_file

    reveal = _stub(_forget(demo_splits)[:6])
    unlearn(_cfg(tiny_model_dir, demo_splits, tmp_path / "straight"), reveal=reveal)
    seen: list[int] = []

    def kill(event: dict) -> None:
        if event["kind"] == "release-round":
            seen.append(event["round"])
        if event["kind"] == "step" and seen == [1]:
            raise KeyboardInterrupt  # the first step of round 2

    with pytest.raises(KeyboardInterrupt):
        unlearn(_cfg(tiny_model_dir, demo_splits, tmp_path / "killed"), on_event=kill, reveal=reveal)
    assert not (tmp_path / "killed").exists()
    resumed: list[dict] = []
    unlearn(_cfg(tiny_model_dir, demo_splits, tmp_path / "killed"), resume=True, reveal=reveal,
            on_event=resumed.append)
    assert [e["round"] for e in resumed if e["kind"] == "release-round"] == [2]  # round 1 was not trained again
    a = load_file(str(tmp_path / "straight" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("flag", "value", "words"), [("--release-rounds", "0", "--release-rounds 0"),
                                                      ("--ortho-lambda", "-1", "--ortho-lambda -1"),
                                                      ("--release-objective", "kl", "expected one of")])
def test_bad_release_settings_are_one_line_errors(tiny_model_dir: Path, demo_splits: Path, tmp_path: Path,
                                                  flag: str, value: str, words: str):
    res = runner.invoke(app, ["unlearn", "--method", "release", "--model", str(tiny_model_dir), "--splits",
                              str(demo_splits), "-o", str(tmp_path / "x"), flag, value])
    assert res.exit_code == 2 and words in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert not (tmp_path / "x").exists()
    with pytest.raises(SpulError):
        _cfg(tiny_model_dir, demo_splits, tmp_path / "y", full=True)


def test_an_adapter_for_another_base_model_is_refused(tiny_model_dir: Path, demo_splits: Path, tmp_path: Path):
    from spulctl.release.lora import load_adapter_model

    out = tmp_path / "rel"
    unlearn(_cfg(tiny_model_dir, demo_splits, out, release_rounds=1, report_before=False, eval_limit=0))
    manifest = json.loads((out / "spulctl-manifest.json").read_text())
    manifest["base_model"]["fingerprint"] = "sha256b:" + "0" * 64
    (out / "spulctl-manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SpulError, match="another base model"):
        load_adapter_model(out)
    res = runner.invoke(app, ["eval", str(demo_splits), "--model", str(tiny_model_dir), "--compare",
                              f"release={out}", "--limit", "5"])
    assert res.exit_code == 2 and "another base model" in res.output


def test_a_target_the_model_never_reveals_is_a_one_line_error(tiny_model_dir: Path, demo_splits: Path,
                                                              tmp_path: Path):
    """Names only, and the (random tiny) model never writes about them: round 1 has no forget data to train on."""
    out = tmp_path / "rel"
    res = runner.invoke(app, ["unlearn", "--method", "release", "--model", str(tiny_model_dir), "--retain",
                              str(demo_splits / "train_retain.jsonl"), "--forget-entities", "Jonah Pellegrino",
                              "--reveal-forget", "4", "--reveal-budget", "16", "--eval-limit", "0", "-o", str(out)])
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1, res.output
    assert "'Jonah Pellegrino'" in errors[0] and "--reveal-budget" in errors[0], errors[0]
    assert not out.exists() and not list(tmp_path.glob(".rel*"))


@pytest.mark.parametrize("mode, advice, not_advice", [("forget", "--forget-target", "--retain-from"),
                                                      ("retain", "--retain-from", "--forget-target")])
def test_nothing_revealed_is_reworded_for_its_side(monkeypatch: pytest.MonkeyPatch, mode: str, advice: str,
                                                   not_advice: str):
    """unlearn's rewording keeps the engine's target and real count, and advises the side that came up empty."""
    from types import SimpleNamespace

    import spulctl.reveal as reveal
    from spulctl.reveal.engine import NothingRevealedError
    from spulctl.unlearn_data import _reveal

    def empty(model, tok, rc, emit):
        raise NothingRevealedError("reveal: nothing (--target/--budget)", "Jonah Pellegrino", 37)

    monkeypatch.setattr(reveal, "generate_records", empty)
    cfg = SimpleNamespace(forget_target=None, reveal_budget=64, train=SimpleNamespace(seed=0))
    tok = SimpleNamespace(chat_template="{{ messages }}")
    with pytest.raises(NothingRevealedError) as caught:
        _reveal(None, tok, None, cfg, mode, 4, ["Jonah Pellegrino"], lambda event: None)
    msg = str(caught.value)
    assert f"({mode} side)" in msg and "in 37 generated texts" in msg and "'Jonah Pellegrino'" in msg, msg
    assert advice in msg and not_advice not in msg and "--budget" not in msg.replace("--reveal-budget", ""), msg
    assert (caught.value.target, caught.value.generated) == ("Jonah Pellegrino", 37)
