"""``spulctl data ner``: real texts -> NER records (spaCy labels) -> train/test × forget/retain splits.

Every text is labelled by spaCy's ``en_core_web_sm``; the PERSON, ORG and GPE mentions become the record's
``entities`` and its ``answer`` in the task's fixed format (:mod:`spulctl.data.ner`). The forget side is the
PERSON type (Reveal-and-Release forgets it while the other types stay):

* forget = records with at least one PERSON (they may name ORGs and GPEs too),
* retain = records with an ORG or GPE and no PERSON, plus records with no entity at all, so the model also learns
  to answer ``none``: they make up ``empty_share`` of retain (default 0.25: a minority, so the retain side is mostly
  about the types that must stay; SST-2 has about ten entity-free sentences per entity-bearing one, so without a
  cap they would swamp it).

Texts are de-duplicated (exact match) before anything else, so no text is on both the train and the test side;
each of the three pools (person, org/gpe only, none) is split train/test with the same seeded ``test_size``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from spulctl.data.ner import ENTITY_TYPES, TASK_NAME, clean_entity, format_answer
from spulctl.data.readers import SPLIT_NAMES
from spulctl.errors import DataError, SpulError

Event = Callable[[dict[str, Any]], None]


@dataclass
class NerSplitConfig:
    """Settings of ``spulctl data ner``.

    Attributes:
        test_size: share of each pool held out as test (0 < test_size < 1).
        empty_share: share of the retain splits made of entity-free records (0 <= empty_share < 1), as far as
            there are such records.
        limit: read at most this many (unique, seeded-shuffled) texts before NER (None: all).
        seed: seed of the shuffle, the empty-record sample and the train/test split.
        batch_size: texts per spaCy batch.
    """

    test_size: float = 0.3
    empty_share: float = 0.25
    limit: int | None = None
    seed: int = 0
    batch_size: int = 256

    def __post_init__(self) -> None:
        if not 0 < self.test_size < 1:
            raise SpulError(f"--test-size {self.test_size}: must be between 0 and 1 (exclusive)")
        if not 0 <= self.empty_share < 1:
            raise SpulError(f"--empty-share {self.empty_share}: must be in [0, 1)")
        if self.limit is not None and self.limit < 1:
            raise SpulError(f"--limit {self.limit}: must be >= 1")
        if self.batch_size < 1:
            raise SpulError(f"--batch-size {self.batch_size}: must be >= 1")


def label_entities(texts: list[str], emit: Event, batch_size: int = 256) -> tuple[list[dict[str, list[str]]], str]:
    """PERSON / ORG / GPE mentions per text (spaCy ``en_core_web_sm``, first ``NER_CHARS`` characters of each).

    Returns:
        ``(entities, model)``: per text ``{type: [names, first-mention order, no duplicates]}`` for every type in
        :data:`~spulctl.data.ner.ENTITY_TYPES`, and the spaCy model's ``name-version``.
    """
    from spulctl.data.split import NER_CHARS, _load_spacy

    nlp = _load_spacy()
    emit({"kind": "ner-start", "total": len(texts)})
    out = []
    for doc in nlp.pipe((t[:NER_CHARS] for t in texts), batch_size=batch_size):
        found: dict[str, list[str]] = {t: [] for t in ENTITY_TYPES}
        for ent in doc.ents:
            name = clean_entity(ent.text)
            if ent.label_ in found and name and name.lower() != "none" and name not in found[ent.label_]:
                found[ent.label_].append(name)
        out.append(found)
        emit({"kind": "ner-step", "n": 1})
    return out, f"{nlp.meta.get('lang', 'en')}_{nlp.meta.get('name', '?')}-{nlp.meta.get('version', '?')}"


def build_ner_splits(texts: list[str], cfg: NerSplitConfig, on_event: Event | None = None
                     ) -> tuple[dict[str, list[dict]], dict[str, Any]]:
    """De-duplicate, sample, label and split ``texts``.

    Returns:
        ``(splits, info)``: the four splits of ``{"text", "answer", "entities"}`` records and the ``split.json``
        content (task, config, pools, per-split record and mention counts per type).

    Raises:
        DataError: no text, or a split comes out empty (too few texts name a person / an ORG or GPE).
    """
    emit = on_event or (lambda _e: None)
    rng = random.Random(cfg.seed)
    unique = list(dict.fromkeys(t.strip() for t in texts if t and t.strip()))
    if not unique:
        raise DataError("data ner: no texts")
    rng.shuffle(unique)
    picked = unique[: cfg.limit] if cfg.limit else unique
    entities, model = label_entities(picked, emit, cfg.batch_size)
    records = [{"text": t, "answer": format_answer(e), "entities": e} for t, e in zip(picked, entities, strict=True)]
    pools: dict[str, list[dict]] = {"person": [], "org_gpe": [], "none": []}
    for r in records:
        e = r["entities"]
        pools["person" if e["PERSON"] else "org_gpe" if e["ORG"] or e["GPE"] else "none"].append(r)
    n_empty = round(cfg.empty_share / (1 - cfg.empty_share) * len(pools["org_gpe"]))
    kept_empty = pools["none"][:n_empty]  # already in seeded random order
    splits = {name: [] for name in SPLIT_NAMES}
    for side, pool in (("forget", pools["person"]), ("retain", pools["org_gpe"]), ("retain", kept_empty)):
        n_test = round(cfg.test_size * len(pool))
        splits[f"test_{side}"] += pool[:n_test]
        splits[f"train_{side}"] += pool[n_test:]
    for name in SPLIT_NAMES:
        rng.shuffle(splits[name])  # interleave the retain pools
    _check_nonempty(splits, len(records))
    info = {"task": TASK_NAME, "method": "ner", "entity_types": list(ENTITY_TYPES), "spacy_model": model,
            "config": asdict(cfg), "texts": {"given": len(texts), "unique": len(unique), "labelled": len(records)},
            "pools": {"person": len(pools["person"]), "org_gpe_only": len(pools["org_gpe"]),
                      "none": len(pools["none"]), "none_kept": len(kept_empty)},
            **split_counts(splits)}
    return splits, info


def split_counts(splits: dict[str, list[dict]]) -> dict[str, Any]:
    """Per split: record count, records naming each type, and mentions of each type."""
    return {"counts": {k: len(v) for k, v in splits.items()},
            "records_with": {k: {t: sum(bool(r["entities"][t]) for r in v) for t in ENTITY_TYPES}
                             for k, v in splits.items()},
            "mentions": {k: {t: sum(len(r["entities"][t]) for r in v) for t in ENTITY_TYPES}
                         for k, v in splits.items()}}


def _check_nonempty(splits: dict[str, list[dict]], n: int) -> None:
    for name in SPLIT_NAMES:
        if not splits[name]:
            what = "names a person" if name.endswith("forget") else "names an ORG or GPE without a person"
            raise DataError(f"data ner: {name} is empty (of {n} texts too few {what}; give more texts or raise "
                            "--limit)")


def write_ner_splits(splits: dict[str, list[dict]], info: dict[str, Any], out: Path, input_info: dict[str, Any],
                     overwrite: bool) -> None:
    """Write the four jsonl files and ``split.json`` into ``out`` (staged, then renamed: all or nothing)."""
    from spulctl import __version__
    from spulctl.io import staged_dir, write_json_atomic, write_jsonl_atomic

    with staged_dir(out, overwrite=overwrite) as stage:
        for name in SPLIT_NAMES:
            write_jsonl_atomic(stage / f"{name}.jsonl", splits[name])
        write_json_atomic(stage / "split.json", {"spulctl_version": __version__, "input": input_info, **info})


class _AnyLabel(dict):
    """A label map that accepts any value as is: only the texts are used, whatever label column a file has."""

    def __contains__(self, key: object) -> bool:
        return True

    def __missing__(self, key: str) -> str:
        return key


def run_ner_data(source: str | Path, out: Path, cfg: NerSplitConfig, *, text_field: str | None = None,
                 overwrite: bool = False, on_event: Event | None = None) -> dict[str, Any]:
    """``spulctl data ner``: read texts, build the splits, write them; returns the ``split.json`` content.

    Raises:
        OutputExistsError: ``out`` exists and ``overwrite`` is False (checked before any work).
    """
    from spulctl.data.readers import ReadOptions, read_records
    from spulctl.io import check_output_dir, sha256_file

    emit = on_event or (lambda _e: None)
    check_output_dir(out, overwrite)
    opts = ReadOptions(text_field=text_field, require_label=False, label_map=_AnyLabel())
    records = read_records(source, opts, lambda m: emit({"kind": "note", "message": m}))
    splits, info = build_ner_splits([r["text"] for r in records], cfg, emit)
    digest = sha256_file(source) if Path(source).is_file() else str(source)
    write_ner_splits(splits, info, out, {"source": str(source), "sha256": digest, "records": len(records)},
                     overwrite)
    return info
