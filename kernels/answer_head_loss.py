"""Fused answer-head loss: lm-head matmul + log-softmax + CE + KL, tiled over the vocabulary.

Inputs are the hidden rows at the answer positions only (never the (b, t, V) logits). For every row m:

* ``CE_m = lse(z_m) − z_m[target_m]`` with ``z_m = W·h_m`` (skipped when ``target_m < 0``),
* ``KL_m`` between the reference ``r = softmax(W·h_ref[ref_m])`` (the cached unprompted state) and
  ``q = softmax(z_m)``: ``forward`` = KL(r‖q), ``reverse`` = KL(q‖r) (skipped when ``ref_m < 0``),
* ``loss = Σ_m w_ce[m]·CE_m + w_kl[m]·KL_m`` — α, β, the ±1 of gradient ascent and the per-term normalisers are
  folded into the row weights by the caller, so nothing syncs with the host.

The kernel makes two passes over W: pass 1 keeps online log-sum-exps (fp32) of student and reference and the KL
accumulators; pass 2 recomputes the logits tile by tile and forms ∂loss/∂h directly (no ∂W: W is frozen), so the
backward of the autograd.Function is a scale. The student and reference logits come from the same loaded W tile.

Grid: one program per block of 64 rows, logits of the block as ``tl.dot`` (tensor cores; fp32 inputs use IEEE
precision, not TF32), so W is read M/64 times per pass. For few rows (M < 128) on a GPU the vocabulary is
also split across programs (row block, split), running the same two passes over one split each: a stats kernel
writes each split's online-softmax state, the host combines the (M, S) partials with tensor ops (log-sum-exp
merge, no atomics, no host sync), a gradient kernel writes each split's share of ∂loss/∂h into (M, S, d) and a
sum over S finishes it — deterministic for a given S.

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


PROGRAMS_PER_SM = 2
SPLIT_PARTIALS_BYTES = 512 * 2**20  # cap on the (M, S, d) fp32 gradient partials


def _kernel():
    from spulctl.kernels import answer_head_loss_triton

    return answer_head_loss_triton


_KERNEL = None


def _blocks() -> tuple[int, int, int]:
    """(BLOCK_V, BLOCK_D, BLOCK_M): GPU-sized tiles, or large ones under the CPU interpreter (where every tile step
    costs Python; the interpreter caps a block at 2^20 elements)."""
    import os

    return (2048, 512, 64) if os.environ.get("TRITON_INTERPRET") == "1" else (128, 64, 64)


def auto_splits(m: int, v: int, block_v: int, device, block_m: int = 64, d: int = 0) -> int:
    """Vocabulary splits S so that row blocks × S fill the GPU (~2 programs per SM); 1 off CUDA.

    With one program per block of ``block_m`` rows, M rows give only ⌈M/64⌉ programs, each looping over the whole
    vocabulary: on an H100 (132 SMs) that left most of the chip idle up to M ≈ 17k rows (measured: the SmolLM2
    head took the same 11 ms from M = 128 to 4096). S is capped by the number of vocabulary tiles and by keeping
    the (M, S, d) fp32 gradient partials under ``SPLIT_PARTIALS_BYTES``.
    """
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    row_blocks = -(-m // block_m)
    want = -(-PROGRAMS_PER_SM * sms // row_blocks)
    by_memory = SPLIT_PARTIALS_BYTES // max(1, m * d * 4) if d else want
    return max(1, min(want, -(-v // block_v), by_memory))


def answer_head_loss_triton(h, h_ref, w, targets, w_ce, ref_idx, w_kl, direction: str = "forward",
                            block_v: int | None = None, block_d: int | None = None, splits: int | None = None,
                            want_grad: bool = True):
    """Launch the kernel(s); returns ``(loss, ce, kl, dh)`` with dh = ∂loss/∂h in fp32, (M, d).

    Args:
        splits: vocabulary splits S (None: :func:`auto_splits`); S > 1 takes the split-V path.
        want_grad: False skips the gradient pass (one pass over W); ``dh`` is then None.
    """
    import math
    import os

    import torch

    default_v, default_d, block_m = _blocks()
    block_v, block_d = block_v or default_v, block_d or default_d
    global _KERNEL
    if _KERNEL is None:
        _KERNEL = _kernel()
    m, d = h.shape
    v = w.shape[0]
    h, h_ref, w = h.contiguous(), h_ref.contiguous(), w.contiguous()
    if h_ref.numel() == 0:
        h_ref = h.new_zeros(1, d)
    targets, ref_idx = targets.to(torch.int64).contiguous(), ref_idx.to(torch.int64).contiguous()
    w_ce, w_kl = w_ce.float().contiguous(), w_kl.float().contiguous()
    code = KL_CODES[direction]
    splits = auto_splits(m, v, block_v, h.device, block_m, d) if splits is None else splits
    per_split = math.ceil(v / max(1, splits))
    chunk = math.ceil(per_split / block_v) * block_v  # ceil(V / S) rounded up to whole tiles
    splits = math.ceil(v / chunk)  # every split holds at least one vocabulary entry
    meta = {"DIRECTION": code, "PRECISION": "ieee" if w.dtype == torch.float32 else "tf32",  # fp32: no TF32
            "UPCAST": os.environ.get("TRITON_INTERPRET") == "1", "BLOCK_M": block_m, "BLOCK_V": block_v,
            "BLOCK_D": block_d}
    if splits == 1:
        dh = torch.empty(m if want_grad else 1, d, device=h.device, dtype=torch.float32)
        ce = torch.empty(m, device=h.device, dtype=torch.float32)
        kl = torch.empty(m, device=h.device, dtype=torch.float32)
        _KERNEL.answer_head_loss_kernel[(math.ceil(m / block_m),)](
            h, h_ref, w, targets, w_ce, ref_idx, w_kl, dh, ce, kl, m, v, d,
            h.stride(0), h_ref.stride(0), w.stride(0), dh.stride(0), WANT_GRAD=want_grad, **meta)
        dh = dh if want_grad else None
    else:
        ce, kl, dh = _split_v(h, h_ref, w, targets, w_ce, ref_idx, w_kl, splits, chunk, meta, want_grad)
    loss = (w_ce * ce).sum() + (w_kl * kl).sum()
    return loss, ce, kl, dh


def _split_v(h, h_ref, w, targets, w_ce, ref_idx, w_kl, splits, chunk, meta, want_grad=True):
    """Split-V path: stats kernel → merge of the (M, S) partials → gradient kernel → sum of (M, S, d) over S."""
    import math

    import torch

    m, d = h.shape
    v = w.shape[0]
    grid = (math.ceil(m / meta["BLOCK_M"]), splits)
    parts = [torch.empty(m, splits, device=h.device, dtype=torch.float32) for _ in range(6)]
    strides = (h.stride(0), h_ref.stride(0), w.stride(0))
    _KERNEL.answer_head_stats_kernel[grid](h, h_ref, w, targets, ref_idx, *parts, m, v, d, splits, chunk, *strides,
                                           **meta)
    mq_s, sq_s, mr_s, sr_s, acc_s, zt_s = parts
    mq, mr = mq_s.amax(1, keepdim=True), mr_s.amax(1, keepdim=True)
    sq, sr = (sq_s * (mq_s - mq).exp()).sum(1), (sr_s * (mr_s - mr).exp()).sum(1)
    lse_q, lse_r = mq.squeeze(1) + sq.log(), mr.squeeze(1) + sr.log()
    if meta["DIRECTION"] == 0:  # forward KL(r‖q): accumulators are relative to the reference maximum
        kl = (acc_s * (mr_s - mr).exp()).sum(1) / sr - lse_r + lse_q
    else:
        kl = (acc_s * (mq_s - mq).exp()).sum(1) / sq - lse_q + lse_r
    has_t, has_r = targets >= 0, ref_idx >= 0
    ce = torch.where(has_t, lse_q - zt_s.sum(1), torch.zeros_like(lse_q))
    kl = torch.where(has_r, kl, torch.zeros_like(kl))
    if not want_grad:
        return ce, kl, None
    wc, wk = torch.where(has_t, w_ce, 0.0).contiguous(), torch.where(has_r, w_kl, 0.0).contiguous()
    dh_parts = torch.empty(m, splits, d, device=h.device, dtype=torch.float32)
    _KERNEL.answer_head_grad_kernel[grid](h, h_ref, w, targets, ref_idx, wc, wk, lse_q.contiguous(),
                                          lse_r.contiguous(), kl.contiguous(), dh_parts, m, v, d, splits, chunk,
                                          *strides, **meta)
    return ce, kl, dh_parts.sum(1)


def _function():
    import torch

    class AnswerHeadLoss(torch.autograd.Function):
        """Autograd wrapper: the gradient w.r.t. h was formed in the forward pass; backward only scales it."""

        @staticmethod
        def forward(ctx, h, h_ref, w, targets, w_ce, ref_idx, w_kl, direction, splits, block_v):
            loss, ce, kl, dh = answer_head_loss_triton(h, h_ref, w, targets, w_ce, ref_idx, w_kl, direction,
                                                       block_v=block_v, splits=splits)
            ctx.save_for_backward(dh)
            ctx.h_dtype = h.dtype
            ctx.mark_non_differentiable(ce, kl)
            return loss, ce, kl

        @staticmethod
        def backward(ctx, grad_loss, _grad_ce, _grad_kl):
            (dh,) = ctx.saved_tensors
            return (dh * grad_loss).to(ctx.h_dtype), None, None, None, None, None, None, None, None, None

    return AnswerHeadLoss


_FUNCTION = None


def answer_head_ce(h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Forward-only per-row cross-entropy ``lse(W·h_m) − (W·h_m)[target_m]`` without materialising logits.

    Args:
        h: (M, d) hidden rows. w: (V, d) output head. targets: (M,) token ids (-1: row skipped, CE 0).

    Returns:
        (M,) fp32 CE (= −log-probability of the target over the whole vocabulary).
    """
    import torch

    if h.shape[0] == 0:
        return h.new_zeros(0, dtype=torch.float32)
    zeros = torch.zeros(h.shape[0], device=h.device)
    no_ref = torch.full((h.shape[0],), -1, device=h.device, dtype=torch.int64)
    _, ce, _, _ = answer_head_loss_triton(h, h[:1], w, targets, zeros, no_ref, zeros, want_grad=False)
    return ce


def answer_head_loss(h, h_ref, w, targets, w_ce, ref_idx, w_kl, direction: str = "forward", *,
                     splits: int | None = None, block_v: int | None = None):
    """Differentiable fused loss (Triton); same signature and results as :func:`answer_head_loss_reference`.

    ``splits``/``block_v`` override the launch configuration (tests, benchmarks); results do not depend on them
    beyond fp32 rounding.
    """
    global _FUNCTION
    if _FUNCTION is None:
        _FUNCTION = _function()
    return _FUNCTION.apply(h, h_ref, w, targets, w_ce, ref_idx, w_kl, direction, splits, block_v)
