"""Robustness probes: does forgetting survive simple rewrites of the forget queries?

Each probe rewrites the test_forget texts and is scored with the bundle and without it (the unprompted model
still knows the answers — the core SPUL threat model: the weights are unchanged, only the prompt forgets):

* ``upper`` / ``lower``: case changes,
* ``no-punct``: punctuation removed,
* ``first-name`` / ``last-name``: each mention of a forgotten entity (from ``split.json``) cut to one name.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable
from pathlib import Path

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def _entity_rewriter(entities: list[str], part: int) -> Callable[[str], str] | None:
    multi = [e for e in entities if len(e.split()) > 1]
    if not multi:
        return None
    pattern = re.compile(r"(?<!\w)(" + "|".join(re.escape(e) for e in multi) + r")(?!\w)", re.IGNORECASE)
    return lambda t: pattern.sub(lambda m: m.group(0).split()[part], t)


def rewrites(splits: Path) -> dict[str, Callable[[str], str]]:
    """The probes applicable to this splits directory (entity probes need an entity split)."""
    probes: dict[str, Callable[[str], str]] = {
        "upper": str.upper, "lower": str.lower,
        "no-punct": lambda t: re.sub(r"\s+", " ", _PUNCT.sub(" ", t)).strip(),
    }
    info = splits / "split.json"
    if info.is_file():
        entities = list(json.loads(info.read_text()).get("entities", {}))
        for name, part in (("first-name", 0), ("last-name", -1)):
            fn = _entity_rewriter(entities, part)
            if fn is not None:
                probes[name] = fn
    return probes


def probe_records(records: list[dict], fn: Callable[[str], str]) -> list[dict]:
    """Rewritten copies of the records that the rewrite actually changed (unchanged ones say nothing)."""
    out = []
    for r in records:
        text = fn(r["text"])
        if text != r["text"] and text.strip():
            out.append({**r, "text": text})
    return out
