"""Hard negatives: retain records that name *other* people than the ones to forget.

A prompt trained to answer ``unknown`` for a list of people tends to learn "a person is named" instead of "one of
these people is named": its misses on retain data are, for the most part, reviews that name someone else (an actor,
a director). Made-up names in counterfactuals do not cover this, because the forgotten people and the people in the
retain data are both real and well known. This module finds retain records that name real people outside the forget
list (spaCy PERSON mentions), so the plan can give them a fixed share of the retain rows, and collects those names as
replacements for counterfactuals.

The scan reads the retain records in a seeded order and stops once it has ``want`` hard records or has read
``max_scan`` records, so its cost is bounded (about a millisecond per short record on one CPU core).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from spulctl.data.split import NER_CHARS, _load_spacy, _norm_entity
from spulctl.errors import MissingDependencyError

# texts -> PERSON mentions of each text (the default reads them with spaCy's en_core_web_sm)
PeopleFinder = Callable[[list[str]], list[list[str]]]
_NAME = re.compile(r"^[a-z][a-z.\-']*( [a-z][a-z.\-']*){0,2}$")
SCAN_CHUNK = 512


@dataclass
class HardNegatives:
    """The result of a scan.

    Attributes:
        indices: positions in the retain list of records naming someone outside the forget list (scan order).
        names: those other people's names (lower case, most frequent first), for counterfactual swaps.
        scanned: retain records read.
    """

    indices: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    scanned: int = 0


def spacy_people() -> PeopleFinder:
    """A PERSON finder over spaCy ``en_core_web_sm`` (the model ``split --by entity`` uses), loaded once.

    Raises:
        MissingDependencyError: spaCy or its English model is missing.
    """
    nlp = _load_spacy()

    def find(texts: list[str]) -> list[list[str]]:
        return [[e.text for e in doc.ents if e.label_ == "PERSON"]
                for doc in nlp.pipe([t[:NER_CHARS] for t in texts], batch_size=256)]

    return find


def clean_name(mention: str) -> str | None:
    """A mention as a usable name (``split``'s entity normalisation: lower case, possessive and stray punctuation
    stripped), or None.

    None when the mention is not one to three plain words of at least three letters in all.
    """
    text = _norm_entity(mention)
    return text if len(text) > 2 and _NAME.match(text) else None


def find_hard_negatives(retain: list[dict], entities: list[str], seed: int, want: int, max_scan: int = 50_000,
                        people: PeopleFinder | None = None) -> HardNegatives:
    """Scan ``retain`` for records that name a person who shares no word with any forgotten name.

    Args:
        retain: labelled retain records (``text``).
        entities: the forgotten names; a mention sharing a word with one of them is not "someone else".
        seed: the scan order.
        want: stop after this many hard records.
        max_scan: read at most this many records.
        people: the PERSON finder (default: :func:`spacy_people`'s).

    Raises:
        MissingDependencyError: spaCy or its English model is missing (from the default finder).
    """
    finder = people or spacy_people()
    taken = {w for e in entities for w in e.lower().split()}
    order = list(range(len(retain)))
    random.Random(seed).shuffle(order)
    order = order[:max_scan]
    out, counts = HardNegatives(), {}
    for start in range(0, len(order), SCAN_CHUNK):
        if len(out.indices) >= want:
            break
        chunk = order[start:start + SCAN_CHUNK]
        for i, mentions in zip(chunk, finder([retain[i]["text"] for i in chunk]), strict=True):
            names = [n for m in mentions if (n := clean_name(m)) and not taken & set(n.split())]
            if names and len(out.indices) < want:
                out.indices.append(i)
                for n in names:
                    counts[n] = counts.get(n, 0) + 1
        out.scanned += len(chunk)
    out.names = sorted(counts, key=lambda n: (-counts[n], n))
    return out


def scan_or_note(retain: list[dict], entities: list[str], seed: int, want: int,
                 note: Callable[[str], None], people: PeopleFinder | None = None) -> HardNegatives:
    """:func:`find_hard_negatives`, or an empty result with a note when spaCy is missing."""
    try:
        return find_hard_negatives(retain, entities, seed, want, people=people)
    except MissingDependencyError:
        note("no hard negatives (retain records naming other people): they are found with spaCy and an English "
             "model: pip install 'spulctl[split]'")
        return HardNegatives()
