"""Lean SwiGLU: the gated MLP of Llama-family models keeping one tensor fewer for the backward pass.

In ``down_proj(silu(gate_proj(x)) * up_proj(x))`` autograd keeps three (b, t, I) tensors per layer: ``gate`` (for
SiLU's backward), ``silu(gate)`` and ``up`` (for the product's). With frozen weights the projections keep none (a
frozen ``Linear`` needs only its weight to pass gradients to its input). :class:`_SwiGLU` keeps ``gate`` and
``up`` and recomputes ``silu(gate)`` in the backward pass — one elementwise op — so SPUL's step, which
back-propagates through the whole frozen body to φ, holds a third less MLP activation memory (the MLP holds
most of it). Forward and backward run the same ops in the same order as autograd would: results are bit-identical.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn


def _swiglu_function() -> Any:
    import torch
    import torch.nn.functional as F

    class _SwiGLU(torch.autograd.Function):
        """``silu(gate) * up`` saving (gate, up) only; (…, I) each."""

        @staticmethod
        def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
            ctx.save_for_backward(gate, up)
            return F.silu(gate) * up

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
            gate, up = ctx.saved_tensors
            grad_gate = torch.ops.aten.silu_backward(grad * up, gate) if ctx.needs_input_grad[0] else None
            grad_up = grad * F.silu(gate) if ctx.needs_input_grad[1] else None
            return grad_gate, grad_up

    return _SwiGLU


_FN: Any = None


def _lean_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(_FN.apply(self.gate_proj(x), self.up_proj(x)))


def _is_swiglu(module: nn.Module) -> bool:
    """A Llama-style gated MLP whose activation is plain SiLU (the only one this recomputes exactly)."""
    import torch.nn.functional as F

    if not all(hasattr(module, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")):
        return False
    act = module.act_fn
    return type(act).__name__ in ("SiLU", "SiLUActivation") or getattr(act, "forward", None) is F.silu


@contextmanager
def lean_swiglu(model: nn.Module) -> Iterator[int]:
    """Within the block, every SiLU-gated MLP of ``model`` runs the lean version; yields how many were patched.

    Autograd nodes recorded inside the block keep working after it ends (the backward pass may run later).
    """
    global _FN
    if _FN is None:
        _FN = _swiglu_function()
    patched = [m for m in model.modules() if _is_swiglu(m) and "forward" not in vars(m)]
    for m in patched:
        m.forward = types.MethodType(_lean_forward, m)
    try:
        yield len(patched)
    finally:
        for m in patched:
            del m.forward
