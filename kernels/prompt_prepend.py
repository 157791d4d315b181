"""Fused prompt-prepend: write φ and the gathered token embeddings into one (b, p + t, d) buffer.

Forward: one program per (row of the output, d-block) copies either φ[j] (j < p) or E[ids[b, j - p]] into the
buffer in the compute dtype. Backward: ∂φ[j] = Σ_b ∂buffer[b, j] for j < p, reduced in fp32 by one program per
(j, d-block) looping over the batch — deterministic, no atomics. The embedding table is frozen, so no ∂E.
With the shared-prefix step the batch never needs φ inside every row; there ``shared=True`` returns only the
gathered token embeddings and φ cast once, (1, p, d).

Anatomy: ``@triton.jit`` kernels + host launcher + ``autograd.Function`` + the torch reference beside them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def prompt_prepend_reference(phi: torch.Tensor, emb: torch.Tensor, ids: torch.Tensor,
                             dtype: torch.dtype) -> torch.Tensor:
    """Torch reference: (b, p + t, d) = [φ (broadcast over b); E[ids]] in ``dtype``."""
    import torch

    b = ids.shape[0]
    return torch.cat([phi.to(dtype).unsqueeze(0).expand(b, -1, -1), emb[ids].to(dtype)], dim=1)


def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def prepend_fwd(PHI, EMB, IDS, OUT, P, T, D, stride_e, BLOCK_D: tl.constexpr):
        row = tl.program_id(0)  # over b * (p + t)
        dblk = tl.program_id(1)
        b = row // (P + T)
        j = row % (P + T)
        dd = dblk * BLOCK_D + tl.arange(0, BLOCK_D)
        dmask = dd < D
        is_prompt = j < P
        # both sources are read at clamped (always valid) rows and the right one is selected: no scalar masks
        tok = tl.load(IDS + b * T + tl.minimum(tl.maximum(j - P, 0), T - 1))
        from_phi = tl.load(PHI + tl.minimum(j, P - 1) * D + dd, mask=dmask, other=0.0)
        from_emb = tl.load(EMB + tok * stride_e + dd, mask=dmask, other=0.0).to(tl.float32)
        val = tl.where(is_prompt, from_phi, from_emb)
        tl.store(OUT + row * D + dd, val.to(OUT.dtype.element_ty), mask=dmask)

    @triton.jit
    def prepend_bwd(GOUT, GPHI, B, P, T, D, BLOCK_D: tl.constexpr):
        j = tl.program_id(0)  # prompt row
        dblk = tl.program_id(1)
        dd = dblk * BLOCK_D + tl.arange(0, BLOCK_D)
        dmask = dd < D
        acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for b in range(0, B):
            acc += tl.load(GOUT + (b * (P + T) + j) * D + dd, mask=dmask, other=0.0).to(tl.float32)
        tl.store(GPHI + j * D + dd, acc, mask=dmask)

    return prepend_fwd, prepend_bwd


_KERNELS = None
BLOCK_D = 128


def _function():
    import torch
    import triton

    class PromptPrepend(torch.autograd.Function):
        """Autograd wrapper around the Triton forward/backward."""

        @staticmethod
        def forward(ctx, phi, emb, ids, dtype):
            fwd, _ = _KERNELS
            b, t = ids.shape
            p, d = phi.shape
            out = torch.empty(b, p + t, d, device=phi.device, dtype=dtype)
            fwd[(b * (p + t), triton.cdiv(d, BLOCK_D))](phi.float().contiguous(), emb.contiguous(),
                                                        ids.contiguous(), out, p, t, d, emb.stride(0),
                                                        BLOCK_D=BLOCK_D)
            ctx.shape = (b, p, t, d)
            return out

        @staticmethod
        def backward(ctx, grad_out):
            _, bwd = _KERNELS
            b, p, t, d = ctx.shape
            gphi = torch.empty(p, d, device=grad_out.device, dtype=torch.float32)
            bwd[(p, triton.cdiv(d, BLOCK_D))](grad_out.contiguous(), gphi, b, p, t, d, BLOCK_D=BLOCK_D)
            return gphi, None, None, None

    return PromptPrepend


_FUNCTION = None


def prompt_prepend(phi: torch.Tensor, emb: torch.Tensor, ids: torch.Tensor, dtype: torch.dtype,
                   shared: bool = False):
    """Fused prepend (Triton). ``shared=True``: return ``(φ cast to dtype (1, p, d), E[ids] (b, t, d))`` only."""
    global _KERNELS, _FUNCTION
    if shared:
        return phi.to(dtype).unsqueeze(0), emb[ids].to(dtype)
    if _KERNELS is None:
        _KERNELS, _FUNCTION = _kernels(), _function()
    return _FUNCTION.apply(phi, emb, ids, dtype)
