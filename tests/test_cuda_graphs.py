"""The CUDA-graph SPUL step: its sync-free loss and padded static step equal the objective's; replay on a GPU."""

from __future__ import annotations

import pytest
import torch

from spulctl.loss import LossWeights, unlearning_loss, weighted_unlearning_loss

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")


def _row_weights(is_forget: torch.Tensor, counts: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    return is_forget.float() / max(counts[0], 1), (~is_forget).float() / max(counts[1], 1)


@pytest.mark.parametrize("kernels", ["torch", "triton"])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("counts", [None, (5, 7)])
def test_weighted_loss_equals_the_selecting_loss(kernels: str, direction: str, counts):
    """Rows weighted instead of selected: the same parts and ∂/∂hidden (also for a micro-batch's share)."""
    import os

    dev = "cuda" if os.environ.get("TRITON_INTERPRET") == "0" and torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    b, k, d, v = 6, 2, 16, 50
    head = torch.nn.Linear(d, v, bias=False).requires_grad_(False).to(dev)
    hidden = torch.randn(b, k, d, device=dev, requires_grad=True)
    ref_all = torch.randn(b, d, device=dev)
    is_forget = torch.tensor([True, False, True, False, False, True], device=dev)
    targets = torch.randint(0, v, (b, k), device=dev)
    targets[[1, 3, 4], 1] = -100  # retain rows: one target token
    w = LossWeights(forget=1.0, retain=0.7, kl=0.3, kl_direction=direction)
    n_f = int(is_forget.sum())
    cnt = counts or (n_f, b - n_f)
    sel = unlearning_loss(head(hidden).float(), targets, is_forget, head(ref_all[~is_forget]).float(), w, counts)
    sel["loss"].backward()
    g_sel, hidden.grad = hidden.grad.clone(), None
    w_f, w_r = _row_weights(is_forget, cnt)
    got = weighted_unlearning_loss(hidden, targets, w_f, w_r, ref_all, head, w, kernels)
    got["loss"].backward()
    for key in ("loss", "l_f", "l_r", "l_kl"):
        torch.testing.assert_close(got[key].float(), sel[key].float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hidden.grad, g_sel, rtol=1e-5, atol=1e-7)


def _objective_pair(model, tok, examples, encoder: str, beta: float = 0.3):
    """The eager AnswerObjective and the (uncaptured) static step over the same examples (3 forget) and prompt."""
    from spulctl.cuda_graphs import GraphedPromptLoss
    from spulctl.methods.base import AnswerObjective
    from spulctl.prompt import soft_prompt
    from spulctl.step import StepOptions, answer_hidden, body_and_head, collate, prompted_logits

    with torch.no_grad():
        ref = answer_hidden(model, collate(examples[3:], tok.pad_token_id).to(model.device))[:, 0]  # (4, d): cached
    torch.manual_seed(0)
    prompt = soft_prompt(torch.randn(3, 64) * 0.5, encoder, 16).to(model.device)
    head = body_and_head(model)[1]
    w = LossWeights(forget=1.0, retain=0.7, kl=beta)
    opts = StepOptions()
    obj = AnswerObjective(examples, 3, list(prompt.named_parameters()),
                          lambda b: prompted_logits(model, b, prompt(), opts), ref, None, head, w,
                          tok.pad_token_id, model.device)
    graphed = GraphedPromptLoss(model, prompt, head, examples, 3, ref, w, opts, tok.pad_token_id, capture=False)
    return obj, graphed, prompt


def _grads(prompt) -> list[torch.Tensor]:
    grads = [p.grad.clone() for p in prompt.parameters()]
    for p in prompt.parameters():
        p.grad = None
    return grads


def _assert_same(parts_a, grads_a, parts_b, grads_b, rel: float = 1e-5):
    for key in ("loss", "l_f", "l_r", "l_kl"):
        torch.testing.assert_close(parts_a[key], parts_b[key], rtol=rel, atol=1e-6)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        err = (ga - gb).abs().max() / gb.abs().max()
        assert err <= rel, float(err)


@pytest.mark.parametrize("encoder", ["none", "mlp"])
@pytest.mark.parametrize("micro_batch", [0, 2])
def test_padded_static_step_equals_the_objective(frozen, mixed_examples, encoder: str, micro_batch: int):
    """Padding to a multiple of 16 tokens, host-counted shared tokens and row weights change nothing."""
    from spulctl.train import forward_backward

    model, tok = frozen
    obj, graphed, prompt = _objective_pair(model, tok, mixed_examples, encoder)
    batch = [5, 0, 3, 6, 1, 2, 4]
    key, inputs = graphed.host_inputs(batch)
    natural = max(len(obj.examples[i].input_ids) for i in batch)
    assert key[1] % 16 == 0 and key[1] > natural  # padded
    assert key[3] >= 3  # "### Text:" is shared by every row
    assert int(inputs["attention_mask"][:, natural:].sum()) == 0
    want = forward_backward(obj, batch, micro_batch)
    g_want = _grads(prompt)
    obj.graphed = graphed  # the objective now routes through the static step
    got = forward_backward(obj, batch, micro_batch)
    _assert_same(got, _grads(prompt), want, g_want)


def test_static_step_without_kl_term(frozen, mixed_examples):
    from spulctl.train import forward_backward

    model, tok = frozen
    obj, graphed, prompt = _objective_pair(model, tok, mixed_examples, "none", beta=0.0)
    want = forward_backward(obj, [0, 4, 5, 1])
    g_want = _grads(prompt)
    obj.graphed = graphed
    got = forward_backward(obj, [0, 4, 5, 1])
    assert float(got["l_kl"]) == 0.0
    _assert_same(got, _grads(prompt), want, g_want)


def test_graphs_apply_only_where_they_can():
    from spulctl.cuda_graphs import graphs_apply
    from spulctl.step import StepOptions

    assert graphs_apply(StepOptions(), "cuda:0", True)
    assert not graphs_apply(StepOptions(), "cpu", True)
    assert not graphs_apply(StepOptions(cuda_graphs=False), "cuda", True)
    assert not graphs_apply(StepOptions(shared_prefix=False), "cuda", True)
    assert not graphs_apply(StepOptions(answer_only=False), "cuda", True)
    assert not graphs_apply(StepOptions(), "cuda", False)  # KL term without a cached reference


@cuda
@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_replayed_graphs_equal_the_eager_step(tiny_model_dir, mixed_examples, kernels: str):
    """Graphs for two shapes, replayed in changing order across optimiser steps, give the eager step's numbers."""
    import os

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spulctl.train import forward_backward

    if kernels == "triton" and os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("compiled Triton kernels: run with TRITON_INTERPRET=0")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval().cuda()
    for p in model.parameters():
        p.requires_grad_(False)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    obj, graphed, prompt = _objective_pair(model, tok, mixed_examples, "mlp")
    graphed.kernels = kernels
    eager = type(graphed)(model, prompt, graphed.head, graphed.examples, 3, graphed.ref_hidden, graphed.weights,
                          graphed.opts, tok.pad_token_id, kernels, capture=False)
    captured = type(graphed)(model, prompt, graphed.head, graphed.examples, 3, graphed.ref_hidden,
                             graphed.weights, graphed.opts, tok.pad_token_id, kernels)
    opt = torch.optim.AdamW(prompt.parameters(), lr=1e-2)
    batches = [[0, 3, 4, 5], [1, 2, 6], [5, 4, 3, 0], [6, 2, 1], [0, 3, 4, 5]]
    for step, batch in enumerate(batches):
        obj.graphed = eager
        want = forward_backward(obj, batch)
        g_want = _grads(prompt)
        obj.graphed = captured
        got = forward_backward(obj, batch)
        g_got = [p.grad.clone() for p in prompt.parameters()]
        _assert_same(got, g_got, want, g_want, rel=1e-4)
        opt.step()  # in place: the next replay must read the updated prompt
        opt.zero_grad(set_to_none=True)
        assert captured.captured == min(step + 1, 2)


def test_no_cuda_graphs_flag_reaches_the_step_options(tmp_path):
    """`unlearn --no-cuda-graphs` -> UnlearnConfig.cuda_graphs -> StepOptions.cuda_graphs (the switch SPUL reads)."""
    from unittest import mock

    from typer.testing import CliRunner

    from spulctl.cli import app
    from spulctl.methods.base import step_options
    from spulctl.unlearn import UnlearnConfig

    seen = {}

    def fake_run(cfg, **_kw):
        seen["cfg"] = cfg
        raise SystemExit(0)

    forget = tmp_path / "f.jsonl"
    forget.write_text('{"text": "a", "label": "positive"}\n')
    for flag, want in (([], True), (["--no-cuda-graphs"], False)):
        with mock.patch("spulctl.unlearn.unlearn", fake_run):
            CliRunner().invoke(app, ["unlearn", "--model", "m", "--forget", str(forget), "-o",
                                     str(tmp_path / "out"), *flag])
        assert seen["cfg"].cuda_graphs is want
        assert step_options(seen["cfg"]).cuda_graphs is want
    assert step_options(UnlearnConfig(model="m", out=tmp_path / "o", forget=forget)).cuda_graphs is True


def test_failed_capture_falls_back_to_the_eager_step(frozen, mixed_examples, monkeypatch):
    """A capture error becomes one note; that batch and every later one run the same step eagerly."""
    from spulctl.cuda_graphs import GraphedPromptLoss
    from spulctl.train import forward_backward

    model, tok = frozen
    obj, graphed, prompt = _objective_pair(model, tok, mixed_examples, "none")
    want = forward_backward(obj, [0, 4, 5, 1])
    g_want = _grads(prompt)

    def refuse(self, entry, shared):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore detail")

    monkeypatch.setattr(GraphedPromptLoss, "_capture", refuse)
    notes: list[str] = []
    graphed.capture, graphed.note = True, notes.append
    obj.graphed = graphed
    got = forward_backward(obj, [0, 4, 5, 1])
    _assert_same(got, _grads(prompt), want, g_want)
    forward_backward(obj, [2, 6])  # a new shape: no second capture attempt
    assert graphed.capture is False and graphed.captured == 0
    assert notes == ["CUDA-graph capture failed (CUDA error: operation not permitted when stream is capturing); "
                     "running the step eagerly (--no-cuda-graphs skips the attempt)"]
