"""Grouped-query attention without repeated keys/values, for the CPU step.

``transformers``' SDPA path copies every key/value head ``h / kv_heads`` times (``repeat_kv``) before calling
``scaled_dot_product_attention``, and keeps those copies for the backward pass. SPUL's sequences are short
(≈ 45 tokens plus a 30-token prefix), where the fused CPU attention kernel is slower than two batched matmuls.
:func:`grouped_attention` instead folds the query heads of a group into the query length — queries
(b, kv, g·t, hd) against keys (b, kv, s, hd) — so each key/value head is read in place, and the softmax
probabilities (b, kv, g·t, s) are what the backward pass keeps. Same function as SDPA up to fp32 rounding
(tested against it on the tiny model and SmolLM2).

It is registered with ``transformers``' ``AttentionInterface`` under :data:`NAME`, with the SDPA boolean mask,
and switched on for the duration of a forward by :func:`grouped_attention_mode`. Calls it cannot reproduce
exactly (dropout while training, soft-capping, sliding windows, attention sinks) are passed to SDPA unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

NAME = "spulctl_grouped"
_REGISTERED = False


def grouped_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Attention with ``h / kv`` query heads sharing each key/value head, no copies.

    Args:
        query: (b, h, t, hd).
        key, value: (b, kv, s, hd), ``s ≥ t`` (a prefix of ``s - t`` cached positions comes first).
        attention_mask: (b, 1, t, s) bool, True = attend (or additive float, 0 = attend); None = causal, the
            queries being the last t positions.
        scaling: score scale (default ``hd ** -0.5``).

    Returns:
        ``(out, None)`` with out (b, t, h, hd), the layout ``transformers``' attention modules expect.
    """
    import torch

    unsupported = (dropout and module.training) or any(kwargs.get(k) is not None
                                                       for k in ("softcap", "sliding_window", "s_aux"))
    if unsupported or query.shape[1] % key.shape[1]:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    b, h, t, hd = query.shape
    kv, s = key.shape[1], key.shape[2]
    g = h // kv
    scale = scaling if scaling is not None else hd ** -0.5
    scores = torch.matmul(query.reshape(b, kv, g * t, hd), key.transpose(-1, -2)) * scale  # (b, kv, g·t, s)
    if attention_mask is None:
        attention_mask = torch.ones(t, s, dtype=torch.bool, device=query.device).tril(s - t)  # causal, offset
    mask = attention_mask.unsqueeze(2) if attention_mask.dim() == 4 else attention_mask  # (b, 1, 1, t, s)
    scores = scores.view(b, kv, g, t, s)
    if mask.dtype == torch.bool:
        floor = torch.finfo(scores.dtype).min  # not -inf: a fully masked row gives a uniform row, never NaN
        scores = scores.masked_fill(~mask, floor)
    else:  # an additive float mask (0 = attend, a large negative = not), as eager attention takes
        scores = scores + mask
    probs = scores.softmax(-1, dtype=torch.promote_types(scores.dtype, torch.float32))  # at least fp32, as eager
    probs = probs.to(value.dtype).view(b, kv, g * t, s)
    out = torch.matmul(probs, value).view(b, h, t, hd)  # (b, h, t, hd)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Register :func:`grouped_attention` (and SDPA's boolean mask) with ``transformers``; returns its name."""
    global _REGISTERED
    if not _REGISTERED:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(NAME, grouped_attention)
        AttentionMaskInterface.register(NAME, sdpa_mask)
        _REGISTERED = True
    return NAME


@contextmanager
def grouped_attention_mode(model: nn.Module) -> Iterator[bool]:
    """Within the block, ``model`` attends through :func:`grouped_attention`; yields whether it was switched.

    Only models on the CPU that use SDPA are switched (on a GPU SDPA's fused kernels are the faster choice).
    Autograd nodes recorded inside the block keep working after it ends.
    """
    config = getattr(model, "config", None)
    param = next(model.parameters(), None)
    switch = (config is not None and getattr(config, "_attn_implementation", None) == "sdpa"
              and param is not None and param.device.type == "cpu")
    if not switch:
        yield False
        return
    config._attn_implementation = register()
    try:
        yield True
    finally:
        config._attn_implementation = "sdpa"
