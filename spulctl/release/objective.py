"""One Release round's loss: forget term + retain terms + λ·orthogonality penalty against the frozen stack.

``L = L_forget + α·CE(retain) + β·KL(retain) + λ·Σ_layers ‖A_stack · A_newᵀ‖₁`` where ``L_forget`` is

* ``ce``: CE towards a generic label (the target SPUL and the RL baseline use),
* ``ga``: −CE of the true label (gradient ascent),
* ``npo``: NPO on the label (:func:`spulctl.loss.npo_rows`; the reference is the base model without modules).

Each term is averaged over its own rows (:func:`spulctl.loss.unlearning_loss`); the penalty is added once per
batch (a micro-batch adds its share of it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from spulctl.loss import LossWeights
from spulctl.methods.base import AnswerObjective

if TYPE_CHECKING:
    import torch

    from spulctl.data.task import Encoded

OBJECTIVES = ("ce", "ga", "npo")
FORGET_WEIGHT = {"ce": 1.0, "ga": -1.0, "npo": 0.0}  # the weight of unlearning_loss's L_f; NPO adds its own term


def release_weights(objective: str, alpha: float, beta: float, kl_direction: str) -> LossWeights:
    """The :class:`~spulctl.loss.LossWeights` of a round (NPO's forget term is added outside them)."""
    return LossWeights(forget=FORGET_WEIGHT[objective], retain=alpha, kl=beta, kl_direction=kl_direction)


class ReleaseObjective(AnswerObjective):
    """:class:`~spulctl.methods.base.AnswerObjective` (torch head) plus NPO and the orthogonality penalty.

    Args (beyond the base class's):
        forget_objective: ``ce`` | ``ga`` | ``npo``.
        ref_logp: (n_forget,) label log-probability of each forget row under the base model (NPO), or None.
        npo_beta: NPO's β.
        penalty: ``() -> scalar`` the unweighted penalty of the module being trained (0 in round 1).
        ortho_lambda: λ.
    """

    def __init__(self, *args: Any, forget_objective: str = "ce", ref_logp: torch.Tensor | None = None,
                 npo_beta: float = 0.1, penalty: Callable[[], torch.Tensor] | None = None,
                 ortho_lambda: float = 0.0, **kw: Any) -> None:
        super().__init__(*args, kernels="torch", **kw)
        self.forget_objective, self.npo_beta, self.ortho_lambda = forget_objective, npo_beta, ortho_lambda
        self.ref_logp = None if ref_logp is None else ref_logp.to(self.device)
        self.penalty = penalty

    def loss(self, indices: list[int], within: list[int] | None = None) -> dict[str, torch.Tensor]:
        """Loss parts ``loss``, ``l_f``, ``l_r``, ``l_kl``, ``l_npo``, ``ortho`` (see the module docstring)."""
        import torch

        from spulctl.loss import npo_rows, row_ce, unlearning_loss

        batch, is_forget, counts = self.batch(indices, within)
        q = self.logits_fn(batch)  # (b, k, V)
        parts = unlearning_loss(q, batch.targets, is_forget, self.reference_logits(batch, is_forget), self.weights,
                                counts)
        zero = q.new_zeros(())
        l_npo = zero
        if self.forget_objective == "npo" and bool(is_forget.any()):
            logp = -row_ce(q[is_forget], batch.targets[is_forget])  # (m,) mean label-token log-probability
            ref = self.ref_logp[batch.index[is_forget]]  # (m,)
            d_f = max(counts[0] if counts else int(is_forget.sum()), 1)
            l_npo = npo_rows(logp, ref, self.npo_beta).sum() / d_f
        share = len(indices) / len(within) if within is not None else 1.0
        pen = self.penalty() * share if self.penalty is not None else zero
        loss = parts["loss"] + l_npo + self.ortho_lambda * pen
        return {**parts, "loss": loss, "l_npo": l_npo.detach(), "ortho": torch.as_tensor(pen).detach()}


def label_logp(model: Any, examples: list[Encoded], pad_id: int, batch_size: int,
               logits_fn: Callable[[Any], torch.Tensor]) -> torch.Tensor:
    """(n,) mean log-probability of each example's target tokens under ``logits_fn`` (no grad, CPU fp32)."""
    import torch

    from spulctl.loss import row_ce
    from spulctl.step import bucketed_batches, collate

    device = next(model.parameters()).device
    out = torch.empty(len(examples))
    with torch.no_grad():
        for idx in bucketed_batches([len(e.input_ids) for e in examples], batch_size, seed=None):
            batch = collate([examples[i] for i in idx], pad_id, idx).to(device)
            out[idx] = -row_ce(logits_fn(batch), batch.targets).float().cpu()
    return out
