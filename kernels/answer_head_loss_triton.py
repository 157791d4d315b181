"""Triton kernels of the fused answer-head loss (imported only when the Triton path runs).

See :mod:`spulctl.kernels.answer_head_loss` for the contract, the launcher and the torch reference.
"""

import triton
import triton.language as tl


@triton.jit
def _block_logits(H, HREF, W, rows, rmask, ridx, vv, vmask, offs_d, D, stride_h, stride_r, stride_w,
                  PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr,
                  BLOCK_D: tl.constexpr):
    """Student and reference logits of a block of rows over one vocabulary tile, (BLOCK_M, BLOCK_V) fp32 each,
    as tensor-core dots sharing every loaded W tile (UPCAST: dot in fp32, for the CPU interpreter, whose bf16 dot
    is wrong)."""
    z = tl.zeros((BLOCK_M, BLOCK_V), dtype=tl.float32)
    y = tl.zeros((BLOCK_M, BLOCK_V), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + offs_d
        dmask = dd < D
        wt = tl.load(W + vv[None, :] * stride_w + dd[:, None], mask=dmask[:, None] & vmask[None, :],
                     other=0.0)  # (BLOCK_D, BLOCK_V)
        if UPCAST:
            wt = wt.to(tl.float32)
        h = tl.load(H + rows[:, None] * stride_h + dd[None, :], mask=rmask[:, None] & dmask[None, :],
                    other=0.0).to(wt.dtype)  # (BLOCK_M, BLOCK_D)
        r = tl.load(HREF + ridx[:, None] * stride_r + dd[None, :], mask=rmask[:, None] & dmask[None, :],
                    other=0.0).to(wt.dtype)
        z += tl.dot(h, wt, input_precision=PRECISION)
        y += tl.dot(r, wt, input_precision=PRECISION)
    return z, y


@triton.jit
def _lse_pass(H, HREF, W, rows, rmask, ridx, target, start, end, offs_v, offs_d, D, stride_h, stride_r, stride_w,
              DIRECTION: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    """Pass 1 over the vocabulary range [start, end): per row the online max and sum of exp of the student (z) and
    reference (y) logits, the KL accumulator and the target logit. Returns (mq, sq, mr, sr, acc, zt), each (BLOCK_M,);
    acc is Σ exp(y - mr)(y - z) (forward KL) or Σ exp(z - mq)(z - y) (reverse)."""
    mq = tl.full((BLOCK_M,), -float("inf"), dtype=tl.float32)
    mr = tl.full((BLOCK_M,), -float("inf"), dtype=tl.float32)
    sq = tl.zeros((BLOCK_M,), dtype=tl.float32)
    sr = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    zt = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for v0 in range(start, end, BLOCK_V):
        vv = v0 + offs_v
        vmask = vv < end
        z, y = _block_logits(H, HREF, W, rows, rmask, ridx, vv, vmask, offs_d, D, stride_h, stride_r, stride_w,
                             PRECISION, UPCAST, BLOCK_M, BLOCK_V, BLOCK_D)
        z = tl.where(vmask[None, :], z, -float("inf"))
        y = tl.where(vmask[None, :], y, -float("inf"))
        zt += tl.sum(tl.where(vv[None, :] == target[:, None], z, 0.0), axis=1)
        mq_new = tl.maximum(mq, tl.max(z, axis=1))
        mr_new = tl.maximum(mr, tl.max(y, axis=1))
        ez = tl.where(vmask[None, :], tl.exp(z - mq_new[:, None]), 0.0)
        ey = tl.where(vmask[None, :], tl.exp(y - mr_new[:, None]), 0.0)
        diff = tl.where(vmask[None, :], y - z, 0.0)
        if DIRECTION == 0:
            acc = acc * tl.exp(mr - mr_new) + tl.sum(ey * diff, axis=1)
        else:
            acc = acc * tl.exp(mq - mq_new) - tl.sum(ez * diff, axis=1)
        sq = sq * tl.exp(mq - mq_new) + tl.sum(ez, axis=1)
        sr = sr * tl.exp(mr - mr_new) + tl.sum(ey, axis=1)
        mq = mq_new
        mr = mr_new
    return mq, sq, mr, sr, acc, zt


@triton.jit
def _grad_pass(H, HREF, W, OUT, stride_out, rows, rmask, ridx, target, wc, wk, lse_q, lse_r, kl, start, end,
               offs_v, offs_d, D, stride_h, stride_r, stride_w, DIRECTION: tl.constexpr, PRECISION: tl.constexpr,
               UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    """Pass 2 over [start, end): g = dloss/dz per vocabulary entry, OUT[row] = Σ g @ W over the range (OUT rows at
    ``OUT + row_index * stride_out``, zeroed here; the calling program owns them: no atomics)."""
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + offs_d
        tl.store(OUT + rows[:, None] * stride_out + dd[None, :], tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32),
                 mask=rmask[:, None] & (dd < D)[None, :])
    for v0 in range(start, end, BLOCK_V):
        vv = v0 + offs_v
        vmask = vv < end
        z, y = _block_logits(H, HREF, W, rows, rmask, ridx, vv, vmask, offs_d, D, stride_h, stride_r, stride_w,
                             PRECISION, UPCAST, BLOCK_M, BLOCK_V, BLOCK_D)
        lq = z - lse_q[:, None]
        q = tl.where(vmask[None, :], tl.exp(lq), 0.0)
        r = tl.where(vmask[None, :], tl.exp(y - lse_r[:, None]), 0.0)
        g = wc[:, None] * (q - tl.where(vv[None, :] == target[:, None], 1.0, 0.0))
        if DIRECTION == 0:
            g += wk[:, None] * (q - r)
        else:
            g += wk[:, None] * q * (lq - (y - lse_r[:, None]) - kl[:, None])
        g = tl.where(vmask[None, :] & rmask[:, None], g, 0.0)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + offs_d
            dmask = dd < D
            wt = tl.load(W + vv[:, None] * stride_w + dd[None, :], mask=vmask[:, None] & dmask[None, :],
                         other=0.0)  # (BLOCK_V, BLOCK_D)
            if UPCAST:
                wt = wt.to(tl.float32)
            ptr = OUT + rows[:, None] * stride_out + dd[None, :]
            both = rmask[:, None] & dmask[None, :]
            prev = tl.load(ptr, mask=both, other=0.0)
            tl.store(ptr, prev + tl.dot(g.to(wt.dtype), wt, input_precision=PRECISION), mask=both)


@triton.jit
def answer_head_loss_kernel(
    H, HREF, W, T, WCE, RIDX, WKL,  # H (M, D), HREF (Mr, D), W (V, D), T/WCE/RIDX/WKL (M,)
    DH, CE, KL,  # outputs: DH (M, D) fp32, CE (M,), KL (M,)
    M, V, D, stride_h, stride_r, stride_w, stride_dh,
    DIRECTION: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr, WANT_GRAD: tl.constexpr,
):
    """One program per block of BLOCK_M rows over the whole vocabulary: W read M / BLOCK_M times per pass."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < M
    target = tl.load(T + rows, mask=rmask, other=-1)
    ridx = tl.load(RIDX + rows, mask=rmask, other=-1)
    has_r = ridx >= 0
    ridx = tl.maximum(ridx, 0)
    w_ce = tl.load(WCE + rows, mask=rmask, other=0.0)
    w_kl = tl.load(WKL + rows, mask=rmask, other=0.0)
    offs_v = tl.arange(0, BLOCK_V)
    offs_d = tl.arange(0, BLOCK_D)
    mq, sq, mr, sr, acc, zt = _lse_pass(H, HREF, W, rows, rmask, ridx, target, 0, V, offs_v, offs_d, D, stride_h,
                                        stride_r, stride_w, DIRECTION, PRECISION, UPCAST, BLOCK_M, BLOCK_V, BLOCK_D)
    lse_q = mq + tl.log(sq)
    lse_r = mr + tl.log(sr)
    ce = tl.where(target >= 0, lse_q - zt, 0.0)
    if DIRECTION == 0:
        kl = acc / sr - lse_r + lse_q
    else:
        kl = acc / sq - lse_q + lse_r
    kl = tl.where(has_r, kl, 0.0)
    tl.store(CE + rows, ce, mask=rmask)
    tl.store(KL + rows, kl, mask=rmask)
    if WANT_GRAD:  # forward-only callers (evaluation) skip the second pass over W
        _grad_pass(H, HREF, W, DH, stride_dh, rows, rmask, ridx, target, tl.where(target >= 0, w_ce, 0.0),
                   tl.where(has_r, w_kl, 0.0), lse_q, lse_r, kl, 0, V, offs_v, offs_d, D, stride_h, stride_r,
                   stride_w, DIRECTION, PRECISION, UPCAST, BLOCK_M, BLOCK_V, BLOCK_D)


# --- split-V path for few rows: programs (row block, vocabulary split), partials reduced deterministically by the
# --- host; the same two passes as above, each over one split's vocabulary range


@triton.jit
def answer_head_stats_kernel(
    H, HREF, W, T, RIDX,  # H (M, D), HREF (Mr, D), W (V, D), T/RIDX (M,)
    MQ, SQ, MR, SR, ACC, ZT,  # outputs (M, S) fp32: per-split online-softmax state of student/reference, KL acc
    M, V, D, S, CHUNK, stride_h, stride_r, stride_w,
    DIRECTION: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < M
    s = tl.program_id(1)
    target = tl.load(T + rows, mask=rmask, other=-1)
    ridx = tl.maximum(tl.load(RIDX + rows, mask=rmask, other=-1), 0)
    start = s * CHUNK
    mq, sq, mr, sr, acc, zt = _lse_pass(H, HREF, W, rows, rmask, ridx, target, start, tl.minimum(start + CHUNK, V),
                                        tl.arange(0, BLOCK_V), tl.arange(0, BLOCK_D), D, stride_h, stride_r,
                                        stride_w, DIRECTION, PRECISION, UPCAST, BLOCK_M, BLOCK_V, BLOCK_D)
    i = rows * S + s
    tl.store(MQ + i, mq, mask=rmask)
    tl.store(SQ + i, sq, mask=rmask)
    tl.store(MR + i, mr, mask=rmask)
    tl.store(SR + i, sr, mask=rmask)
    tl.store(ACC + i, acc, mask=rmask)
    tl.store(ZT + i, zt, mask=rmask)


@triton.jit
def answer_head_grad_kernel(
    H, HREF, W, T, RIDX, WC, WK, LSEQ, LSER, KLV,  # per row (M,): effective weights, log-sum-exps, KL
    DHP,  # output (M, S, D) fp32: each split's share of dloss/dh
    M, V, D, S, CHUNK, stride_h, stride_r, stride_w,
    DIRECTION: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < M
    s = tl.program_id(1)
    target = tl.load(T + rows, mask=rmask, other=-1)
    ridx = tl.maximum(tl.load(RIDX + rows, mask=rmask, other=-1), 0)
    wc = tl.load(WC + rows, mask=rmask, other=0.0)
    wk = tl.load(WK + rows, mask=rmask, other=0.0)
    lse_q = tl.load(LSEQ + rows, mask=rmask, other=0.0)
    lse_r = tl.load(LSER + rows, mask=rmask, other=0.0)
    kl = tl.load(KLV + rows, mask=rmask, other=0.0)
    start = s * CHUNK
    _grad_pass(H, HREF, W, DHP + s * D, S * D, rows, rmask, ridx, target, wc, wk, lse_q, lse_r, kl, start,
               tl.minimum(start + CHUNK, V), tl.arange(0, BLOCK_V), tl.arange(0, BLOCK_D), D, stride_h, stride_r,
               stride_w, DIRECTION, PRECISION, UPCAST, BLOCK_M, BLOCK_V, BLOCK_D)
