"""Baseline ``ga_kl``: Gradient ascent on forget + KL to the original model on retain (GA+KL)."""

from __future__ import annotations

from spulctl.methods import register
from spulctl.methods.finetune import FineTuneBaseline


@register("ga_kl")
class GradientAscentKL(FineTuneBaseline):
    """Gradient ascent on forget + KL to the original model on retain (GA+KL)."""

    forget_weight = -1.0
    use_retain_ce = False
    use_kl = True
    uses_retain = True
    generic_targets = False
