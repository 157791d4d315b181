"""``spulctl unlearn``: fast-step equivalence, SPUL loss, bundles, baselines, resume, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from spulctl.cli import app
from spulctl.data.task import TaskSpec, encode, label_vocab
from spulctl.io import write_jsonl_atomic as write_jsonl
from spulctl.loss import LossWeights, kl_rows, unlearning_loss
from spulctl.step import StepOptions, collate, prompted_logits
from spulctl.train import TrainConfig
from spulctl.unlearn import UnlearnConfig, unlearn

runner = CliRunner()


def _batch(tok, n: int = 6):
    from spulctl.data.demo import demo_records

    spec = TaskSpec()
    records = demo_records(n)
    vocab = label_vocab(spec, tok)
    targets = [vocab.generic_ids[i % 2] if i < n // 2 else vocab.label_ids[spec.label_words.index(r["label"])]
               for i, r in enumerate(records)]
    return collate(encode(records, spec, tok, vocab, targets=targets), tok.pad_token_id)


def naive_loss(model, batch, phi, is_forget, w: LossWeights):
    """The reference: concatenate the prompt, full logits, second unprompted forward for r."""
    full = StepOptions(answer_only=False, shared_prefix=False, cached_reference=False, lean_mlp=False,
                       grouped_attention=False)
    q = prompted_logits(model, batch, phi, full)
    with torch.no_grad():
        r = prompted_logits(model, batch, None, full)[~is_forget, 0]
    return unlearning_loss(q, batch.targets, is_forget, r, w)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize(("answer_only", "shared_prefix"), [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("grouped", [True, False])
def test_fast_step_switches_change_nothing(frozen, direction, answer_only, shared_prefix, grouped):
    model, tok = frozen
    batch = _batch(tok)
    is_forget = torch.arange(len(batch)) < len(batch) // 2
    w = LossWeights(forget=1.0, retain=0.7, kl=0.3, kl_direction=direction)
    torch.manual_seed(0)
    phi = (torch.randn(5, 64) * 0.5).requires_grad_(True)
    ref = naive_loss(model, batch, phi, is_forget, w)
    ref["loss"].backward()
    g_ref, phi.grad = phi.grad.clone(), None
    # fast: answer-only / shared prefix, and r from cached hidden rows through the head
    from spulctl.step import answer_hidden, body_and_head

    with torch.no_grad():
        cached = answer_hidden(model, batch)[~is_forget, 0]  # (m, d), what the cache file stores
    opts = StepOptions(answer_only=answer_only, shared_prefix=shared_prefix, grouped_attention=grouped)
    q = prompted_logits(model, batch, phi, opts)
    r = body_and_head(model)[1](cached).float()
    fast = unlearning_loss(q, batch.targets, is_forget, r, w)
    fast["loss"].backward()
    for k in ("loss", "l_f", "l_r", "l_kl"):
        torch.testing.assert_close(fast[k], ref[k], rtol=1e-5, atol=1e-6)
    rel = (phi.grad - g_ref).abs().max() / g_ref.abs().max()
    assert rel <= 1e-5, float(rel)


def test_kl_directions_are_the_textbook_formulas():
    q, r = torch.randn(3, 11), torch.randn(3, 11)
    lq, lr = q.log_softmax(-1), r.log_softmax(-1)
    fwd = torch.nn.functional.kl_div(lq, lr, log_target=True, reduction="none").sum(-1)  # KL(r||q)
    rev = torch.nn.functional.kl_div(lr, lq, log_target=True, reduction="none").sum(-1)  # KL(q||r)
    torch.testing.assert_close(kl_rows(q, r, "forward"), fwd)
    torch.testing.assert_close(kl_rows(q, r, "reverse"), rev)
    assert not torch.allclose(fwd, rev)


def test_each_term_is_averaged_over_its_own_rows():
    logits = torch.randn(4, 1, 9)
    targets = torch.tensor([[1], [2], [3], [4]])
    is_forget = torch.tensor([True, False, False, False])
    out = unlearning_loss(logits, targets, is_forget, None, LossWeights(retain=2.0, kl=0.0))
    ce = torch.nn.functional.cross_entropy(logits[:, 0], targets[:, 0], reduction="none")
    torch.testing.assert_close(out["l_f"], ce[0])
    torch.testing.assert_close(out["l_r"], ce[1:].mean())
    torch.testing.assert_close(out["loss"], ce[0] + 2.0 * ce[1:].mean())


def _cfg(model: Path, splits: Path, out: Path, **kw) -> UnlearnConfig:
    train = dict(lr=2e-2, epochs=1, batch_size=16, seed=0, checkpoint_every=3, max_steps=8)
    train.update(kw.pop("train", {}))
    # forget_share=0: these tests pin the paper's mixing (epochs over the data as it is); the forget-share path
    # has its own tests in test_forget_share.py
    base = dict(model=str(model), out=out, splits=splits, prompt_tokens=4, eval_limit=40, retain_limit=200,
                train=TrainConfig(**train), forget_share=0.0, prompt_encoder="mlp", prompt_init="vocab")
    base.update(kw)
    return UnlearnConfig(**base)


def test_spul_bundle_round_trip_and_classifier(tiny_model_dir: Path, demo_splits: Path, tmp_path: Path, frozen):
    from spulctl import PromptedClassifier, load_bundle

    meta = unlearn(_cfg(tiny_model_dir, demo_splits, tmp_path / "b"))
    bundle = load_bundle(tmp_path / "b")
    assert bundle.prompt.shape == (4, 64)
    assert bundle.meta["method"] == "spul" and bundle.meta["training"]["steps"] == 8
    assert set(meta["metrics"]["after"]) == {"test_retain", "test_forget"}
    model, tok = frozen
    preds = PromptedClassifier(model, bundle, tok).predict(["A fine film.", "A dull film."])
    assert len(preds) == 2 and set(preds[0]["scores"]) == {"negative", "positive"}
    assert (tmp_path / "b" / "reference.safetensors").exists() is False  # cache stays in the checkpoint dir
    assert not (tmp_path / ".b.ckpt").exists()


def test_bundle_for_another_model_and_corruption_are_refused(tiny_model_dir: Path, demo_splits: Path,
                                                               tmp_path: Path):
    from spulctl.bundle import BundleError, check_fingerprint, load_bundle
    from spulctl.models import load_model

    unlearn(_cfg(tiny_model_dir, demo_splits, tmp_path / "b", train={"max_steps": 2}))
    other, _ = load_model(str(tiny_model_dir), device="cpu")
    with torch.no_grad():
        other.get_input_embeddings().weight.mul_(1.01)
    bundle = load_bundle(tmp_path / "b")
    with pytest.raises(BundleError, match="--ignore-fingerprint"):
        check_fingerprint(bundle, other)
    check_fingerprint(bundle, other, ignore=True)
    result = runner.invoke(app, ["bundle", "verify", str(tmp_path / "b"), "--model", str(tiny_model_dir)])
    assert result.exit_code == 0, result.output
    assert "ok" in result.output
    data = bytearray((tmp_path / "b" / "prompt.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "b" / "prompt.safetensors").write_bytes(bytes(data))
    result = runner.invoke(app, ["bundle", "verify", str(tmp_path / "b")])
    assert result.exit_code == 2 and "corrupted" in result.output


def test_resume_after_kill_gives_the_same_bundle(tiny_model_dir: Path, demo_splits: Path, tmp_path: Path):
    from safetensors.torch import load_file

    unlearn(_cfg(tiny_model_dir, demo_splits, tmp_path / "straight"))

    def kill(event: dict) -> None:
        if event["kind"] == "step" and event["step"] == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        unlearn(_cfg(tiny_model_dir, demo_splits, tmp_path / "killed"), on_event=kill)
    assert not (tmp_path / "killed").exists()
    assert (tmp_path / ".killed.ckpt" / "reference.safetensors").is_file()
    unlearn(_cfg(tiny_model_dir, demo_splits, tmp_path / "killed"), resume=True)
    a = load_file(str(tmp_path / "straight" / "prompt.safetensors"))["prompt"]
    b = load_file(str(tmp_path / "killed" / "prompt.safetensors"))["prompt"]
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["ga", "rl", "ga_kl", "ga_gd"])
def test_baselines_write_a_model_dir(tiny_model_dir: Path, demo_splits: Path, tmp_path: Path, method: str):
    from safetensors.torch import load_file

    meta = unlearn(_cfg(tiny_model_dir, demo_splits, tmp_path / method, method=method, train={"max_steps": 3}))
    weights = load_file(str(next((tmp_path / method).glob("*.safetensors"))))
    assert not any("lora" in k for k in weights)
    manifest = json.loads((tmp_path / method / "spulctl-manifest.json").read_text())
    assert manifest["method"] == method and manifest["kind"] == "unlearned-model"
    uses_retain = method in ("ga_kl", "ga_gd")
    assert (meta["data"]["retain_records"] > 0) == uses_retain


def test_retain_from_unlabelled_texts(tiny_model_dir: Path, demo_splits: Path, tmp_path: Path):
    texts = write_jsonl(tmp_path / "texts.jsonl", [{"text": f"Some other review number {i}."} for i in range(40)])
    cfg = _cfg(tiny_model_dir, None, tmp_path / "b", forget=demo_splits / "train_forget.jsonl",
               retain_from=texts, train={"max_steps": 2})
    meta = unlearn(cfg)
    assert meta["data"]["retain_records"] == 40
    assert "labelled by the model" in meta["data"]["retain_source"]


def test_self_generated_retain_set(tiny_model_dir: Path, demo_splits: Path, tmp_path: Path):
    cfg = _cfg(tiny_model_dir, None, tmp_path / "b", forget=demo_splits / "train_forget.jsonl", self_generate=16,
               train={"max_steps": 2})
    meta = unlearn(cfg)
    assert "written by the model off the target" in meta["data"]["retain_source"]
    assert "name-free pieces of the forget texts" in meta["data"]["retain_source"]
    # the texts the model wrote / labelled and the labels it gave them are saved with the bundle, hash-checked
    from spulctl.bundle import BundleError, verify_bundle
    from spulctl.data.rewrite import name_pattern

    saved = [json.loads(x) for x in (tmp_path / "b" / "retain_used.jsonl").read_text().splitlines()]
    assert len(saved) == meta["data"]["retain_records"] == meta["data"]["retain_file"]["records"]
    assert all(r["text"].strip() and r["label"] in ("negative", "positive") for r in saved)
    by_source = {s: [r for r in saved if r["source"] == s] for s in {r["source"] for r in saved}}
    assert set(by_source) == {"reveal:retain", "forget:name-free"}
    assert 1 <= len(by_source["reveal:retain"]) <= 16 and 1 <= len(by_source["forget:name-free"]) <= 16
    forget_texts = (demo_splits / "train_forget.jsonl").read_text()
    names = name_pattern(meta["data"]["plan"]["entities"]) if meta["data"]["plan"] else None
    for r in by_source["forget:name-free"]:  # a piece of a forget text, naming nobody to forget
        assert r["text"] in forget_texts and r["label_source"] == "model"
        assert names is None or not names.search(r["text"])
    verify_bundle(tmp_path / "b")
    with open(tmp_path / "b" / "retain_used.jsonl", "a") as f:
        f.write('{"text": "tampered", "label": "positive"}\n')
    with pytest.raises(BundleError, match=r"retain_used\.jsonl"):
        verify_bundle(tmp_path / "b")


def test_self_generated_retain_takes_the_forget_files_surface_form(tiny_model_dir: Path, demo_splits: Path,
                                                                    tmp_path: Path):
    from spulctl.data.style import surface_style

    rows = [json.loads(x) for x in (demo_splits / "train_forget.jsonl").read_text().splitlines()]
    assert not surface_style([r["text"] for r in rows]).lower  # the demo's texts are cased ...
    sst2_like = write_jsonl(tmp_path / "f.jsonl", [{**r, "text": r["text"].lower()} for r in rows])  # ... these not
    cfg = _cfg(tiny_model_dir, None, tmp_path / "b", forget=sst2_like, self_generate=12, train={"max_steps": 1})
    meta = unlearn(cfg)
    assert "surface form (lower-cased" in meta["data"]["retain_source"]
    saved = [json.loads(x) for x in (tmp_path / "b" / "retain_used.jsonl").read_text().splitlines()]
    generated = [r["text"] for r in saved if r.get("source") == "reveal:retain"]
    assert generated and all(t == t.lower() for t in generated)


def _cli(tiny_model_dir: Path, out: Path, *args: str):
    return runner.invoke(app, ["unlearn", "--model", str(tiny_model_dir), "-o", str(out), "--max-steps", "2",
                               "--eval-limit", "0", *args])


def test_unlearn_bad_inputs(tiny_model_dir: Path, demo_splits: Path, tmp_path: Path):
    forget = demo_splits / "train_forget.jsonl"
    retain = demo_splits / "train_retain.jsonl"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    overlap = write_jsonl(tmp_path / "overlap.jsonl",
                          [json.loads(forget.read_text().splitlines()[0]), {"text": "x y z", "label": "positive"}])
    badlabel = write_jsonl(tmp_path / "bad.jsonl", [{"text": "a b c", "label": "meh"}])
    cases = [
        (["--forget", str(empty), "--retain", str(retain)], "no records"),
        (["--forget", str(forget), "--retain", str(overlap)], "also in the forget set"),
        (["--forget", str(badlabel), "--retain", str(retain)], "unknown label 'meh'"),
        (["--forget", str(forget), "--retain", str(retain), "-p", "0"], "--prompt-tokens 0"),
        (["--forget", str(forget), "--retain", str(retain), "--method", "magic"], "unknown method"),
        (["--forget", str(forget), "--retain", str(retain), "--kl-direction", "up"], "--kl-direction up"),
        (["--forget", str(forget), "--retain", str(retain), "--generic-labels", "positive"], "also label words"),
        (["--retain", str(retain)], "give --forget FILE, --splits DIR"),
    ]
    for i, (args, message) in enumerate(cases):
        out = tmp_path / f"o{i}"
        result = _cli(tiny_model_dir, out, *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output
        assert not out.exists(), args


def test_nan_loss_stops_with_one_line_and_no_bundle(tiny_model_dir: Path, demo_splits: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch):
    import spulctl.methods.base as base

    real = base.unlearning_loss

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        return {**out, "loss": out["loss"] * float("nan")}

    monkeypatch.setattr(base, "unlearning_loss", poisoned)
    result = _cli(tiny_model_dir, tmp_path / "o", "--splits", str(demo_splits))
    assert result.exit_code == 2
    assert "non-finite loss" in result.output and "step 1" in result.output
    assert not (tmp_path / "o").exists()


def test_eval_every_keep_best(tiny_model_dir: Path, demo_splits: Path, tmp_path: Path):
    from spulctl import load_bundle

    cfg = _cfg(tiny_model_dir, demo_splits, tmp_path / "b", eval_every=1, keep="best",
               train={"max_steps": None, "epochs": 2, "lr": 5e-2})
    meta = unlearn(cfg)
    evals = meta["training"]["evals"]
    assert [e["epoch"] for e in evals] == [1, 2]
    assert all(e["score"] == e["retain_acc"] - e["forget_acc"] for e in evals)
    assert meta["training"]["kept"] == "best"
    assert meta["data"]["forget_records"] < len((demo_splits / "train_forget.jsonl").read_text().splitlines())
    assert load_bundle(tmp_path / "b").prompt.shape == (4, 64)
    with pytest.raises(Exception, match="--keep best"):
        _cfg(tiny_model_dir, demo_splits, tmp_path / "c", keep="best")


def test_resume_without_checkpoint_does_not_clobber(tiny_model_dir: Path, demo_splits: Path, tmp_path: Path):
    out = tmp_path / "b"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    result = _cli(tiny_model_dir, out, "--splits", str(demo_splits), "--resume")
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert (out / "mine.txt").read_text() == "keep"


def test_prompt_init_from_the_split_entities(tiny_model_dir: Path, demo_splits: Path, tmp_path: Path):
    from spulctl.prompt import entities_text, init_vectors

    text = entities_text(["jonah pellegrino", "priya raman"])
    assert text == "Answer unknown if the text mentions Jonah Pellegrino, Priya Raman."
    result = runner.invoke(app, ["unlearn", "--model", str(tiny_model_dir), "--splits", str(demo_splits), "-o",
                                 str(tmp_path / "b"), "--prompt-init", "entities", "-p", "6", "--max-steps", "1",
                                 "--eval-limit", "0", "--retain-limit", "20", "--prompt-encoder", "none",
                                 "--lr", "1e-12"])
    assert result.exit_code == 0, result.output
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    names = json.loads((demo_splits / "split.json").read_text())["entities"]
    want = init_vectors(model, tok, 6, "text", 0, text=entities_text(list(names)))
    torch.testing.assert_close(load_file(str(tmp_path / "b" / "prompt.safetensors"))["prompt"], want)
    beside = runner.invoke(app, ["unlearn", "--model", str(tiny_model_dir), "--forget",
                                 str(demo_splits / "train_forget.jsonl"), "--retain-from",
                                 str(demo_splits / "test_retain.jsonl"), "-o", str(tmp_path / "d"), "--prompt-init",
                                 "entities", "-p", "6", "--max-steps", "1", "--eval-limit", "0"])
    assert beside.exit_code == 0, beside.output  # split.json found beside --forget
    forget = write_jsonl(tmp_path / "f.jsonl", [{"text": "Ann was great.", "label": "positive"}])
    bad = runner.invoke(app, ["unlearn", "--model", str(tiny_model_dir), "--forget", str(forget), "-o",
                              str(tmp_path / "c"), "--prompt-init", "entities", "--max-steps", "1"])
    assert bad.exit_code == 2 and "--prompt-init entities" in bad.output and not (tmp_path / "c").exists()


@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_bf16_model_with_cached_reference(tiny_model_dir: Path, demo_splits: Path, tmp_path: Path, kernels: str):
    """A bf16 model (what --dtype auto picks on CUDA) trains with the fp32 reference cache: the cached rows are
    cast to the head's dtype and kept on its device (regression: the first H100 run failed on both paths)."""
    if kernels == "triton":
        pytest.importorskip("triton")
    events: list[dict] = []
    meta = unlearn(_cfg(tiny_model_dir, demo_splits, tmp_path / "b", dtype="bfloat16", kernels=kernels,
                        eval_limit=0, train={"max_steps": 4}), on_event=events.append)
    losses = [e["parts"]["loss"] for e in events if e["kind"] == "step"]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert any(e["parts"]["l_kl"] > 0 for e in events if e["kind"] == "step")  # the cached reference was used
    assert meta["settings"]["dtype"] == "bfloat16"


