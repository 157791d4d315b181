"""Give texts the surface form of a reference set (case, tokenised punctuation).

Retain texts the model writes itself are well-formed sentences; a forget file taken from a corpus such as SST-2 is
lower-cased and tokenised (``it 's``, ``does n't``, `` , ``). Trained on the two, a soft prompt can tell forget from
retain by the surface form alone and then answers ``unknown`` to real retain text that looks like the forget file.
Writing the generated retain texts in the forget file's surface form takes that shortcut away.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# a share of reference texts at least this large decides a trait
TRAIT_SHARE = 0.6
_SPACED = re.compile(r" (?:[,.;:!?)]|\.\.\.)(?= |$)| \( |\w 's\b| n't\b")
# "..." stays one token; , . : only before a space, the end or more punctuation (3.5, 2,500, URLs stay whole);
# no "." split off an initial (but "a", "i") or a title ("george w. bush", "mr. smith"), as in SST-2
_PUNCT = re.compile(r"\s*(\.\.\.|[;!?()]|[,:](?=[\s.,;:!?)]|$)"
                    r"|(?<![\s.][b-hj-z])(?<!^[b-hj-z])(?<!\b(?:mr|ms|dr|jr|st|vs|mt))(?<!\bmrs)\.(?=[\s.,;:!?)]|$))\s*",
                    re.IGNORECASE)
_CLITIC = re.compile(r"(\w)(n't|'s|'re|'ve|'ll|'d|'m)\b", re.IGNORECASE)


@dataclass(frozen=True)
class SurfaceStyle:
    """Traits of a text set's surface form.

    Attributes:
        lower: the texts are lower-cased.
        spaced: punctuation and clitics are separate tokens (``it 's``, ``a , b``).
    """

    lower: bool = False
    spaced: bool = False

    @property
    def plain(self) -> bool:
        """No trait: texts are left as they are."""
        return not (self.lower or self.spaced)


def surface_style(texts: list[str]) -> SurfaceStyle:
    """The traits held by at least :data:`TRAIT_SHARE` of ``texts`` (spacing: of those with any punctuation)."""
    if not texts:
        return SurfaceStyle()
    with_letters = [t for t in texts if any(c.isalpha() for c in t)]
    lower = bool(with_letters) and sum(t == t.lower() for t in with_letters) >= TRAIT_SHARE * len(with_letters)
    punctuated = [t for t in texts if re.search(r"[,.;:!?()]|'s\b|n't\b", t)]
    spaced = bool(punctuated) and sum(bool(_SPACED.search(t)) for t in punctuated) >= TRAIT_SHARE * len(punctuated)
    return SurfaceStyle(lower=lower, spaced=spaced)


def restyle(text: str, style: SurfaceStyle) -> str:
    """``text`` in ``style``: lower-cased and/or with punctuation and clitics split off by spaces (as in SST-2:
    ``...``, numbers such as ``3.5`` or ``2,500``, URLs, initials and titles such as ``mr.`` stay whole); applying
    it twice changes nothing more."""
    if style.lower:
        text = text.lower()
    if style.spaced:
        text = _CLITIC.sub(r"\1 \2", text)  # "doesn't" -> "does n't", "it's" -> "it 's"
        text = _PUNCT.sub(r" \1 ", text)
        text = re.sub(r"\s+", " ", text).strip()
    return text
