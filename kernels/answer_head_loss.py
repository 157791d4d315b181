"""Fused answer-head loss: lm-head matmul + log-softmax + CE + KL, tiled over the vocabulary.

Inputs are the hidden rows at the answer positions only (never the (b, t, V) logits). For every row m:

* ``CE_m = lse(z_m) − z_m[target_m]`` with ``z_m = W·h_m`` (skipped when ``target_m < 0``),
* ``KL_m`` between the reference ``r = softmax(W·h_ref[ref_m])`` (the cached unprompted state) and
  ``q = softmax(z_m)``: ``forward`` = KL(r‖q), ``reverse`` = KL(q‖r) (skipped when ``ref_m < 0``),
* ``loss = Σ_m w_ce[m]·CE_m + w_kl[m]·KL_m`` — α, β, the ±1 of gradient ascent and the per-term normalisers are
  folded into the row weights by the caller, so nothing syncs with the host.

The kernel makes two passes over W per row: pass 1 keeps online log-sum-exps (fp32) of student and reference and
the KL accumulators; pass 2 recomputes the logits tile by tile and forms ∂loss/∂h directly (no ∂W: W is frozen),
so the backward of the autograd.Function is a scale. One program per row; the student and reference logits of a
row come from the same loaded W tile.

Anatomy: ``@triton.jit`` kernel + host launcher + ``autograd.Function`` + the torch reference beside them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

KL_CODES = {"forward": 0, "reverse": 1}


def answer_head_loss_reference(h: torch.Tensor, h_ref: torch.Tensor, w: torch.Tensor, targets: torch.Tensor,
                               w_ce: torch.Tensor, ref_idx: torch.Tensor, w_kl: torch.Tensor,
                               direction: str = "forward") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pure-torch reference (materialises (M, V) logits in fp32).

    Args:
        h: (M, d) student hidden rows. h_ref: (M_r, d) cached reference rows. w: (V, d) output head.
        targets: (M,) target ids, -1 = no CE. w_ce: (M,) CE weights. ref_idx: (M,) row of h_ref, -1 = no KL.
        w_kl: (M,) KL weights. direction: ``forward`` KL(r‖q) or ``reverse`` KL(q‖r).

    Returns:
        ``(loss, ce, kl)``: scalar, and (M,) per-row CE and KL (0 where skipped).
    """
    import torch

    ct = torch.promote_types(h.dtype, torch.float32)  # fp32 at least; fp64 inputs stay fp64 (test oracle)
    z = h.to(ct) @ w.to(ct).t()  # (M, V)
    log_q = z.log_softmax(-1)
    has_t = targets >= 0
    ce = torch.where(has_t, -log_q.gather(1, targets.clamp(min=0).unsqueeze(1)).squeeze(1), torch.zeros_like(w_ce))
    has_r = ref_idx >= 0
    log_r = (h_ref.to(ct) @ w.to(ct).t()).log_softmax(-1)[ref_idx.clamp(min=0)]  # (M, V)
    if direction == "forward":
        kl = (log_r.exp() * (log_r - log_q)).sum(-1)
    else:
        kl = (log_q.exp() * (log_q - log_r)).sum(-1)
    kl = torch.where(has_r, kl, torch.zeros_like(kl))
    loss = (w_ce.to(ct) * ce).sum() + (w_kl.to(ct) * kl).sum()
    return loss, ce, kl


def _kernel():
    from spulctl.kernels.answer_head_loss_triton import answer_head_loss_kernel

    return answer_head_loss_kernel


_KERNEL = None


def _blocks() -> tuple[int, int]:
    """Tile sizes: GPU-sized tiles, or large ones under the CPU interpreter (where each tile step costs Python)."""
    import os

    return (2048, 512) if os.environ.get("TRITON_INTERPRET") == "1" else (256, 64)


def answer_head_loss_triton(h, h_ref, w, targets, w_ce, ref_idx, w_kl, direction: str = "forward",
                            block_v: int | None = None, block_d: int | None = None):
    """Launch the kernel; returns ``(loss, ce, kl, dh)`` with dh = ∂loss/∂h in fp32, (M, d)."""
    import torch

    default_v, default_d = _blocks()
    block_v, block_d = block_v or default_v, block_d or default_d
    global _KERNEL
    if _KERNEL is None:
        _KERNEL = _kernel()
    m, d = h.shape
    v = w.shape[0]
    h, h_ref, w = h.contiguous(), h_ref.contiguous(), w.contiguous()
    if h_ref.numel() == 0:
        h_ref = h.new_zeros(1, d)
    dh = torch.empty(m, d, device=h.device, dtype=torch.float32)
    ce = torch.empty(m, device=h.device, dtype=torch.float32)
    kl = torch.empty(m, device=h.device, dtype=torch.float32)
    _KERNEL[(m,)](h, h_ref, w, targets.to(torch.int64).contiguous(), w_ce.float().contiguous(),
                  ref_idx.to(torch.int64).contiguous(), w_kl.float().contiguous(), dh, ce, kl, v, d,
                  h.stride(0), h_ref.stride(0), w.stride(0), dh.stride(0),
                  DIRECTION=KL_CODES[direction], BLOCK_V=block_v, BLOCK_D=block_d)
    loss = (w_ce.float() * ce).sum() + (w_kl.float() * kl).sum()
    return loss, ce, kl, dh


def _function():
    import torch

    class AnswerHeadLoss(torch.autograd.Function):
        """Autograd wrapper: the gradient w.r.t. h was formed in the forward pass; backward only scales it."""

        @staticmethod
        def forward(ctx, h, h_ref, w, targets, w_ce, ref_idx, w_kl, direction):
            loss, ce, kl, dh = answer_head_loss_triton(h, h_ref, w, targets, w_ce, ref_idx, w_kl, direction)
            ctx.save_for_backward(dh)
            ctx.h_dtype = h.dtype
            ctx.mark_non_differentiable(ce, kl)
            return loss, ce, kl

        @staticmethod
        def backward(ctx, grad_loss, _grad_ce, _grad_kl):
            (dh,) = ctx.saved_tensors
            return (dh * grad_loss).to(ctx.h_dtype), None, None, None, None, None, None, None

    return AnswerHeadLoss


_FUNCTION = None


def answer_head_loss(h, h_ref, w, targets, w_ce, ref_idx, w_kl, direction: str = "forward"):
    """Differentiable fused loss (Triton); same signature and results as :func:`answer_head_loss_reference`."""
    global _FUNCTION
    if _FUNCTION is None:
        _FUNCTION = _function()
    return _FUNCTION.apply(h, h_ref, w, targets, w_ce, ref_idx, w_kl, direction)