@pytest.mark.parametrize("shared_prefix", [True, False])
def test_lean_swiglu_is_bit_identical(frozen, shared_prefix):
    """The lean MLP (one activation fewer saved) gives exactly the same hidden rows and ∂φ as plain autograd."""
    from spulctl.lean_mlp import lean_swiglu
    from spulctl.step import prompted_hidden

    model, tok = frozen
    batch = _batch(tok)
    with lean_swiglu(model) as patched:
        assert patched == model.config.num_hidden_layers
    assert all("forward" not in vars(m) for m in model.modules())  # restored on exit
    outs, grads = [], []
    for lean in (True, False):
        phi = (torch.randn(5, 64, generator=torch.Generator().manual_seed(0)) * 0.5).requires_grad_(True)
        h = prompted_hidden(model, batch, phi, StepOptions(shared_prefix=shared_prefix, lean_mlp=lean))
        (h * torch.linspace(-1, 1, h.numel()).view_as(h)).sum().backward()
        outs.append(h.detach())
        grads.append(phi.grad)
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("method", ["spul", "ga_kl"])
def test_micro_batches_give_the_whole_batch_gradient(frozen, mixed_examples, method: str):
    """forward_backward in slices of 2 adds up to the loss parts and gradient of the whole batch."""
    from spulctl.methods.base import AnswerObjective
    from spulctl.step import body_and_head, prompted_logits
    from spulctl.train import forward_backward

    model, tok = frozen
    examples = mixed_examples
    torch.manual_seed(0)
    phi = (torch.randn(3, 64) * 0.5).requires_grad_(True)
    w = LossWeights(forget=-1.0 if method == "ga_kl" else 1.0, retain=0.7, kl=0.3)
    obj = AnswerObjective(examples, 3, [("phi", phi)], lambda b: prompted_logits(model, b, phi), None,
                          lambda b: prompted_logits(model, b, None), body_and_head(model)[1], w,
                          tok.pad_token_id, "cpu")
    batch = [5, 0, 3, 6, 1, 2, 4]  # forget rows 0-2 spread over the slices, one slice all retain
    whole = forward_backward(obj, batch)
    g_whole, phi.grad = phi.grad.clone(), None
    sliced = forward_backward(obj, batch, micro_batch=2)
    for k in ("loss", "l_f", "l_r", "l_kl"):
        torch.testing.assert_close(sliced[k], whole[k], rtol=1e-5, atol=1e-6)
    rel = (phi.grad - g_whole).abs().max() / g_whole.abs().max()
    assert rel <= 1e-5, float(rel)


