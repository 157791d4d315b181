"""The unlearning loss at the answer positions (torch reference; the fused Triton head mirrors it).

For each row, ``q`` is the (prompted or fine-tuned) next-token distribution and ``r`` the frozen unprompted one:

* ``L_f`` = CE(q, target) over forget rows (targets: a generic label for SPUL/RL, the true label for GA),
* ``L_r`` = CE(q, y) over retain rows,
* ``L_kl`` = KL between r and q at the answer position over retain rows,
  ``forward`` = KL(r‖q) (the released code), ``reverse`` = KL(q‖r) (the paper's formula),

``L = w_f·L_f + α·L_r + β·L_kl``, each term averaged over its own rows so a small forget share still weighs fully.
``w_f = -1`` turns L_f into gradient ascent (GA baselines).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from spulctl.errors import SpulError

if TYPE_CHECKING:
    import torch

KL_DIRECTIONS = ("forward", "reverse")


@dataclass
class LossWeights:
    """Weights of the three terms.

    Attributes:
        forget: weight of L_f (+1 descend to the forget targets, -1 gradient ascent).
        retain: α, weight of L_r.
        kl: β, weight of L_kl.
        kl_direction: ``forward`` = KL(r‖q), ``reverse`` = KL(q‖r).
    """

    forget: float = 1.0
    retain: float = 1.0
    kl: float = 1.0
    kl_direction: str = "forward"

    def __post_init__(self) -> None:
        if self.kl_direction not in KL_DIRECTIONS:
            raise SpulError(f"--kl-direction {self.kl_direction}: expected forward or reverse")
        if self.retain < 0 or self.kl < 0:
            raise SpulError(f"--alpha/--beta must be >= 0 (got {self.retain}, {self.kl})")


def row_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row CE averaged over each row's target tokens.

    Args:
        logits: (b, k, V) fp32.
        targets: (b, k) token ids, -100 where padded.

    Returns:
        (b,) loss per row.
    """
    import torch.nn.functional as F

    per_tok = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")  # (b, k)
    return per_tok.sum(1) / (targets != -100).sum(1).clamp(min=1)


def kl_rows(q_logits: torch.Tensor, r_logits: torch.Tensor, direction: str) -> torch.Tensor:
    """Per-row KL at one position.

    Args:
        q_logits: (m, V) student logits.
        r_logits: (m, V) reference logits.
        direction: ``forward`` = KL(r‖q), ``reverse`` = KL(q‖r).

    Returns:
        (m,) KL per row.
    """
    import torch.nn.functional as F

    log_q, log_r = F.log_softmax(q_logits.float(), -1), F.log_softmax(r_logits.float(), -1)
    if direction == "forward":
        return (log_r.exp() * (log_r - log_q)).sum(-1)
    return (log_q.exp() * (log_q - log_r)).sum(-1)


