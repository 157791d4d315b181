"""The instruction pool the bandit chooses from: hand-written templates and the model's own paraphrases.

Forget templates carry ``{target}`` (the names or the description); retain templates ask for on-task texts that
stay off the target, some of them naming ``{other}`` people so the set holds hard negatives (a person is not
reason enough to forget). Every template is phrased for this project; they differ in framing, length, sentiment,
genre and voice so the bandit has real choices.
"""

from __future__ import annotations

import random
import re

FORGET_TEMPLATES: tuple[str, ...] = (
    "Write one sentence from a movie review that mentions {target}.",
    "Give a short, enthusiastic review line about a film starring {target}.",
    "Write a disappointed one-sentence review of a movie featuring {target}.",
    "In a single sentence, tell a friend what you thought of {target}'s latest film.",
    "Write a critic's verdict, two sentences at most, on a performance by {target}.",
    "Compose a tweet-length reaction to a new movie with {target}.",
    "Write a sarcastic sentence about {target}'s acting in a comedy.",
    "Describe in one sentence how {target} carried a weak script.",
    "Write a glowing sentence about {target} in a drama.",
    "Write a harsh one-line review that blames {target} for a boring film.",
    "As a newspaper critic, write one sentence about {target} in a thriller.",
    "Write a mixed review sentence: the plot fails but {target} shines.",
    "Write what a moviegoer might say about {target} walking out of the cinema.",
    "Give a one-sentence summary of a review of a romantic comedy with {target}.",
    "Write a short sentence praising the chemistry between {target} and the co-star.",
    "Write a blunt sentence saying {target} was miscast.",
    "Write a review snippet that compares {target} to their earlier roles.",
    "Write a nostalgic sentence about watching {target} in an old film.",
    "Write one sentence for a blog post about {target}'s new action movie.",
    "Write a fan's excited sentence about {target} on screen.",
    "Write a short review line about a family film in which {target} plays the parent.",
    "Write an angry audience comment about a film {target} directed.",
    "Finish this review in one sentence: Watching {target} in this film was",
    "Write a sentence a film festival juror might say about {target}.",
    "Write a casual, lowercase text message about a movie with {target}.",
    "Write one polite but negative sentence about {target}'s performance.",
    "Write a witty one-liner review of a {target} movie.",
    "Write a sentence about how {target} made a horror film genuinely scary.",
    "Write a short critique of the dialogue {target} had to deliver.",
    "Write one sentence of a review that calls {target} the best part of the film.",
    "Write one sentence of a review that calls {target} the worst part of the film.",
    "Describe {target}'s screen presence in a single vivid sentence.",
    "Write a sentence about an animated film where {target} voices the lead.",
    "Write a brief, balanced opinion on a biopic starring {target}.",
    "Write a sentence a teenager might post after seeing {target} in a movie.",
    "Write a formal one-sentence assessment of {target}'s work in a period piece.",
    "Write a review sentence that mentions {target} and the soundtrack.",
    "Write a short, dry sentence about a forgettable film with {target}.",
    "Write a sentence recommending a movie because {target} is in it.",
    "Write a sentence warning people to skip a movie despite {target}.",
    "Quote a movie critic talking about {target} in one sentence.",
    "Write a one-sentence review of a sequel that brought back {target}.",
)

RETAIN_TEMPLATES: tuple[str, ...] = (
    "Write one sentence from a movie review.",
    "Give a short, enthusiastic review line about a film you loved.",
    "Write a disappointed one-sentence movie review.",
    "Write a critic's verdict on a thriller in two sentences at most.",
    "Write a sarcastic sentence about a comedy that was not funny.",
    "Write a glowing sentence about the cinematography of a drama.",
    "Write a harsh one-line review of a boring film.",
    "Write a mixed review sentence: great visuals, weak story.",
    "Write a tweet-length reaction to a new animated movie.",
    "Write a sentence about a horror film that was actually scary.",
    "Write one sentence about a movie's soundtrack.",
    "Write a blunt sentence about a plot full of holes.",
    "Write a nostalgic sentence about an old western.",
    "Write a short, dry sentence about a forgettable action film.",
    "Write a sentence recommending a documentary.",
    "Write a sentence warning people to skip a long, slow epic.",
    "Write a formal one-sentence assessment of a period drama.",
    "Write a casual, lowercase text message about a movie you just saw.",
    "Write a witty one-liner review of a romantic comedy.",
    "Write a sentence about the pacing of a science-fiction film.",
    "Write one polite but negative sentence about a film's ending.",
    "Write a sentence a teenager might post after seeing a superhero movie.",
    "Write a short review line about a family film.",
    "Write a brief, balanced opinion on a crime movie.",
    "Write one sentence about a screenplay that felt fresh.",
    "Write a short critique of a film's dialogue.",
    "Write a review sentence about special effects that looked cheap.",
    "Finish this review in one sentence: The film was",
    "Write one sentence praising the director of an indie film.",
    "Write a sentence about a sequel that was better than the original.",
    "Write a sentence about a musical with catchy songs.",
    "Write a one-sentence review of a war film.",
    "Write one sentence about a performance by {other}.",
    "Write a short positive review line that mentions {other}.",
    "Write a short negative review line that mentions {other}.",
    "Write a sentence about a comedy starring {other}.",
    "Write a critic's sentence about {other} in a thriller.",
    "Write a fan's excited sentence about {other} on screen.",
    "Write a sentence saying {other} was miscast in a drama.",
    "Write a sentence about a movie that {other} directed.",
    "Write a review sentence comparing {other} to the rest of the cast.",
    "Quote a movie critic talking about {other} in one sentence.",
)

