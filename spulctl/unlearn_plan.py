"""How an unlearning run spends its steps when the forget set is small: the forget-share plan.

Built once per run from the data and the settings:

1. **Training rows.** Forget = the forget records + one robustness variant of each (case, punctuation, first or
   last name; :mod:`spulctl.data.rewrite`) so the probes stay forgotten. Retain = a seeded pool drawn from the
   *whole* retain set, as many distinct records as the run will visit (a ``hard_negatives`` share of it retain
   records naming other people, :mod:`spulctl.data.hard_negatives`), + counterfactuals of the forget records
   (their names swapped for made-up or, half the time, other real ones; true labels kept) as hard negatives.
2. **Batches.** Every batch holds the same forget share (:class:`~spulctl.data.sampling.MixedBatches`).
3. **Budget.** Steps = passes over the forget set, clamped (:func:`~spulctl.data.sampling.step_budget`), cut
   into evaluation rounds.
4. **Selection** that costs no forget record: after each round the artifact is scored on (a) training forget
   records and all their variants — is the forget objective met? — and (b) held-out retain records plus fresh
   counterfactuals (a new seeded draw of swaps) — is the rest intact? The aggregate score
   (:mod:`spulctl.selection`) picks the round to keep; the stop rule ends the run once both sides hold.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from spulctl.data.hard_negatives import HardNegatives, PeopleFinder, scan_or_note
from spulctl.data.rewrite import counterfactuals, forget_variants, rewritten, variant_rewriters
from spulctl.data.sampling import MixedBatches, StepBudget, step_budget
from spulctl.selection import StopRule, aggregate_score


@dataclass
class ForgetSharePlan:
    """The rows, batches, budget and selection slices of one run.

    Attributes:
        forget: training forget rows (records, then their variants).
        retain: training retain rows (the pool, then the counterfactuals).
        batches: the batch sampler over ``forget`` + ``retain``.
        budget: steps and rounds.
        select_forget: training forget records and their variants (the forget side of selection).
        select_retain: held-out retain records (never trained on).
        select_counterfactual: selected forget records with a new draw of name swaps (retain side).
        summary: counts and choices, stored in the artifact's metadata and printed.
    """

    forget: list[dict]
    retain: list[dict]
    batches: MixedBatches
    budget: StepBudget
    select_forget: list[dict] = field(default_factory=list)
    select_retain: list[dict] = field(default_factory=list)
    select_counterfactual: list[dict] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def build_plan(forget: list[dict], retain: list[dict], entities: list[str], settings: Any,
               uses_retain: bool = True, note: Callable[[str], None] | None = None,
               people: PeopleFinder | None = None) -> ForgetSharePlan:
    """Augment, pool, budget and slice (see the module docstring).

    Args:
        forget, retain: the labelled records.
        entities: forgotten names (may be empty: then no name variants and no counterfactuals).
        settings: an ``UnlearnConfig`` (forget_share, forget_passes, min_steps, budget_steps, rounds, augment,
            select, select_forget, select_retain, hard_negatives, train.batch_size, train.seed, train.max_steps).
        uses_retain: the method trains on retain rows (SPUL, RL, GA+KL, GA+GD) or not (GA).
        note: prints a one-line note (a missing spaCy for the hard-negative scan).
        people: the PERSON finder of the hard-negative scan (default: spaCy).
    """
    s, seed = settings, settings.train.seed
    rng = random.Random(seed + 101)
    cap = s.budget_steps if s.train.max_steps is None else s.train.max_steps
    hard = HardNegatives()
    if s.hard_negatives > 0 and entities and uses_retain and retain:
        want = (math.ceil(s.hard_negatives * cap * s.train.batch_size * (1 - s.forget_share))
                + (int(s.hard_negatives * s.select_retain) if s.select else 0))
        hard = scan_or_note(retain, entities, seed + 404, want, note or (lambda _m: None), people)
    hard_set = set(hard.indices)
    held_retain: list[dict] = []
    if s.select and retain:
        k = min(s.select_retain, len(retain) // 5)
        order = list(range(len(retain)))
        rng.shuffle(order)
        # held-out retain names other people as often as training
        k_hard = min(int(k * s.hard_negatives), len(hard.indices) // 5)
        held_idx = set(hard.indices[:k_hard]) | set([i for i in order if i not in hard_set][:k - k_hard])
        held_retain = [retain[i] for i in sorted(held_idx)]
        hard_train = [retain[i] for i in hard.indices if i not in held_idx]
        retain = [r for i, r in enumerate(retain) if i not in held_idx and i not in hard_set]
    else:
        hard_train = [retain[i] for i in hard.indices]
        retain = [r for i, r in enumerate(retain) if i not in hard_set]
    train_forget = list(forget)
    if s.augment:
        train_forget += forget_variants(forget, entities, seed)
    cf_train = counterfactuals(forget, entities, seed, hard.names) if s.augment and uses_retain else []
    probe = MixedBatches(len(train_forget), len(retain) + len(hard_train) + len(cf_train) if uses_retain else 0,
                         s.train.batch_size, s.forget_share, 1, seed)
    budget = step_budget(len(forget), probe.forget_per_batch, s.forget_passes, min(s.min_steps, cap), cap, s.rounds)
    pool: list[dict] = []
    hard_pool: list[dict] = []
    if uses_retain and (retain or hard_train):
        wanted = budget.steps * probe.retain_per_batch
        hard_pool = hard_train[:math.ceil(s.hard_negatives * wanted)]
        rest, others = wanted - len(hard_pool), retain + hard_train[len(hard_pool):]  # unused hard records stay in
        pool = hard_pool + (others if rest >= len(others) else random.Random(seed + 202).sample(others, rest))
    train_retain = pool + cf_train
    batches = MixedBatches(len(train_forget), len(train_retain), s.train.batch_size, s.forget_share,
                           budget.steps_per_round, seed)
    plan = ForgetSharePlan(train_forget, train_retain, batches, budget)
    if s.select:
        chosen = random.Random(seed + 303).sample(forget, min(s.select_forget, len(forget)))
        fns = variant_rewriters(entities)
        plan.select_forget = chosen + [r for fn in fns.values() for r in rewritten(chosen, fn)]
        plan.select_retain = held_retain
        plan.select_counterfactual = counterfactuals(chosen, entities, seed + 9_999, hard.names)
    plan.summary = {
        "forget_share": s.forget_share, "forget_per_batch": batches.forget_per_batch,
        "retain_per_batch": batches.retain_per_batch, "steps": budget.steps, "rounds": budget.rounds,
        "steps_per_round": budget.steps_per_round, "forget_passes": round(budget.forget_passes, 2),
        "budget": budget.reason, "forget_records": len(forget), "forget_variants": len(train_forget) - len(forget),
        "retain_available": len(retain) + len(hard_train), "retain_pool": len(pool),
        "hard_negatives": len(hard_pool), "hard_scanned": hard.scanned, "other_names": len(hard.names),
        "counterfactuals": len(cf_train),
        "entities": entities, "select_forget": len(plan.select_forget), "select_retain": len(plan.select_retain),
        "select_counterfactual": len(plan.select_counterfactual),
    }
    return plan


def plan_notes(summary: dict[str, Any]) -> list[str]:
    """What the plan chose, as the lines a run prints."""
    hard = (f" ({summary['hard_negatives']} name other people; {summary['hard_scanned']} records scanned)"
            if summary.get("hard_scanned") else "")
    return [f"forget share {summary['forget_share']:g}: {summary['forget_per_batch']} forget + "
            f"{summary['retain_per_batch']} retain rows per batch; {summary['budget']}",
            f"training rows: {summary['forget_records']} forget + {summary['forget_variants']} variants, "
            f"{summary['retain_pool']} retain (of {summary['retain_available']}){hard} + {summary['counterfactuals']} "
            f"counterfactuals; selection: {summary['select_forget']} forget, {summary['select_retain']} held-out "
            f"retain, {summary['select_counterfactual']} counterfactual rows"]


def selection_evaluator(model, tok, task, vocab, plan: ForgetSharePlan, live_scorer: Callable[[], Any],
                        batch_size: int, max_length: int | None,
                        emit: Callable[[dict], None]) -> Callable[[int], dict[str, float]]:
    """``round -> metrics`` on the selection slices, relative to the model as it was before this call.

    The "before" accuracies are measured here, once, with the plain model (call it before training starts).
    Metrics: ``forget_acc`` (training forget records + variants), ``retain_acc`` (held-out retain +
    counterfactuals), ``retain_drop`` (points vs before), ``heldout_retain_acc``, ``counterfactual_acc`` and
    ``score`` (:func:`~spulctl.selection.aggregate_score`).
    """
    from spulctl.data.task import encode
    from spulctl.evaluate.metrics import predict

    slices = {name: encode(rows, task, tok, vocab, max_length=max_length) for name, rows in
              (("forget", plan.select_forget), ("heldout", plan.select_retain),
               ("counterfactual", plan.select_counterfactual))}

    def correct(scorer) -> dict[str, Any]:
        return {name: predict(model, ex, vocab, tok.pad_token_id, batch_size, logits_fn=scorer).correct
                for name, ex in slices.items() if ex}

    def accuracies(hits: dict[str, Any]) -> dict[str, float]:
        import numpy as np

        retain = [h for k, h in hits.items() if k != "forget"]
        out = {"forget_acc": 100.0 * float(hits["forget"].mean()) if "forget" in hits else 0.0,
               "retain_acc": 100.0 * float(np.concatenate(retain).mean()) if retain else 100.0}
        for k in ("heldout", "counterfactual"):
            if k in hits:
                out[f"{k}_{'retain_' if k == 'heldout' else ''}acc"] = 100.0 * float(hits[k].mean())
        return out

    before = accuracies(correct(None))
    n_retain = sum(len(v) for k, v in slices.items() if k != "forget")
    emit({"kind": "note", "message": f"selection slices before unlearning: forget {before['forget_acc']:.1f} % "
                                     f"({len(slices['forget'])}), retain {before['retain_acc']:.1f} % ({n_retain})"})

    def evaluate(_round: int) -> dict[str, float]:
        after = accuracies(correct(live_scorer()))
        return {**after, "retain_drop": before["retain_acc"] - after["retain_acc"],
                "score": aggregate_score(after["retain_acc"], before["retain_acc"], after["forget_acc"],
                                         before["forget_acc"])}

    evaluate.before = before  # type: ignore[attr-defined]
    return evaluate


def stop_rule(settings: Any) -> StopRule:
    """The stop rule from the settings (``stop_forget_acc``, ``stop_retain_drop``, ``stop_patience``)."""
    return StopRule(settings.stop_forget_acc, settings.stop_retain_drop, settings.stop_patience)