def unlearning_loss(q_logits: torch.Tensor, targets: torch.Tensor, is_forget: torch.Tensor,
                    r_logits: torch.Tensor | None, w: LossWeights,
                    counts: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    """Combine L_f, L_r and L_kl for one batch (or one micro-batch of it).

    Args:
        q_logits: (b, k, V) fp32 logits at the target positions.
        targets: (b, k) target ids (-100 padded).
        is_forget: (b,) bool, True for forget rows.
        r_logits: (m, V) reference logits at the answer position of the m retain rows, in batch order
            (None when β = 0).
        w: term weights.
        counts: (forget rows, retain rows) of the whole batch when these rows are one micro-batch of it: each
            term is then this micro-batch's share of the batch mean, and the shares add up to the batch's loss.
            Default: the rows here.

    Returns:
        ``loss`` and the parts ``l_f``, ``l_r``, ``l_kl`` (0 when a batch has no rows of that kind).
    """
    import torch

    ce = row_ce(q_logits, targets)  # (b,)
    zero = ce.new_zeros(())
    n_f, n_r = int(is_forget.sum()), int((~is_forget).sum())
    d_f, d_r = counts if counts is not None else (n_f, n_r)
    l_f = ce[is_forget].sum() / d_f if n_f else zero
    l_r = ce[~is_forget].sum() / d_r if n_r else zero
    l_kl = zero
    if r_logits is not None and n_r and w.kl > 0:
        l_kl = kl_rows(q_logits[~is_forget, 0], r_logits, w.kl_direction).sum() / d_r
    loss = w.forget * l_f + w.retain * l_r + w.kl * l_kl
    return {"loss": loss, "l_f": l_f.detach(), "l_r": l_r.detach(), "l_kl": torch.as_tensor(l_kl).detach()}


KERNEL_CHOICES = ("auto", "triton", "torch")


def resolve_kernels(choice: str, device: Any) -> str:
    """``auto`` -> ``triton`` on CUDA when Triton is installed, else ``torch``; check an explicit choice.

    Raises:
        SpulError: unknown choice, Triton missing, or Triton asked for on CPU without ``TRITON_INTERPRET=1``.
    """
    import importlib.util
    import os

    if choice not in KERNEL_CHOICES:
        raise SpulError(f"--kernels {choice}: expected one of {', '.join(KERNEL_CHOICES)}")
    on_cuda = str(device).startswith("cuda")
    have_triton = importlib.util.find_spec("triton") is not None
    if choice == "auto":
        return "triton" if on_cuda and have_triton else "torch"
    if choice == "triton":
        if not have_triton:
            raise SpulError("--kernels triton: Triton is not installed (pip install 'spulctl[kernels]')")
        if not on_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise SpulError("--kernels triton on CPU runs only under the interpreter: set TRITON_INTERPRET=1")
    return choice


def fused_unlearning_loss(hidden: torch.Tensor, targets: torch.Tensor, is_forget: torch.Tensor,
                          ref_rows: torch.Tensor | None, head_weight: torch.Tensor,
                          w: LossWeights, counts: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    """:func:`unlearning_loss` through the fused Triton head (logits never materialised).

    Args:
        hidden: (b, k, d) student hidden rows at the target positions.
        targets: (b, k) target ids, -100 padded.
        is_forget: (b,) bool.
        ref_rows: (m, d) reference hidden rows of the m retain rows (batch order), or None.
        head_weight: (V, d) frozen output head.
        counts: (forget rows, retain rows) of the whole batch, for a micro-batch (see :func:`unlearning_loss`).
    """
    import torch

    from spulctl.kernels.answer_head_loss import answer_head_loss

    b, k, d = hidden.shape
    valid = targets != -100  # (b, k)
    n_tok = valid.sum(1).clamp(min=1).float()  # (b,)
    n_f, n_r = int(is_forget.sum()), int((~is_forget).sum())
    d_f, d_r = counts if counts is not None else (n_f, n_r)
    d_f, d_r = max(d_f, 1), max(d_r, 1)
    # fold α/β, the ±1 of gradient ascent and the per-term means into per-row weights
    row_w = torch.where(is_forget, torch.tensor(w.forget / d_f), torch.tensor(w.retain / d_r))
    w_ce = (row_w.to(hidden.device) / n_tok).unsqueeze(1).expand(b, k)  # (b, k)
    ref_idx = torch.full((b, k), -1, dtype=torch.long, device=hidden.device)
    use_kl = ref_rows is not None and n_r > 0 and w.kl > 0
    if use_kl:
        ref_idx[~is_forget, 0] = torch.arange(n_r, device=hidden.device)
    w_kl = torch.where(ref_idx >= 0, torch.tensor(w.kl / d_r, device=hidden.device), 0.0)
    flat = valid.flatten()
    h_rows = hidden.reshape(b * k, d)[flat]
    h_ref = ref_rows if use_kl else hidden.new_zeros(1, d)
    loss, ce, kl = answer_head_loss(h_rows, h_ref.detach(), head_weight.detach(), targets.flatten()[flat],
                                    w_ce.flatten()[flat], ref_idx.flatten()[flat], w_kl.flatten()[flat],
                                    w.kl_direction)
    # per-term means for logging, from the per-row values the kernel returns
    row_of = torch.arange(b, device=hidden.device).unsqueeze(1).expand(b, k).flatten()[flat]
    ce_row = torch.zeros(b, device=hidden.device).index_add(0, row_of, ce) / n_tok
    zero = ce.new_zeros(())
    return {"loss": loss,
            "l_f": (ce_row[is_forget].sum() / d_f).detach() if n_f else zero,
            "l_r": (ce_row[~is_forget].sum() / d_r).detach() if n_r else zero,
            "l_kl": (kl.sum() / d_r).detach() if use_kl else zero}


def weighted_unlearning_loss(hidden: torch.Tensor, targets: torch.Tensor, w_f: torch.Tensor, w_r: torch.Tensor,
                             ref_rows: torch.Tensor | None, head: Any, w: LossWeights,
                             kernels: str = "torch") -> dict[str, torch.Tensor]:
    """:func:`unlearning_loss` (or its fused form) with fixed shapes and no host synchronisation.

    Rows are weighted instead of selected, so nothing depends on how many rows of each kind a batch holds: the
    form a CUDA graph can capture once and replay for every batch of the same shape.

    Args:
        hidden: (b, k, d) hidden rows at the target positions.
        targets: (b, k) target ids, -100 padded.
        w_f: (b,) 1 / (forget rows of the whole batch) on forget rows, 0 elsewhere.
        w_r: (b,) 1 / (retain rows of the whole batch) on retain rows, 0 elsewhere.
        ref_rows: (b, d) the reference hidden row of every row (any finite row where ``w_r`` is 0), or None.
        head: the output head (``head.weight`` is (V, d)).
        w: term weights.
        kernels: ``torch`` (logits at the answer rows) or ``triton`` (fused head, logits never built).

    Returns:
        ``loss`` and the parts ``l_f``, ``l_r``, ``l_kl``, as :func:`unlearning_loss`.
    """
    import torch

    b, k, d = hidden.shape
    use_kl = ref_rows is not None and w.kl > 0
    if kernels == "triton":
        from spulctl.kernels.answer_head_loss import answer_head_loss

        valid = targets != -100  # (b, k)
        n_tok = valid.sum(1).clamp(min=1).float()  # (b,)
        w_ce = ((w.forget * w_f + w.retain * w_r) / n_tok).unsqueeze(1) * valid  # (b, k)
        ref_idx = torch.full((b, k), -1, dtype=torch.long, device=hidden.device)
        if use_kl:
            rows = torch.arange(b, device=hidden.device)
            ref_idx[:, 0] = torch.where(w_r > 0, rows, -1)  # KL at the answer position of retain rows
        w_kl = (w.kl * w_r).unsqueeze(1) * (ref_idx >= 0)  # (b, k)
        h_ref = ref_rows.detach() if use_kl else hidden.new_zeros(1, d)
        loss, ce, kl = answer_head_loss(hidden.reshape(b * k, d), h_ref, head.weight.detach(),
                                        torch.where(valid, targets, -1).flatten(), w_ce.flatten(),
                                        ref_idx.flatten(), w_kl.flatten(), w.kl_direction)
        ce_row = ce.view(b, k).sum(1) / n_tok  # (b,)
        kl_row = kl.view(b, k)[:, 0]
    else:
        q = head(hidden).float()  # (b, k, V)
        ce_row = row_ce(q, targets)
        kl_row = kl_rows(q[:, 0], head(ref_rows).float(), w.kl_direction) if use_kl else None
    l_f, l_r = (ce_row * w_f).sum(), (ce_row * w_r).sum()
    l_kl = (kl_row * w_r).sum() if use_kl else ce_row.new_zeros(())
    if kernels != "triton":
        loss = w.forget * l_f + w.retain * l_r + w.kl * l_kl
    return {"loss": loss, "l_f": l_f.detach(), "l_r": l_r.detach(), "l_kl": l_kl.detach()}


def npo_rows(logp: torch.Tensor, logp_ref: torch.Tensor, beta: float) -> torch.Tensor:
    """Negative Preference Optimization per forget row (Zhang et al. 2024, "Negative Preference Optimization:
    From Catastrophic Collapse to Effective Unlearning"): ``-(2/β)·log σ(-β·(log p_θ − log p_ref))``.

    Unlike gradient ascent the loss is bounded below and its gradient fades as ``log p_θ`` falls under
    ``log p_ref`` (weight ``σ(β·(log p_θ − log p_ref))``), so already-forgotten rows stop pulling; at ``θ = ref``
    it equals ``(2/β)·log 2`` with the gradient of GA.

    Args:
        logp: (m,) log-probability of each forget row's label under the model being trained.
        logp_ref: (m,) the same under the frozen reference (no gradient).
        beta: inverse temperature β > 0.

    Returns:
        (m,) loss per row.
    """
    import torch.nn.functional as F

    return -(2.0 / beta) * F.logsigmoid(-beta * (logp - logp_ref.detach()))
