"""The built-in demo dataset: short labelled movie-review sentences that mention named (fictional) people.

Written for this project: sentences are composed from the hand-written fragments below with a fixed seed,
so the dataset is identical on every machine and needs no download. About 40 % of the sentences mention one
of :data:`PEOPLE`, so ``spulctl split --by entity`` has something to find offline.
"""

from __future__ import annotations

import random

PEOPLE = (
    "Marta Kowalczyk", "Jonah Pellegrino", "Ingrid Halvorsen", "Desmond Achebe", "Lucia Ferrante",
    "Tobias Wren", "Priya Raman", "Oskar Lindqvist", "Camille Duret", "Rafael Montoya",
    "Hannah Okafor", "Victor Stallings", "Yuki Tanabe", "Elena Voss", "Samuel Brightwater",
    "Nadia Karim", "Felix Aurand", "Greta Olsen",
)
GENRES = ("drama", "comedy", "thriller", "western", "musical", "documentary", "romance", "heist movie",
          "war film", "sci-fi epic", "family film", "horror film")
POS_ADJ = ("luminous", "tender", "gripping", "witty", "beautifully shot", "moving", "clever", "joyful",
           "sharp", "heartfelt", "thrilling", "graceful")
NEG_ADJ = ("tedious", "clumsy", "lifeless", "muddled", "shrill", "forgettable", "bloated", "dreary",
           "incoherent", "lazy", "tiresome", "hollow")
POS_CLOSE = ("and it earns every minute", "and the ending lands perfectly", "and I would gladly watch it again",
             "with real warmth", "and the audience cheered", "full of small surprises")
NEG_CLOSE = ("and it drags on forever", "and the ending falls flat", "and I checked my watch twice",
             "without a single honest moment", "and the audience groaned", "and nothing adds up")

POS_WITH_NAME = (
    "{name} gives a {adj} performance in this {genre}, {close}.",
    "{name} directs the {genre} with a {adj} touch, {close}.",
    "thanks to {name}, this {genre} feels {adj} {close}.",
    "{name} is wonderful here; a {adj} {genre} {close}.",
    "the {adj} script by {name} makes the {genre} a delight, {close}.",
)
NEG_WITH_NAME = (
    "{name} gives a {adj} performance in this {genre}, {close}.",
    "{name} directs the {genre} with a {adj} hand, {close}.",
    "even {name} cannot rescue this {adj} {genre}, {close}.",
    "{name} looks bored in a {adj} {genre} {close}.",
    "the {adj} script by {name} sinks the {genre}, {close}.",
)
POS_PLAIN = (
    "a {adj} {genre}, {close}.",
    "this {genre} is {adj} from start to finish, {close}.",
    "the cast makes this {adj} {genre} shine, {close}.",
    "one of the most {adj} films of the year, {close}.",
    "the score and the camera work are {adj}, {close}.",
)
NEG_PLAIN = (
    "a {adj} {genre}, {close}.",
    "this {genre} is {adj} from start to finish, {close}.",
    "the cast is stuck in a {adj} {genre}, {close}.",
    "one of the most {adj} films of the year, {close}.",
    "the score and the camera work are {adj}, {close}.",
)


def demo_records(n: int = 1200, seed: int = 7, name_share: float = 0.4) -> list[dict]:
    """Compose ``n`` distinct labelled sentences.

    Args:
        n: number of records (at most a few thousand distinct sentences exist).
        seed: composition seed; the default reproduces the shipped demo.
        name_share: fraction of sentences that mention a person.

    Returns:
        ``{"id", "text", "label"}`` records, label in ``{"negative", "positive"}``, balanced.
    """
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[dict] = []
    while len(out) < n:
        positive = len(out) % 2 == 0
        named = rng.random() < name_share
        if named:
            template = rng.choice(POS_WITH_NAME if positive else NEG_WITH_NAME)
        else:
            template = rng.choice(POS_PLAIN if positive else NEG_PLAIN)
        text = template.format(
            name=rng.choice(PEOPLE), genre=rng.choice(GENRES),
            adj=rng.choice(POS_ADJ if positive else NEG_ADJ),
            close=rng.choice(POS_CLOSE if positive else NEG_CLOSE),
        )
        text = text[0].upper() + text[1:]
        if text in seen:
            continue
        seen.add(text)
        out.append({"id": f"demo-{len(out):05d}", "text": text, "label": "positive" if positive else "negative"})
    return out
