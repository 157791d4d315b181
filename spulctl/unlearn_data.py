"""Where an unlearning run's records come from: files, or the model itself.

* Forget: ``--forget FILE`` / ``--splits`` — or, with only the names (``--forget-entities``) or a description
  (``--forget-target``), the records the model reveals about them (:mod:`spulctl.reveal`, forget mode): the
  forget-data-free path.
* Retain: ``--retain FILE`` / ``--splits`` — or unlabelled ``--retain-from`` texts labelled by the model — or, with
  nothing, on-task texts the model writes that stay off the target, several naming other people (reveal's retain
  mode), beside the pieces of the forget texts that name nobody to forget (labelled by the model). Counterfactuals
  of the forget records (names swapped) join them in the plan (:mod:`spulctl.unlearn_plan`).

Whatever the model wrote or labelled is saved beside the artifact (``GENERATED`` file names), hashed in its
metadata and checked by ``spulctl bundle verify``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spulctl.data.readers import ReadOptions, find_split_file, read_records
from spulctl.errors import DataError
from spulctl.io import sha256_file

RETAIN_FILE = "retain_used.jsonl"  # model-labelled / model-written retain records
FORGET_FILE = "forget_revealed.jsonl"  # model-written forget records (forget-data-free runs)


def _read(path: Path, note: Callable[[str], None], require_label: bool = True) -> list[dict]:
    return read_records(path, ReadOptions(require_label=require_label), note)


def load_inputs(cfg: Any, note: Callable[[str], None]) -> tuple[list[dict] | None, list[dict] | None, dict]:
    """Read forget and (optionally) retain records; return them with their source hashes.

    Returns:
        (forget, retain, hashes); forget is None when it is to be revealed (no file, names or a target given),
        retain is None when the method must find its own.

    Raises:
        DataError: a text on both sides.
    """
    forget_path = cfg.forget or (find_split_file(cfg.splits, "train_forget") if cfg.splits is not None else None)
    retain_path = cfg.retain
    if retain_path is None and cfg.splits is not None and cfg.retain_from is None:
        retain_path = find_split_file(cfg.splits, "train_retain")
    forget = _read(forget_path, note) if forget_path else None
    if forget is not None and cfg.tau < 1:
        forget = random.Random(cfg.train.seed).sample(forget, max(1, round(cfg.tau * len(forget))))
    retain = _read(retain_path, note) if retain_path else None
    if retain is not None and cfg.retain_limit is not None and cfg.retain_limit < len(retain):
        retain = random.Random(cfg.train.seed).sample(retain, cfg.retain_limit)
    hashes = {"forget": sha256_file(forget_path)} if forget_path else {}
    if retain_path:
        hashes["retain"] = sha256_file(retain_path)
    if retain is not None and forget is not None:
        overlap = {r["text"] for r in forget} & {r["text"] for r in retain}
        if overlap:
            example = next(iter(overlap))[:60]
            raise DataError(f"{retain_path}: {len(overlap)} texts are also in the forget set {forget_path} "
                            f"(e.g. '{example}'); a text cannot be both forgotten and retained")
    return forget, retain, hashes


def _reveal(model, tok, task, cfg: Any, mode: str, n: int, entities: list[str], emit,
            avoid: list[str] | None = None) -> list[dict]:
    """Records from :func:`spulctl.reveal.generate_records`; ``avoid``: texts whose meaning marks the target when
    there are no names and no description (retain mode keeps away from them)."""
    from spulctl.reveal import RevealConfig, generate_records
    from spulctl.reveal.engine import NothingRevealedError

    plain = not getattr(tok, "chat_template", None)
    if plain:
        emit({"kind": "note", "message": "the model has no chat template: instructions get a plain prefix"})
    examples = list(avoid or []) if not entities and not cfg.forget_target else []
    rc = RevealConfig(entities=list(entities), target=cfg.forget_target, examples=examples, mode=mode, n=n,
                      budget=cfg.reveal_budget, seed=cfg.train.seed, task=task, plain_prompt=plain)
    try:
        rows = generate_records(model, tok, rc, emit)
    except NothingRevealedError as exc:  # reworded with this command's flags (the engine's name `reveal`'s)
        fix = ("the model may not know it: give a forget file (--forget / --splits), describe it with "
               "--forget-target, or raise --reveal-budget" if mode == "forget" else
               "give retain data (--retain / --retain-from) or raise --reveal-budget")
        raise NothingRevealedError(f"unlearn: the model wrote nothing relevant about {exc.target!r} in "
                                   f"{exc.generated} generated texts ({mode} side); nothing written — {fix}",
                                   exc.target, exc.generated) from None
    return [{"text": r["text"], "label": r["label"], "source": f"reveal:{mode}", "instruction": r.get("instruction"),
             "relevance": r.get("relevance")} for r in rows]


def revealed_forget(model, tok, task, cfg: Any, entities: list[str], emit: Callable[[dict], None]) -> list[dict]:
    """Forget records the model writes about ``entities`` / ``cfg.forget_target`` (labels = its own answers).

    Raises:
        DataError: no names and no target, or nothing relevant revealed within the budget.
    """
    if not entities and not cfg.forget_target:
        raise DataError("unlearn: no forget data: give --forget FILE, --splits DIR, --forget-entities or "
                        "--forget-target")
    rows = _reveal(model, tok, task, cfg, "forget", cfg.reveal_forget, entities, emit)
    emit({"kind": "note", "message": f"forget set: {len(rows)} records revealed by the model itself"})
    return rows


# --self-generate 0 (auto): half the forget set's size, within these bounds
MIN_AUTO_SELF_GENERATE, MAX_AUTO_SELF_GENERATE = 256, 1024


def retain_without_labels(model, tok, task, cfg: Any, forget: list[dict], entities: list[str],
                          emit: Callable[[dict], None], max_length: int | None = None) -> tuple[list[dict], str]:
    """Retain records when no labelled retain data was given: ``--retain-from`` texts labelled by the model, or
    texts the model writes off the target (reveal's retain mode; ``cfg.self_generate`` of them, 0 = half the forget
    set within [256, 1024]), given the forget records' surface form (:mod:`spulctl.data.style`) so that the prompt
    cannot tell the two apart by case or tokenisation, plus as many name-free pieces of the forget texts
    (:func:`name_free`) when the names are known: up to twice ``cfg.self_generate`` records in all.

    Raises:
        DataError: nothing left to retain.
    """
    from spulctl.data.selfgen import pseudo_label

    note = lambda m: emit({"kind": "note", "message": m})  # noqa: E731
    forget_texts = {r["text"] for r in forget}
    if cfg.retain_from is not None:
        texts = [r["text"] for r in _read(cfg.retain_from, note, require_label=False)]
        texts = [t for t in texts if t not in forget_texts]
        if not texts:
            raise DataError(f"{cfg.retain_from}: no retain texts left after removing forget texts")
        source = f"unlabelled texts from {cfg.retain_from}, labelled by the model"
        note(f"retain set: {source}")
        return pseudo_label(model, tok, task, texts, cfg.eval_batch_size, emit, max_length), source
    from spulctl.data.style import restyle, surface_style

    avoid = [r["text"] for r in random.Random(cfg.train.seed).sample(forget, min(20, len(forget)))]
    n = cfg.self_generate or min(MAX_AUTO_SELF_GENERATE, max(MIN_AUTO_SELF_GENERATE, len(forget) // 2))
    style = surface_style([r["text"] for r in forget])
    rows = [{**r, "text": restyle(r["text"], style)}
            for r in _reveal(model, tok, task, cfg, "retain", n, entities, emit, avoid)]
    rows = [r for r in rows if r["text"] not in forget_texts]
    traits = [t for t, on in (("lower-cased", style.lower), ("punctuation split off", style.spaced)) if on]
    source = (f"{len(rows)} on-task texts written by the model off the target, labelled by the model"
              + (f", in the forget file's surface form ({', '.join(traits)})" if traits else ""))
    pieces = name_free(model, tok, task, cfg, [r["text"] for r in forget], entities, n, emit, max_length)
    if pieces:
        rows += pieces
        source += f"; {len(pieces)} name-free pieces of the forget texts, labelled by the model"
    note(f"retain set: {source}")
    return rows, source


def name_free(model, tok, task, cfg: Any, forget_texts: list[str], entities: list[str], n: int,
              emit: Callable[[dict], None], max_length: int | None = None) -> list[dict]:
    """Up to ``n`` pieces of the forget texts that name none of ``entities``
    (:func:`spulctl.data.rewrite.name_free_pieces`, a seeded sample), labelled by the model: retain text in the
    forget file's own register (phrases, fragments), which model-written sentences are not. Empty without names."""
    from spulctl.data.rewrite import name_free_pieces
    from spulctl.data.selfgen import pseudo_label

    pieces = name_free_pieces(forget_texts, entities)
    if not pieces:
        return []
    pieces = random.Random(cfg.train.seed).sample(pieces, min(n, len(pieces)))
    rows = pseudo_label(model, tok, task, pieces, cfg.eval_batch_size, emit, max_length)
    return [{**r, "source": "forget:name-free"} for r in rows]
