"""Grouped-query attention (``spulctl.attention``) and the shared-token prefix of the fast step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from spulctl.attention import NAME, grouped_attention, grouped_attention_mode
from spulctl.step import Batch, StepOptions, collate, prompted_hidden, shared_token_count


class _Module(torch.nn.Module):
    training = False


def _sdpa(q, k, v, mask, g):
    """SDPA on repeated key/value heads, the ``transformers`` SDPA path."""
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None).transpose(1, 2)


@pytest.mark.parametrize("with_mask", [True, False])
@pytest.mark.parametrize(("h", "kv"), [(4, 2), (9, 3), (4, 4)])
def test_grouped_attention_equals_sdpa_forward_and_backward(with_mask: bool, h: int, kv: int):
    torch.manual_seed(0)
    b, t, prefix, hd = 3, 7, 5, 16
    s = t + prefix if with_mask else t  # SDPA's is_causal is top-left aligned: compare no-mask without a prefix
    q = torch.randn(b, h, t, hd, dtype=torch.float64, requires_grad=True)
    k = torch.randn(b, kv, s, hd, dtype=torch.float64, requires_grad=True)
    v = torch.randn(b, kv, s, hd, dtype=torch.float64, requires_grad=True)
    mask = None
    if with_mask:
        mask = torch.ones(b, 1, t, s, dtype=torch.bool).tril(s - t)
        mask[0, :, :, -2:] = False  # right padding of row 0
    out, weights = grouped_attention(_Module(), q, k, v, mask)
    ref = _sdpa(q, k, v, mask, h // kv)
    assert weights is None and out.shape == (b, t, h, hd)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    for a, w in zip(got, want, strict=True):
        torch.testing.assert_close(a, w, rtol=1e-10, atol=1e-10)


def test_grouped_attention_never_returns_nan_for_a_fully_masked_row():
    q, k, v = torch.randn(1, 2, 3, 8), torch.randn(1, 1, 3, 8), torch.randn(1, 1, 3, 8)
    mask = torch.zeros(1, 1, 3, 3, dtype=torch.bool)
    out, _ = grouped_attention(_Module(), q, k, v, mask)
    assert torch.isfinite(out).all()


def test_unsupported_calls_go_to_sdpa(monkeypatch):
    import transformers.integrations.sdpa_attention as sdpa

    calls = []
    monkeypatch.setattr(sdpa, "sdpa_attention_forward", lambda *a, **kw: calls.append(kw) or ("sdpa", None))
    q, k, v = torch.randn(1, 2, 3, 8), torch.randn(1, 1, 3, 8), torch.randn(1, 1, 3, 8)
    assert grouped_attention(_Module(), q, k, v, None, softcap=30.0)[0] == "sdpa"
    assert grouped_attention(_Module(), q, k, v, None, sliding_window=2)[0] == "sdpa"
    assert len(calls) == 2


def test_mode_switches_cpu_sdpa_models_and_restores(frozen):
    model, _ = frozen
    assert model.config._attn_implementation == "sdpa"
    with grouped_attention_mode(model) as switched:
        assert switched and model.config._attn_implementation == NAME
    assert model.config._attn_implementation == "sdpa"
    model.config._attn_implementation = "eager"
    try:
        with grouped_attention_mode(model) as switched:
            assert not switched and model.config._attn_implementation == "eager"
    finally:
        model.config._attn_implementation = "sdpa"


def _batch(rows: list[list[int]], answer: list[int]) -> Batch:
    from spulctl.data.task import Encoded

    return collate([Encoded(r, a, [5], 0) for r, a in zip(rows, answer, strict=True)], pad_id=0)


def test_shared_token_count():
    assert shared_token_count(_batch([[7, 8, 9, 10], [7, 8, 3], [7, 8, 9]], [3, 2, 2])) == 2
    assert shared_token_count(_batch([[7, 8, 9, 10], [7, 8, 9, 11]], [3, 3])) == 3
    assert shared_token_count(_batch([[7, 8, 9, 10], [7, 8, 9, 10]], [1, 3])) == 1  # stops at an answer position
    assert shared_token_count(_batch([[1, 8], [7, 8]], [1, 1])) == 0
    assert shared_token_count(_batch([[7, 8, 9]], [2])) == 0  # one row: nothing to share


@pytest.mark.parametrize("with_prompt", [True, False])
def test_shared_tokens_give_the_unshared_hidden_rows(frozen, with_prompt: bool):
    from spulctl.data.demo import demo_records
    from spulctl.data.task import TaskSpec, encode, label_vocab

    model, tok = frozen
    spec = TaskSpec()
    batch = collate(encode(demo_records(5), spec, tok, label_vocab(spec, tok)), tok.pad_token_id)
    assert shared_token_count(batch) >= 2  # the template's leading "### Text:" tokens
    torch.manual_seed(0)
    phi = torch.randn(4, model.config.hidden_size) if with_prompt else None
    with torch.no_grad():
        fast = prompted_hidden(model, batch, phi, StepOptions())
        plain = prompted_hidden(model, batch, phi, StepOptions(shared_prefix=False, grouped_attention=False))
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)


def test_no_shared_tokens_while_training(frozen, monkeypatch):
    """With dropout active, one prefix pass would give every row the same mask: the rows run in full."""
    import spulctl.step as step
    from spulctl.data.demo import demo_records
    from spulctl.data.task import TaskSpec, encode, label_vocab

    model, tok = frozen
    spec = TaskSpec()
    batch = collate(encode(demo_records(4), spec, tok, label_vocab(spec, tok)), tok.pad_token_id)
    calls = []
    real = step.prompt_prefix_cache
    monkeypatch.setattr(step, "prompt_prefix_cache", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        prompted_hidden(model, batch, None)
        assert calls == [1]  # eval mode: the shared tokens are a prefix
        model.train()
        try:
            prompted_hidden(model, batch, None)
        finally:
            model.eval()
    assert calls == [1]


def test_the_cpu_step_attends_through_grouped_attention(frozen, monkeypatch):
    """Every attention call of a prompted CPU forward (prefix pass and batch pass) goes through our function."""
    from transformers import AttentionInterface

    from spulctl.attention import register
    from spulctl.data.demo import demo_records
    from spulctl.data.task import TaskSpec, encode, label_vocab

    model, tok = frozen
    register()
    calls = []
    inner = AttentionInterface._global_mapping[NAME]
    monkeypatch.setitem(AttentionInterface._global_mapping, NAME, lambda *a, **kw: calls.append(1) or inner(*a, **kw))
    spec = TaskSpec()
    batch = collate(encode(demo_records(3), spec, tok, label_vocab(spec, tok)), tok.pad_token_id)
    with torch.no_grad():
        prompted_hidden(model, batch, torch.randn(4, model.config.hidden_size))
    assert len(calls) == 2 * model.config.num_hidden_layers
    calls.clear()
    with torch.no_grad():
        prompted_hidden(model, batch, torch.randn(4, model.config.hidden_size), StepOptions(grouped_attention=False))
    assert calls == []


def test_grouped_attention_takes_an_additive_float_mask():
    torch.manual_seed(1)
    q = torch.randn(2, 4, 5, 8, dtype=torch.float64)
    k, v = torch.randn(2, 2, 7, 8, dtype=torch.float64), torch.randn(2, 2, 7, 8, dtype=torch.float64)
    allowed = torch.ones(2, 1, 5, 7, dtype=torch.bool).tril(2)
    additive = torch.zeros(allowed.shape, dtype=torch.float64).masked_fill(~allowed, torch.finfo(torch.float64).min)
    a, _ = grouped_attention(_Module(), q, k, v, allowed)
    b, _ = grouped_attention(_Module(), q, k, v, additive)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
