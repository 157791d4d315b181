"""Robustness probes: does forgetting survive simple rewrites of the forget queries?

Each probe rewrites the test_forget texts and is scored with the bundle and without it (the unprompted model
still knows the answers — the core SPUL threat model: the weights are unchanged, only the prompt forgets):

* ``upper`` / ``lower``: case changes,
* ``no-punct``: punctuation removed,
* ``first-name`` / ``last-name``: each mention of a forgotten entity (from ``split.json``) cut to one name.

The rewrites themselves live in :mod:`spulctl.data.rewrite`, where training also uses them as augmentations.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from spulctl.data.rewrite import rewritten, variant_rewriters
from spulctl.data.split import forget_entities


def rewrites(splits: Path) -> dict[str, Callable[[str], str]]:
    """The probes applicable to this splits directory (entity probes need an entity split)."""
    return variant_rewriters(forget_entities((), splits, None))


def probe_records(records: list[dict], fn: Callable[[str], str]) -> list[dict]:
    """Rewritten copies of the records that the rewrite actually changed (unchanged ones say nothing)."""
    return rewritten(records, fn)
