"""Release on the generative NER task: the PERSON type is forgotten, ORG and GPE stay.

The sentiment task has one answer position and label words; here the answer is a whole line
(``PERSON: a, b; ORG: c; GPE: none``, :mod:`spulctl.data.ner`), so the pieces of :class:`Release` that read the
model's answer are redone with generation:

* **forget rows.** ``ce``: teacher-forced CE towards the record's answer with the PERSON part emptied
  (``PERSON: none; ORG: c; GPE: none``) — the NER analogue of a generic label, and the ORG/GPE part of the same
  answer is trained to stay. ``ga`` / ``npo``: only the PERSON names are targets (the ``PERSON:`` label joins the
  prompt, so the format itself is never pushed away), ascent or NPO on them.
* **relabel.** A revealed text is labelled with the *base* model's greedy answer; texts in whose answer the base
  model names no person carry nothing to forget and are dropped.
* **known share.** A record is still known when the current model's answer names at least one of the people the
  base model named (measured on at most :data:`KNOWN_SAMPLE` records: each costs a generation).
* **held-out slices.** ``forget_acc`` = PERSON F1 on the held-out forget records, ``retain_acc`` = ORG and GPE
  F1 (micro, both types together) on the held-out retain records; both in percent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spulctl.data.ner import ENTITY_TYPES, NONE, NerTaskSpec, clean_entity, format_answer, gold_sets
from spulctl.methods.release import Release

if TYPE_CHECKING:
    from spulctl.data.task import Encoded

FORGOTTEN = "PERSON"
KEPT = tuple(t for t in ENTITY_TYPES if t != FORGOTTEN)
KNOWN_SAMPLE = 300  # a known share is measured on at most this many records (seeded sample): each costs a generation


def surface(record: dict, spec: NerTaskSpec) -> dict[str, list[str]]:
    """The record's names per type as written (case kept): its ``entities``, else read from its ``answer``."""
    from spulctl.data.ner import answer_entities

    if isinstance(record.get("entities"), dict):
        return {t: [n for n in (clean_entity(x) for x in record["entities"].get(t) or []) if n and n.lower() != NONE]
                for t in spec.entity_types}
    return answer_entities(record.get("answer") or "", spec.entity_types)


def forget_answer(record: dict, spec: NerTaskSpec) -> str:
    """The record's answer with the PERSON part emptied (``ce``'s target)."""
    return format_answer({**surface(record, spec), FORGOTTEN: []}, spec.entity_types)


def person_segment(record: dict, spec: NerTaskSpec) -> str:
    """The names of the PERSON part, ``a, b`` (``ga``/``npo`` targets)."""
    return ", ".join(surface(record, spec)[FORGOTTEN]) or NONE


def encode_forget(records: list[dict], spec: NerTaskSpec, tok: Any, objective: str,
                  max_length: int | None) -> list[Encoded]:
    """Encoded forget rows for ``objective`` (module docstring).

    ``ga``/``npo``: ``input_ids`` = prompt + the tokens of ``" PERSON:"`` + those of ``" a, b"``, with
    ``answer_pos`` on the last label token, so ``target_ids`` are the names' tokens only (no EOS: what follows the
    names is not the forget target). The prompt is cut, as :func:`~spulctl.data.ner.encode_ner` cuts it, to leave
    room for the whole answer.
    """
    from spulctl.data.ner import encode_ner
    from spulctl.data.task import Encoded

    if objective == "ce":
        return encode_ner([{"text": r["text"], "answer": forget_answer(r, spec)} for r in records], spec, tok,
                          max_length)
    segments = [person_segment(r, spec) for r in records]
    full = encode_ner([{"text": r["text"], "answer": f"{FORGOTTEN}: {seg}"} for r, seg in
                       zip(records, segments, strict=True)], spec, tok, max_length)
    label = tok(spec.answer_prefix + FORGOTTEN + ":", add_special_tokens=False)["input_ids"]
    names = tok([" " + seg for seg in segments], add_special_tokens=False)["input_ids"]
    return [Encoded(e.input_ids[:e.answer_pos + 1] + label + list(ids), e.answer_pos + len(label), list(ids), 0,
                    e.truncated) for e, ids in zip(full, names, strict=True)]