def test_unlearn_with_micro_batches(tiny_model_dir: Path, demo_splits: Path, tmp_path: Path):
    from safetensors.torch import load_file

    unlearn(_cfg(tiny_model_dir, demo_splits, tmp_path / "whole", train={"max_steps": 3}))
    unlearn(_cfg(tiny_model_dir, demo_splits, tmp_path / "sliced", train={"max_steps": 3, "micro_batch": 3}))
    a = load_file(str(tmp_path / "whole" / "prompt.safetensors"))["prompt"]
    b = load_file(str(tmp_path / "sliced" / "prompt.safetensors"))["prompt"]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    result = runner.invoke(app, ["unlearn", "--model", str(tiny_model_dir), "--splits", str(demo_splits),
                                 "-o", str(tmp_path / "bad"), "--micro-batch", "-1"])
    assert result.exit_code != 0 and "micro_batch=-1" in result.output
    assert not (tmp_path / "bad").exists()


def test_entities_text_leaves_out_surname_aliases():
    from spulctl.prompt import entities_text

    text = entities_text(["bruce willis", "willis", "kline", "kevin kline", "cher", "bruce willis"])
    assert text == "Answer unknown if the text mentions Bruce Willis, Kevin Kline, Cher."


def test_auto_prompt_tokens_holds_the_whole_text(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    from spulctl.prompt import MIN_PROMPT_TOKENS, auto_prompt_tokens, entities_text

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    short = entities_text(["ann lee"])
    assert auto_prompt_tokens(tok, short) == (MIN_PROMPT_TOKENS, len(tok(short, add_special_tokens=False).input_ids))
    many = entities_text([f"person{i} surname{i}" for i in range(6)])
    n = len(tok(many, add_special_tokens=False).input_ids)
    assert n > MIN_PROMPT_TOKENS and auto_prompt_tokens(tok, many) == (n, n)
    assert auto_prompt_tokens(tok, many, cap=n - 1) == (n - 1, n)
    assert auto_prompt_tokens(tok, None) == (MIN_PROMPT_TOKENS, 0)


def test_prompt_tokens_auto_grows_with_the_names(tiny_model_dir: Path, demo_splits: Path, tmp_path: Path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spulctl.prompt import entities_text, init_vectors

    names = [f"person{i} surname{i}" for i in range(4)]
    result = runner.invoke(app, ["unlearn", "--model", str(tiny_model_dir), "--splits", str(demo_splits), "-o",
                                 str(tmp_path / "b"), "--forget-entities", ",".join(names), "--max-steps", "1",
                                 "--eval-limit", "0", "--retain-limit", "20", "--lr", "1e-12", "--no-select"])
    assert result.exit_code == 0, result.output
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = entities_text(names)
    n = len(tok(text, add_special_tokens=False).input_ids)
    assert n > 30 and f"p = {n} tokens" in " ".join(result.output.split())
    prompt = load_file(str(tmp_path / "b" / "prompt.safetensors"))["prompt"]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.testing.assert_close(prompt, init_vectors(model, tok, n, "text", 0, text=text))
    fixed = runner.invoke(app, ["unlearn", "--model", str(tiny_model_dir), "--splits", str(demo_splits), "-o",
                                str(tmp_path / "c"), "--forget-entities", ",".join(names), "--max-steps", "1",
                                "--eval-limit", "0", "--retain-limit", "20", "--no-select", "-p", "7"])
    assert fixed.exit_code == 0, fixed.output
    assert load_file(str(tmp_path / "c" / "prompt.safetensors"))["prompt"].shape[0] == 7
    bad = runner.invoke(app, ["unlearn", "--model", str(tiny_model_dir), "--splits", str(demo_splits), "-o",
                              str(tmp_path / "d"), "-p", "many"])
    assert bad.exit_code == 2 and "--prompt-tokens many" in bad.output and not (tmp_path / "d").exists()
