"""Rewrites of forget texts: robustness variants (to forget too) and counterfactual name swaps (to keep).

* Variants — upper/lower case, punctuation removed, a forgotten person's full name cut to the first or last name.
  Used as training augmentations (so the probes of :mod:`spulctl.evaluate.robustness` stay forgotten) and as the
  forget side of the selection slice.
* Counterfactuals — the same text with every forgotten name replaced by another person's name. Same review, same
  sentiment, someone else: the prompt must keep answering these, which teaches it "these people", not "any person".
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable, Sequence

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")

# Replacement names for counterfactuals: common given names and surnames combined at random. Written for this
# project; none is meant to point at a real person.
GIVEN_NAMES = ("anna", "ben", "carla", "dev", "elena", "farid", "greta", "hugo", "ines", "jonas", "kira", "liam",
               "maya", "nils", "olga", "pavel", "rosa", "sami", "tara", "victor", "wanda", "yusuf", "zoe", "amir",
               "bea", "colin", "dora", "emil", "fiona", "gil")
SURNAMES = ("abbott", "brandt", "castillo", "dunmore", "eklund", "farrow", "galvin", "hallam", "iversen", "jarvis",
            "kowal", "lindqvist", "marsh", "novak", "okafor", "pryce", "quint", "rourke", "sandoval", "thorne",
            "ulrich", "vance", "whitlock", "yardley", "zeller", "ashby", "benning", "corbett", "delaney", "ellery")


def no_punct(text: str) -> str:
    """Punctuation replaced by spaces, runs of spaces collapsed."""
    return re.sub(r"\s+", " ", _PUNCT.sub(" ", text)).strip()


def entity_pattern(entities: list[str]) -> re.Pattern[str]:
    """Word-boundary, case-insensitive regex matching any of ``entities`` (longest first)."""
    alts = sorted({re.escape(e.strip()) for e in entities if e.strip()}, key=len, reverse=True)
    return re.compile(r"(?<!\w)(?:" + "|".join(alts) + r")(?!\w)", re.IGNORECASE)


def name_pattern(entities: list[str]) -> re.Pattern[str] | None:
    """:func:`entity_pattern` for the non-empty ``entities``, or None when there are none."""
    return entity_pattern(entities) if any(e.strip() for e in entities) else None


def name_part_rewriter(entities: list[str], part: int) -> Callable[[str], str] | None:
    """Cut each mention of a multi-word entity to one word (``part`` 0 = first, -1 = last); None if none has two."""
    pattern = name_pattern([e for e in entities if len(e.split()) > 1])
    if pattern is None:
        return None
    return lambda t: pattern.sub(lambda m: m.group(0).split()[part], t)


# A surname alone counts as the person when it is not much more common alone than in the full name: "soderbergh"
# (16 records alone, 23 with "steven") does, "brown" of "jim brown" (a colour, far more often alone) does not.
SURNAME_RATIO = 2.0


def surname_aliases(entities: list[str], texts: list[str], ratio: float = SURNAME_RATIO) -> dict[str, str]:
    """Surnames that refer to a forgotten person on their own, with the full name each stands for.

    A multi-word entity's last word becomes an alias when the texts mention it outside the full name in at most
    ``ratio`` times as many records as the full name itself (cased or lower-cased text alike, where NER cannot
    tell a lower-case surname from a word). Skipped: surnames under 3 characters, surnames that already are an
    entity, and surnames shared by two entities.

    Returns:
        ``{surname: full name}``, lower-case, in entity order.
    """
    names = [e.strip().lower() for e in entities if e.strip()]
    lasts = [n.split()[-1] for n in names if len(n.split()) > 1]
    out: dict[str, str] = {}
    for full in names:
        if len(full.split()) < 2:
            continue
        last = full.split()[-1]
        if len(last) < 3 or last in names or lasts.count(last) > 1:
            continue
        full_re, last_re = entity_pattern([full]), entity_pattern([last])
        n_full = n_alone = 0
        for t in texts:
            if full_re.search(t):
                n_full += 1
                t = full_re.sub(" ", t)
            if last_re.search(t):
                n_alone += 1
        if n_full and n_alone <= ratio * n_full:
            out[last] = full
    return out


def variant_rewriters(entities: list[str]) -> dict[str, Callable[[str], str]]:
    """The robustness rewrites that apply: case, punctuation, and first/last name when an entity has two words."""
    out: dict[str, Callable[[str], str]] = {"upper": str.upper, "lower": str.lower, "no-punct": no_punct}
    for name, part in (("first-name", 0), ("last-name", -1)):
        fn = name_part_rewriter(entities, part)
        if fn is not None:
            out[name] = fn
    return out


def rewritten(records: list[dict], fn: Callable[[str], str]) -> list[dict]:
    """Copies of the records whose text ``fn`` changes (unchanged ones say nothing new)."""
    out = []
    for r in records:
        text = fn(r["text"])
        if text != r["text"] and text.strip():
            out.append({**r, "text": text})
    return out


NAME_PARTS = ("first-name", "last-name")


def forget_variants(records: list[dict], entities: list[str], seed: int, per_record: int = 1) -> list[dict]:
    """Rewritten copies of each record: every name-part rewrite that changes it (a full name cut to the first or
    the last name, the hardest probes), plus up to ``per_record`` of the other rewrites drawn at random (seeded).

    Returns:
        New records (``{"text", "label", "rewrite"}`` + the record's other fields), in record order.
    """
    fns = variant_rewriters(entities)
    rng = random.Random(seed)
    out = []
    for r in records:
        others = [n for n in fns if n not in NAME_PARTS]
        rng.shuffle(others)
        made: set[str] = {r["text"]}
        extra = 0
        for name in [n for n in NAME_PARTS if n in fns] + others:
            if name not in NAME_PARTS and extra >= per_record:
                break
            text = fns[name](r["text"])
            if text not in made and text.strip():
                made.add(text)
                extra += name not in NAME_PARTS
                out.append({**r, "text": text, "rewrite": name})
    return out


def _cased_like(name: str, original: str) -> str:
    if original.isupper():
        return name.upper()
    if original[:1].isupper():
        return " ".join(w.capitalize() for w in name.split())
    return name


def counterfactuals(records: list[dict], entities: list[str], seed: int, real_names: Sequence[str] = (),
                    real_share: float = 0.5) -> list[dict]:
    """Each record that names an entity, with every mention replaced by another name.

    A one-word mention gets a one-word name, a longer one a given name + surname; the case of the mention is kept.
    Names in ``entities`` are never used as replacements. Records that name no entity are skipped. With
    ``real_names`` (other people named in the retain data, :mod:`spulctl.data.hard_negatives`), a ``real_share``
    of the swaps use one of them (its last word for a one-word mention) instead of a made-up name: the forgotten
    people are real, so the names that must keep working are real ones too.

    Returns:
        New records with ``counterfactual_of`` naming the replaced mentions.
    """
    pattern = name_pattern(entities)
    if pattern is None:
        return []
    taken = {w for e in entities for w in e.lower().split()}
    given = [n for n in GIVEN_NAMES if n not in taken]
    family = [n for n in SURNAMES if n not in taken]
    real_full = [n for n in real_names if " " in n and not taken & set(n.split())]
    real_one = sorted({n.split()[-1] for n in real_names if not taken & set(n.split())})
    rng = random.Random(seed)
    out = []
    for r in records:
        swaps: dict[str, str] = {}

        def swap(m: re.Match[str], swaps: dict[str, str] = swaps) -> str:
            key = m.group(0).lower()
            if key not in swaps:
                one = len(key.split()) == 1
                real = real_one if one else real_full
                if real and rng.random() < real_share:
                    swaps[key] = rng.choice(real)
                else:
                    swaps[key] = rng.choice(family) if one else f"{rng.choice(given)} {rng.choice(family)}"
            return _cased_like(swaps[key], m.group(0))

        text = pattern.sub(swap, r["text"])
        if swaps:
            out.append({**r, "text": text, "counterfactual_of": sorted(swaps)})
    return out


def _stop_words() -> frozenset[str]:
    """English function words ("the", "will"), which a name may contain but which mark nobody on their own:
    spaCy's list when spaCy is installed, else none."""
    try:
        from spacy.lang.en.stop_words import STOP_WORDS
    except ImportError:
        return frozenset()
    return frozenset(STOP_WORDS)


_CLAUSE = re.compile(r"\s*(?:[,;:!?()]|\.{1,3}|--|`{2}|'{2})\s*")


def name_free_pieces(texts: list[str], entities: list[str], min_words: int = 1, max_words: int = 40) -> list[str]:
    """The parts of ``texts`` that name no forgotten person: each text cut at every mention, and each part at its
    clause punctuation, the whole part kept beside its clauses (SST-2 style phrases: "strange film", "a rehash
    of every gangster movie"). A piece with any word of any name in it (a surname alone, a first name) is dropped;
    function words inside names ("the" of "the rock") do not count as names.

    Returns:
        Distinct pieces of ``min_words``..``max_words`` words, first occurrence order, none equal to an input text.
    """
    pattern = name_pattern(entities)
    if pattern is None:
        return []
    words = {w for e in entities for w in re.findall(r"\w+", e.lower()) if len(w) >= 3} - _stop_words()
    inputs, out, seen = set(texts), [], set()
    for text in texts:
        for part in pattern.split(text):
            for piece in [part, *_CLAUSE.split(part)]:
                piece = re.sub(r"^'s\b", "", piece.strip()).strip(" \t\".,;:-(")  # a possessive's remnant goes
                n = len(piece.split())
                key = piece.lower()
                if not (min_words <= n <= max_words) or key in seen or piece in inputs:
                    continue
                if words & set(re.findall(r"\w+", key)):
                    continue
                seen.add(key)
                out.append(piece)
    return out