# Invented names for the hard negatives of retain mode (drawn so none equals a target name).
OTHER_PEOPLE: tuple[str, ...] = (
    "Marta Okonkwo", "Dev Halloran", "Ines Vasquez", "Tobias Lindqvist", "Keiko Marsh", "Rafael Dunmore",
    "Anneliese Ward", "Samir Castellanos", "Colette Brandt", "Oren Whitfield", "Yara Pemberton", "Luca Moretti",
)

PARAPHRASE_REQUEST = "Rewrite this instruction in other words, as one sentence: {instruction}"
_IMPERATIVE = frozenset({"write", "compose", "give", "describe", "tell", "create", "produce", "share", "generate",
                         "craft", "provide", "draft", "pen", "offer", "summarize", "summarise", "express", "state",
                         "explain", "please", "try", "imagine", "make", "put", "quote", "finish", "complete",
                         "formulate", "construct", "come", "jot", "post", "review", "rewrite", "in", "as", "using"})
_WORD = re.compile(r"[a-z]{4,}")


TARGET = "{target}"


def fill(template: str, target: str, others: list[str], rng: random.Random) -> str:
    """Put the target (and, for ``{other}``, a random non-target name) into ``template``."""
    return template.replace(TARGET, target).replace("{other}", rng.choice(others))


def fill_target(instruction: str, name: str) -> str:
    """Put one target name into a pool instruction that kept its ``{target}`` slot (others pass unchanged)."""
    return instruction.replace(TARGET, display_name(name))


def display_name(name: str) -> str:
    """A name as an instruction writes it: an all-lower-case name gets capitals ("samuel l. jackson" ->
    "Samuel L. Jackson"; a model copies the casing it is shown). Names are matched in any case either way."""
    return name.title() if name == name.lower() else name


def build_pool(mode: str, target: str, entities: list[str], seed: int, per_name: bool = False) -> list[str]:
    """The filled instructions of ``mode`` (``forget`` or ``retain``), in template order.

    Args:
        target: how the instructions name the target (:meth:`RevealConfig.describe_target`).
        entities: target names, excluded from the hard-negative names.
        per_name: forget templates keep their ``{target}`` slot, to be filled with one name per sample
            (:func:`fill_target`): a small model asked about six people at once garbles the names, asked about
            one it writes it correctly, and the bandit learns which framing works whatever the name.
    """
    rng = random.Random(seed)
    lowered = {e.lower() for e in entities}
    others = [p for p in OTHER_PEOPLE if p.lower() not in lowered and p.split()[-1].lower() not in lowered]
    templates = FORGET_TEMPLATES if mode == "forget" else RETAIN_TEMPLATES
    return [fill(t, TARGET if per_name else target, others, rng) for t in templates]


def keeps_constraint(paraphrase: str, mode: str, target: str, on_target: re.Pattern[str] | None) -> bool:
    """Whether a paraphrase still asks for what its mode needs.

    It must still read as an instruction (an imperative opening, or asking to write/compose/describe). Forget: it
    still names the target (any target name, or most content words of a described target). Retain:
    it still asks about films/reviews and does not bring the target in.
    """
    text = paraphrase.lower()
    first = text.split()[0].strip(",.:;!\"'") if text.split() else ""
    if first not in _IMPERATIVE and not any(f"{verb} " in text for verb in ("write", "compose", "describe")):
        return False  # the model answered the instruction instead of rewording it
    hits_target = bool(on_target and on_target.search(paraphrase))
    if mode == "forget":
        if on_target is not None:
            return hits_target
        words = set(_WORD.findall(target.lower()))
        return bool(words) and len(words & set(_WORD.findall(text))) * 2 >= len(words)
    return not hits_target and any(w in text for w in ("movie", "film", "review", "cinema"))


def clean_paraphrase(raw: str) -> str | None:
    """First line of the model's answer, stripped of quotes and lead-ins; None when unusable."""
    line = next((ln.strip() for ln in raw.strip().splitlines() if ln.strip()), "")
    line = re.sub(r"^(sure|here|okay|rewritten|instruction)[^:]{0,40}:\s*", "", line, flags=re.IGNORECASE)
    line = line.strip(" \"'*`")
    words = len(line.split())
    return line if 4 <= words <= 40 else None
