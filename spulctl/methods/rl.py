"""Baseline ``rl``: Fine-tune the forget set toward random generic labels (paper baseline RL)."""

from __future__ import annotations

from spulctl.methods import register
from spulctl.methods.finetune import FineTuneBaseline


@register("rl")
class RandomLabels(FineTuneBaseline):
    """Fine-tune the forget set toward random generic labels (paper baseline RL)."""

    forget_weight = 1.0
    use_retain_ce = False
    use_kl = False
    uses_retain = False
    generic_targets = True
