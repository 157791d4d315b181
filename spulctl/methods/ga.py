"""Baseline ``ga``: Gradient ascent on the forget set's true labels (paper baseline GA)."""

from __future__ import annotations

from spulctl.methods import register
from spulctl.methods.finetune import FineTuneBaseline


@register("ga")
class GradientAscent(FineTuneBaseline):
    """Gradient ascent on the forget set's true labels (paper baseline GA)."""

    forget_weight = -1.0
    use_retain_ce = False
    use_kl = False
    uses_retain = False
    generic_targets = False