def _persons(sets: dict[str, set[str]]) -> set[str]:
    return sets.get(FORGOTTEN, set())


class NerRelease(Release):
    """:class:`~spulctl.methods.release.Release` with the NER task's forget rows, labels and scores."""

    spec: NerTaskSpec

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.spec = ctx.task

    def forget_targets(self, records: list[dict] | None = None, k: int = 1) -> None:
        return None  # the targets are in the encoded answers (encode_forget)

    def encode_forget(self, records: list[dict]) -> list[Encoded]:
        return encode_forget(records, self.spec, self.ctx.tokenizer, self.ctx.settings.release_objective,
                             self.ctx.extra.get("max_length"))

    def training_rows(self, records: list[dict], k: int) -> list:
        """Round k's rows: the revealed records' forget rows, then round 1's retain rows."""
        rows = self.encode_forget(records)
        self.n_forget = len(rows)
        return rows + self.retain_examples

    def answers(self, records: list[dict], base: bool = False) -> list[str]:
        """Greedy answers of the current model (``base``: every module switched off), as generated."""
        from contextlib import nullcontext

        from spulctl.evaluate.ner_metrics import generate_answers

        if not records:
            return []
        off = self.model.disable_adapter() if base and hasattr(self.model, "disable_adapter") else nullcontext()
        with off:
            texts, _ = generate_answers(self.model, self.ctx.tokenizer, self.spec, [r["text"] for r in records],
                                        self.ctx.settings.eval_batch_size, self.ctx.extra.get("max_length"))
        return texts

    def relabel(self, records: list[dict]) -> list[dict]:
        """Records labelled with the base model's answer (names as it wrote them); those in whose answer it names
        no person are dropped."""
        from spulctl.data.ner import answer_entities

        out = []
        for r, answer in zip(records, self.answers(records, base=True), strict=True):
            ents = answer_entities(answer, self.spec.entity_types)
            if ents[FORGOTTEN]:
                out.append({**{k: v for k, v in r.items() if k != "label"}, "entities": ents,
                            "answer": format_answer(ents, self.spec.entity_types)})
        return out

    def known_share(self, records: list[dict]) -> float:
        """Percent of ``records`` (a seeded sample of :data:`KNOWN_SAMPLE` when more) whose current answer still
        names one of their people."""
        import random

        from spulctl.data.ner import parse_answer

        if not records:
            return 0.0
        if len(records) > KNOWN_SAMPLE:
            records = random.Random(self.ctx.settings.train.seed).sample(records, KNOWN_SAMPLE)
        now = [parse_answer(a, self.spec.entity_types) for a in self.answers(records)]
        known = [bool(_persons(a) & _persons(gold_sets(r, self.spec.entity_types))) for r, a in
                 zip(records, now, strict=True)]
        return round(100.0 * sum(known) / len(known), 2)

    def heldout_metrics(self) -> dict[str, float | None]:
        """PERSON F1 on the held-out forget slice, ORG+GPE F1 on the held-out retain slice (percent; None when
        undefined: nothing to find and nothing named)."""
        from spulctl.data.ner import parse_answer
        from spulctl.evaluate.ner_metrics import prf

        out = {}
        for key, name, types in (("held_forget", "forget_acc", (FORGOTTEN,)), ("held_retain", "retain_acc", KEPT)):
            rows = self.ctx.extra.get(key) or []
            if rows:
                pred = [parse_answer(a, self.spec.entity_types) for a in self.answers(rows)]
                f1 = prf([gold_sets(r, self.spec.entity_types) for r in rows], pred, types)["all"]["f1"]
                out[name] = None if f1 is None else round(f1, 2)
        return out
