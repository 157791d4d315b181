"""Robustness probes: does forgetting survive simple rewrites of the forget queries?

Each probe rewrites the test_forget texts and is scored with the bundle and without it (the unprompted model
still knows the answers — the core SPUL threat model: the weights are unchanged, only the prompt forgets):

* ``upper`` / ``lower``: case changes,
* ``no-punct``: punctuation removed,
* ``first-name`` / ``last-name``: each mention of a forgotten entity (from ``split.json``, else the names the
  evaluated bundles were trained to forget) cut to one name.

The rewrites themselves live in :mod:`spulctl.data.rewrite`, where training also uses them as augmentations.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from spulctl.data.rewrite import rewritten, variant_rewriters
from spulctl.data.split import forget_entities


def rewrites(splits: Path, bundles: list[Path] | None = None) -> dict[str, Callable[[str], str]]:
    """The probes applicable to this splits directory. Name probes need the names: ``split.json``'s, else those the
    ``bundles`` were trained to forget (:func:`bundle_names`)."""
    return variant_rewriters(forget_entities((), splits, None) or bundle_names(bundles or []))


def bundle_names(bundles: list[Path]) -> list[str]:
    """The names the bundles' runs forgot (``bundle.json`` → ``data.plan.entities``: given, from ``split.json`` or
    found by NER in the forget file), in first-seen order; none for bundles without them."""
    import json

    from spulctl.bundle import META_FILE

    names: list[str] = []
    for folder in bundles:
        meta = Path(folder) / META_FILE
        if meta.is_file():
            plan = (json.loads(meta.read_text()).get("data") or {}).get("plan") or {}
            names += [n for n in plan.get("entities") or [] if n not in names]
    return names


def probe_records(records: list[dict], fn: Callable[[str], str]) -> list[dict]:
    """Rewritten copies of the records that the rewrite actually changed (unchanged ones say nothing)."""
    return rewritten(records, fn)
