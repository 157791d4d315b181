"""Baseline ``ga_gd``: Gradient ascent on forget + gradient descent on retain (GA+GD)."""

from __future__ import annotations

from spulctl.methods import register
from spulctl.methods.finetune import FineTuneBaseline


@register("ga_gd")
class GradientAscentDescent(FineTuneBaseline):
    """Gradient ascent on forget + gradient descent on retain (GA+GD)."""

    forget_weight = -1.0
    use_retain_ce = True
    use_kl = False
    uses_retain = True
    generic_targets = False
