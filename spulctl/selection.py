"""The aggregate score and the rules that use it: which checkpoint to keep, when to stop.

One number says how good an unlearning result is, relative to the model before unlearning:

* **retain kept** = retain accuracy after / before (capped at 1): 1 when nothing was lost;
* **forget removed** = 1 − forget accuracy after / before (floored at 0): 1 when no forget answer is left;
* **aggregate** = their harmonic mean × 100, so neither side can buy the other: a prompt that answers generic to
  everything scores 0, and so does one that changes nothing.

Keep-best, ``sweep`` and the report all rank by it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def retain_kept(after: float, before: float) -> float:
    """Share of the retain accuracy kept, in [0, 1] (1 when ``before`` is 0)."""
    if before <= 0:
        return 1.0
    return max(0.0, min(1.0, after / before))


def forget_removed(after: float, before: float) -> float:
    """Share of the forget accuracy removed, in [0, 1] (0 when ``before`` is 0: nothing was there to remove)."""
    if before <= 0:
        return 0.0
    return max(0.0, min(1.0, 1.0 - after / before))


def aggregate_score(retain_after: float, retain_before: float, forget_after: float, forget_before: float) -> float:
    """Harmonic mean of retain kept and forget removed, × 100 (accuracies in any one unit, e.g. percent)."""
    kept = retain_kept(retain_after, retain_before)
    removed = forget_removed(forget_after, forget_before)
    if kept + removed == 0:
        return 0.0
    return 100.0 * 2 * kept * removed / (kept + removed)


@dataclass(frozen=True)
class StopRule:
    """When a run has done its job: the forget side is gone and the retain side is intact.

    Attributes:
        max_forget_acc: forget accuracy (percent, on the selection slice) at or below which forgetting holds.
        max_retain_drop: retain accuracy drop (points, vs the model before unlearning) allowed.
        patience: consecutive evaluations that must meet both before the run stops (guards against one lucky
            evaluation).
    """

    max_forget_acc: float = 3.0
    max_retain_drop: float = 0.5
    patience: int = 2

    def met(self, evals: Sequence[dict[str, float]]) -> bool:
        """True when the last ``patience`` evaluations each meet both criteria.

        Each evaluation holds ``forget_acc`` and ``retain_drop``.
        """
        if len(evals) < self.patience:
            return False
        return all(e["forget_acc"] <= self.max_forget_acc and e["retain_drop"] <= self.max_retain_drop
                   for e in evals[-self.patience:])


def best_index(evals: Sequence[dict[str, float]]) -> int | None:
    """Index of the evaluation to keep: highest ``score``; ties go to the later one (more forget training)."""
    best = None
    for i, e in enumerate(evals):
        if best is None or e["score"] >= evals[best]["score"]:
            best = i
    return best
