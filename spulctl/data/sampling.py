"""Batches with a fixed forget share, whatever the forget:retain ratio of the data.

A deletion request is small next to the retain set (1:3 to 1:200). Drawn from the natural mix, most batches hold no
forget row at all; here every batch holds ``k_f = round(share · batch_size)`` forget rows and ``batch_size − k_f``
retain rows. Each side is consumed as a stream of seeded permutations ("passes"): the forget rows cycle as often as
the step budget asks, the retain rows run through the whole retain pool before any repeats. The batches of round
``r`` depend only on (seed, r), so a resumed run draws exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from spulctl.errors import SpulError


@dataclass(frozen=True)
class MixedBatches:
    """Index batches over ``n_forget`` forget rows (indices ``0..n_forget-1``) then ``n_retain`` retain rows.

    Attributes:
        n_forget: forget rows (the first indices of the dataset).
        n_retain: retain rows (the indices after them).
        batch_size: rows per batch.
        forget_share: share of each batch given to forget rows (rounded, at least one forget row; all of the batch
            when there are no retain rows).
        steps_per_round: batches per round (one round = one "epoch" of the training loop).
        seed: seeds both streams.
    """

    n_forget: int
    n_retain: int
    batch_size: int
    forget_share: float
    steps_per_round: int
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_forget < 1:
            raise SpulError("forget-share batches: the forget set is empty")
        if not 0 < self.forget_share <= 1:
            raise SpulError(f"--forget-share {self.forget_share}: must be in (0, 1]")
        if self.batch_size < 1 or self.steps_per_round < 1:
            raise SpulError(f"forget-share batches: batch size {self.batch_size} / round {self.steps_per_round}")

    @property
    def forget_per_batch(self) -> int:
        """k_f: forget rows in every batch."""
        if self.n_retain == 0:
            return self.batch_size
        return min(self.batch_size - 1, max(1, round(self.forget_share * self.batch_size))) \
            if self.batch_size > 1 else 1

    @property
    def retain_per_batch(self) -> int:
        """Retain rows in every batch."""
        return 0 if self.n_retain == 0 else self.batch_size - self.forget_per_batch

    def round(self, r: int) -> list[list[int]]:
        """The ``steps_per_round`` batches of round ``r`` (0-based): forget indices first in each batch."""
        start = r * self.steps_per_round
        kf, kr = self.forget_per_batch, self.retain_per_batch
        forget = _stream(self.n_forget, self.seed * 7919 + 1, start * kf, self.steps_per_round * kf)
        retain = _stream(self.n_retain, self.seed * 7919 + 2, start * kr, self.steps_per_round * kr)
        return [forget[i * kf:(i + 1) * kf] + [self.n_forget + j for j in retain[i * kr:(i + 1) * kr]]
                for i in range(self.steps_per_round)]


def _stream(n: int, seed: int, offset: int, count: int) -> list[int]:
    """Items ``offset .. offset+count-1`` of the endless stream of seeded permutations of ``range(n)``."""
    if n == 0 or count == 0:
        return []
    out: list[int] = []
    pos = offset
    while len(out) < count:
        p, within = divmod(pos, n)
        perm = list(range(n))
        random.Random(seed * 1_000_003 + p).shuffle(perm)
        take = min(n - within, count - len(out))
        out += perm[within:within + take]
        pos += take
    return out


@dataclass(frozen=True)
class StepBudget:
    """How long a forget-share run lasts, derived from the forget set's size, not from epochs over retain.

    Attributes:
        steps: the most optimiser steps (the schedule's length).
        rounds: evaluation rounds (the run may stop early at the end of any of them).
        steps_per_round: steps between two evaluations.
        forget_passes: passes over the forget set that ``steps`` amounts to.
        reason: a sentence saying how the numbers were chosen (printed).
    """

    steps: int
    rounds: int
    steps_per_round: int
    forget_passes: float
    reason: str


def step_budget(n_forget: int, forget_per_batch: int, passes: float, min_steps: int, max_steps: int,
                rounds: int) -> StepBudget:
    """Steps = ``passes`` over the forget set at ``forget_per_batch`` rows a step, clamped to [min, max].

    Args:
        n_forget: forget rows the passes are counted over.
        forget_per_batch: k_f.
        passes: target passes over the forget set.
        min_steps, max_steps: bounds on the number of steps.
        rounds: how many evaluation rounds to cut the run into (fewer when the run is short).

    Raises:
        SpulError: bounds out of order or non-positive.
    """
    if passes <= 0 or min_steps < 1 or max_steps < min_steps or rounds < 1:
        raise SpulError(f"step budget: passes {passes}, steps [{min_steps}, {max_steps}], rounds {rounds}")
    wanted = math.ceil(passes * n_forget / max(1, forget_per_batch))
    steps = min(max_steps, max(min_steps, wanted))
    per_round = max(1, math.ceil(steps / rounds))
    n_rounds = math.ceil(steps / per_round)
    steps = per_round * n_rounds
    bound = "" if steps >= wanted - per_round and wanted >= min_steps else (
        f" (clamped from {wanted} to the range [{min_steps}, {max_steps}])")
    reason = (f"{steps} steps = {steps * forget_per_batch / n_forget:.1f} passes over {n_forget} forget rows at "
              f"{forget_per_batch} a step{bound}; evaluated every {per_round} steps")
    return StepBudget(steps, n_rounds, per_round, steps * forget_per_batch / n_forget, reason)


def hold_out(records: list[dict], share: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Seeded split of ``records`` into (train, held-out); at least one held out when possible."""
    if len(records) < 2:
        return records, []
    order = list(range(len(records)))
    random.Random(seed + 17).shuffle(order)
    k = max(1, round(share * len(records)))
    held = set(order[:k])
    return [r for i, r in enumerate(records) if i not in held], [records[i] for i in sorted(held)]
