"""The generative NER task (Reveal-and-Release's setting): list the people, organisations and places in a text.

The model reads :data:`NER_TEMPLATE` filled with a text and answers in one fixed format, the entity types always in
the order of :data:`ENTITY_TYPES`, an absent type as ``none``::

    PERSON: Tom Hanks, Meg Ryan; ORG: none; GPE: Seattle

An encoded example is ``prompt tokens + answer tokens + EOS`` (:func:`encode_ner`): the same
:class:`~spulctl.data.task.Encoded` the sentiment task builds, with a target of many tokens, so the one answer-only
step (:mod:`spulctl.step`) trains it by teacher forcing with the loss over every answer token. Generated answers are
read back by :func:`parse_answer`, which never fails: junk yields empty sets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from spulctl.errors import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from spulctl.data.task import Encoded

ENTITY_TYPES = ("PERSON", "ORG", "GPE")
NER_TEMPLATE = "List the people, organisations and places named in: {text}\nAnswer:"
NONE = "none"
TASK_NAME = "ner"


@dataclass
class NerTaskSpec:
    """Template and answer format of the NER task.

    Attributes:
        template: must contain ``{text}``; the answer follows it, preceded by ``answer_prefix``.
        entity_types: the types listed in every answer, in this order.
        answer_prefix: what separates the template from the answer (a space, as after ``Answer:``).
        max_new_tokens: generation bound when the model answers (evaluation).
    """

    template: str = NER_TEMPLATE
    entity_types: tuple[str, ...] = ENTITY_TYPES
    answer_prefix: str = " "
    max_new_tokens: int = 64
    kind: str = field(default=TASK_NAME, init=False)

    def __post_init__(self) -> None:
        if "{text}" not in self.template:
            raise DataError("template: must contain the placeholder {text}")
        if not self.entity_types or len(set(self.entity_types)) != len(self.entity_types):
            raise DataError(f"entity types: need distinct types, got {list(self.entity_types)}")
        if self.max_new_tokens < 1:
            raise DataError(f"max_new_tokens {self.max_new_tokens}: must be >= 1")

    def prompt(self, text: str) -> str:
        """Fill the template with ``text``."""
        return self.template.replace("{text}", text)

    def to_dict(self) -> dict:
        """JSON-serialisable form, stored in manifests and reports."""
        return {"kind": self.kind, "template": self.template, "entity_types": list(self.entity_types),
                "answer_prefix": self.answer_prefix, "max_new_tokens": self.max_new_tokens}


def clean_entity(name: str) -> str:
    """An entity's surface form as the answer writes it: possessive dropped, the format's separators (``,`` ``;``)
    and runs of whitespace turned into one space, surrounding punctuation stripped; ``""`` when nothing is left."""
    name = re.sub(r"\s*'s$|\s*'$", "", name.strip())
    name = re.sub(r"[,;:\s]+", " ", name)
    return name.strip(" .-'\"()[]")


def norm_entity(name: str) -> str:
    """The form two entity strings are compared in (scoring): :func:`clean_entity`, lower-cased."""
    return clean_entity(name).lower()


def format_answer(entities: dict[str, list[str]], types: tuple[str, ...] = ENTITY_TYPES) -> str:
    """The fixed answer format, e.g. ``PERSON: a, b; ORG: c; GPE: none`` (types in ``types`` order)."""
    parts = []
    for t in types:
        names = [n for n in (clean_entity(x) for x in entities.get(t, [])) if n and n.lower() != NONE]
        parts.append(f"{t}: {', '.join(names) if names else NONE}")
    return "; ".join(parts)


def answer_entities(text: str, types: tuple[str, ...] = ENTITY_TYPES) -> dict[str, list[str]]:
    """Read a (generated) answer back into per-type lists of names as written (:func:`clean_entity`, case kept,
    first mention first, no repeats by :func:`norm_entity`).

    Robust to junk: only the first line counts; each type takes the text after its first ``TYPE:`` up to the next
    type's label (or the end); a missing type, ``none`` and empty items give nothing; unknown labels are ignored.

    Returns:
        ``{type: [names]}`` for every type in ``types``.
    """
    line = (text or "").strip().split("\n", 1)[0]
    label = re.compile(r"\b(" + "|".join(map(re.escape, types)) + r")\s*:", re.IGNORECASE)
    marks = list(label.finditer(line))
    out: dict[str, list[str]] = {t: [] for t in types}
    seen: set[str] = set()
    for i, m in enumerate(marks):
        kind = next(t for t in types if t.lower() == m.group(1).lower())
        if kind in seen:
            continue
        seen.add(kind)
        end = marks[i + 1].start() if i + 1 < len(marks) else len(line)
        keys: set[str] = set()
        for item in (clean_entity(x) for x in re.split(r"[,;]", line[m.end():end])):
            key = item.lower()
            if item and key != NONE and key not in keys:
                keys.add(key)
                out[kind].append(item)
    return out


def parse_answer(text: str, types: tuple[str, ...] = ENTITY_TYPES) -> dict[str, set[str]]:
    """:func:`answer_entities` as per-type sets of normalised names (:func:`norm_entity`), what scoring compares.

    Returns:
        ``{type: set of lower-cased names}`` for every type in ``types``.
    """
    return {t: {norm_entity(n) for n in names} for t, names in answer_entities(text, types).items()}


def gold_sets(record: dict, types: tuple[str, ...] = ENTITY_TYPES) -> dict[str, set[str]]:
    """A record's true entities as normalised per-type sets (from ``entities``, else parsed from ``answer``).

    Raises:
        DataError: the record has neither field.
    """
    if isinstance(record.get("entities"), dict):
        return {t: {n for n in map(norm_entity, record["entities"].get(t) or []) if n and n != NONE} for t in types}
    if isinstance(record.get("answer"), str):
        return parse_answer(record["answer"], types)
    raise DataError(f"NER record without 'entities' or 'answer': {str(record.get('text', ''))[:60]!r}")


def encode_ner(records: list[dict], spec: NerTaskSpec, tokenizer: PreTrainedTokenizerBase,
               max_length: int | None = None) -> list[Encoded]:
    """Tokenise records into ``prompt + answer (+ EOS)`` examples, long texts cut by :mod:`spulctl.data.truncate`.

    Args:
        records: ``{"text", "answer"}`` (or ``{"text", "entities"}``) dicts.
        max_length: tokens per example, prompt + answer (None: ``FALLBACK_MAX_LENGTH``).

    Returns:
        :class:`~spulctl.data.task.Encoded` rows whose ``target_ids`` are all the answer's tokens (then EOS, so a
        generation learns to stop); ``label`` is 0 (there is no class).
    """
    from spulctl.data.task import Encoded
    from spulctl.data.truncate import FALLBACK_MAX_LENGTH, fit_prompts

    if not records:
        return []
    max_length = max_length or FALLBACK_MAX_LENGTH
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    answers = [r["answer"] if isinstance(r.get("answer"), str) else format_answer(r.get("entities") or {},
                                                                                  spec.entity_types)
               for r in records]
    tgts = [list(ids) + eos for ids in
            tokenizer([spec.answer_prefix + a for a in answers], add_special_tokens=False)["input_ids"]]
    prompts, cut = fit_prompts([r["text"] for r in records], spec, tokenizer, [max_length - len(t) for t in tgts])
    return [Encoded(ids + tgt, len(ids) - 1, tgt, 0, was_cut)
            for ids, tgt, was_cut in zip(prompts, tgts, cut, strict=True)]


def is_ner_splits(folder: str | Path) -> bool:
    """Whether ``folder/split.json`` says the splits were built for the NER task (``spulctl data ner``)."""
    import json

    info = Path(folder) / "split.json"
    if not info.is_file():
        return False
    try:
        return json.loads(info.read_text()).get("task") == TASK_NAME
    except (OSError, ValueError, AttributeError):
        return False


def load_ner_split(folder: str | Path, name: str, note=None) -> list[dict]:
    """Read one NER split (records ``{"text", "answer", "entities"}``; no sentiment label needed).

    Raises:
        DataError: the split file is missing or malformed, or a record has no ``answer``/``entities``.
    """
    from spulctl.data.readers import ReadOptions, find_split_file, read_records

    path = find_split_file(folder, name)
    records = read_records(path, ReadOptions(require_label=False), note)
    for i, r in enumerate(records):
        if isinstance(r.get("entities"), str):  # csv/tsv round trip: the dict comes back as JSON text
            import json

            try:
                r["entities"] = json.loads(r["entities"])
            except ValueError:
                raise DataError(f"{path}: record {i}: field 'entities' is not a JSON object") from None
        if not isinstance(r.get("answer"), str) and not isinstance(r.get("entities"), dict):
            raise DataError(f"{path}: record {i}: no 'answer' or 'entities' field (not an NER split?)")
    return records
