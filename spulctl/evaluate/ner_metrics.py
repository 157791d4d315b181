"""The NER task's scores: greedy answers, parsed back to per-type sets, and per-type precision / recall / F1.

Counting is micro over records: for each entity type, true positives, false positives and false negatives are summed
over all records (a name counts once per record), and P = tp / (tp + fp), R = tp / (tp + fn),
F1 = 2 tp / (2 tp + fp + fn), in percent. Names match exactly after :func:`~spulctl.data.ner.norm_entity`
(lower-cased, stripped). A score with a zero denominator is undefined and reported as ``None``: precision with no
predicted name, recall with no true name, F1 with neither (a model that rightly names no PERSON on the retain side
is not scored 0 there).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spulctl.data.ner import ENTITY_TYPES, NerTaskSpec, gold_sets, parse_answer

if TYPE_CHECKING:
    from torch import nn

Sets = dict[str, set[str]]


def _ratio(num: int, den: int) -> float | None:
    return None if den == 0 else 100.0 * num / den


def prf(gold: list[Sets], pred: list[Sets], types: tuple[str, ...] = ENTITY_TYPES) -> dict[str, Any]:
    """Per-type and overall (``all``) micro precision / recall / F1 over records, plus exact-match accuracy.

    Args:
        gold: per record, the true ``{type: names}``.
        pred: per record, the predicted ``{type: names}`` (same length).

    Returns:
        ``{"n", type...: {"precision", "recall", "f1", "tp", "fp", "fn"}, "all": {...}, "exact_match"}``; scores in
        percent or None when undefined; ``exact_match`` = share of records with every type's set right.
    """
    if len(gold) != len(pred):
        raise ValueError(f"prf: {len(gold)} gold records but {len(pred)} predictions")
    out: dict[str, Any] = {"n": len(gold)}
    totals = [0, 0, 0]
    for t in types:
        tp = sum(len(g.get(t, set()) & p.get(t, set())) for g, p in zip(gold, pred, strict=True))
        fp = sum(len(p.get(t, set()) - g.get(t, set())) for g, p in zip(gold, pred, strict=True))
        fn = sum(len(g.get(t, set()) - p.get(t, set())) for g, p in zip(gold, pred, strict=True))
        out[t] = _scores(tp, fp, fn)
        totals = [a + b for a, b in zip(totals, (tp, fp, fn), strict=True)]
    out["all"] = _scores(*totals)
    exact = sum(all(g.get(t, set()) == p.get(t, set()) for t in types) for g, p in zip(gold, pred, strict=True))
    out["exact_match"] = _ratio(exact, len(gold)) or 0.0
    return out


def _scores(tp: int, fp: int, fn: int) -> dict[str, Any]:
    return {"precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn), "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "tp": tp, "fp": fp, "fn": fn}


def generate_answers(model: nn.Module, tok: Any, spec: NerTaskSpec, texts: list[str], batch_size: int = 16,
                     max_length: int | None = None, on_batch: Callable[[int], None] | None = None
                     ) -> tuple[list[str], int]:
    """Greedy answers (at most ``spec.max_new_tokens`` tokens, stopping at EOS) to the filled template.

    Prompts are cut by :mod:`spulctl.data.truncate` to leave room for the answer, left-padded and run in batches of
    similar length (``(b, t)`` ids, ``(b, t)`` mask).

    Returns:
        ``(answers, truncated)``: the decoded new text per input, in input order, and how many texts were cut.
    """
    import torch

    from spulctl.data.truncate import fit_prompts, resolve_max_length
    from spulctl.distributed import inference, sharded

    max_length = max_length or resolve_max_length(model.config)
    prompts, cut = fit_prompts(texts, spec, tok, [max(1, max_length - spec.max_new_tokens)] * len(texts))
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        t = max(len(prompts[i]) for i in rows)
        ids = torch.full((len(rows), t), pad, dtype=torch.long)  # (b, t), left-padded
        mask = torch.zeros((len(rows), t), dtype=torch.long)
        for j, i in enumerate(rows):
            ids[j, t - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[j, t - len(prompts[i]):] = 1
        with inference():  # every rank of a sharded base generates the same batches, in step (synced_gpus)
            new = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 synced_gpus=sharded(),
                                 max_new_tokens=spec.max_new_tokens, pad_token_id=pad,
                                 eos_token_id=tok.eos_token_id)[:, t:]  # (b, <= max_new_tokens)
        for j, i in enumerate(rows):
            answers[i] = tok.decode(new[j], skip_special_tokens=True).strip()
        if on_batch is not None:
            on_batch(len(rows))
    return answers, sum(cut)


def score_ner_records(model: nn.Module, tok: Any, spec: NerTaskSpec, rows: list[dict], batch_size: int,
                      emit: Callable[[dict], None], tag: str, max_length: int | None = None) -> dict[str, Any]:
    """Generate, parse and score ``rows`` (NER records) with progress events named ``tag``.

    Returns:
        :func:`prf`'s dict plus ``accuracy`` (= ``exact_match``, for tables that show one number per split) and
        ``truncated``.
    """
    emit({"kind": "eval-start", "split": tag, "total": len(rows)})
    answers, truncated = generate_answers(model, tok, spec, [r["text"] for r in rows], batch_size, max_length,
                                          lambda n: emit({"kind": "eval-step", "split": tag, "n": n}))
    pred = [parse_answer(a, spec.entity_types) for a in answers]
    metrics = prf([gold_sets(r, spec.entity_types) for r in rows], pred, spec.entity_types)
    metrics.update(accuracy=metrics["exact_match"], truncated=truncated)
    emit({"kind": "eval-done", "split": tag, "metrics": metrics})
    return metrics


def evaluate_ner_splits(model: nn.Module, tok: Any, spec: NerTaskSpec, splits: Path, limit: int | None,
                        batch_size: int, emit: Callable[[dict], None],
                        names: tuple[str, ...] = ("test_retain", "test_forget"), tag: str = "",
                        max_length: int | None = None) -> dict[str, dict]:
    """:func:`score_ner_records` on each named split present in ``splits`` (first ``limit`` records each)."""
    from spulctl.data.ner import load_ner_split
    from spulctl.errors import SpulError

    if limit == 0:
        return {}
    out = {}
    for name in names:
        try:
            records = load_ner_split(splits, name)
        except SpulError:
            continue
        out[name] = score_ner_records(model, tok, spec, records[:limit] if limit else records, batch_size, emit,
                                      f"{tag} {name}".strip(), max_length)
    return out
