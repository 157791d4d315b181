"""Task formatting: the paper's prompt template, label words and tokenisation.

An encoded example is ``prompt tokens + label tokens``. The *answer position* is the index of the last prompt
token: the model's next-token distribution there is the prediction. Multi-token label words are supported:
positions ``answer_pos .. answer_pos + k - 1`` predict the ``k`` label tokens (teacher forcing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from spulctl.errors import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from spulctl.data.ner import NerTaskSpec

DEFAULT_TEMPLATE = (
    "### Text: {text}\n\n### Question: What is the sentiment of the given text?\n\n### Sentiment:"
)
DEFAULT_LABEL_WORDS = ("negative", "positive")
DEFAULT_GENERIC_LABELS = ("neutral", "unknown")


@dataclass
class TaskSpec:
    """Prompt template and label vocabulary.

    Attributes:
        template: must contain ``{text}``; the label word follows it, preceded by ``label_prefix``.
        label_words: the classes, in label-map order (``negative``, ``positive``).
        generic_labels: answers that mean "I don't know" (SPUL's forget targets).
        label_prefix: what separates the template from the label word (a space, as in `` positive``).
    """

    template: str = DEFAULT_TEMPLATE
    label_words: tuple[str, ...] = DEFAULT_LABEL_WORDS
    generic_labels: tuple[str, ...] = DEFAULT_GENERIC_LABELS
    label_prefix: str = " "

    def __post_init__(self) -> None:
        if "{text}" not in self.template:
            raise DataError("template: must contain the placeholder {text}")
        if len(set(self.label_words)) != len(self.label_words) or len(self.label_words) < 2:
            raise DataError(f"label words: need at least two distinct words, got {list(self.label_words)}")
        clash = set(self.label_words) & set(self.generic_labels)
        if clash:
            raise DataError(f"generic labels: {sorted(clash)} are also label words")

    def prompt(self, text: str) -> str:
        """Fill the template with ``text``."""
        return self.template.replace("{text}", text)

    def to_dict(self) -> dict:
        """JSON-serialisable form, stored in manifests and bundles."""
        return {"template": self.template, "label_words": list(self.label_words),
                "generic_labels": list(self.generic_labels), "label_prefix": self.label_prefix}

    @classmethod
    def from_dict(cls, t: dict) -> TaskSpec:
        """The task :meth:`to_dict` stored (manifests written before ``label_prefix`` existed get the space)."""
        return cls(template=t["template"], label_words=tuple(t["label_words"]),
                   generic_labels=tuple(t["generic_labels"]), label_prefix=t.get("label_prefix", " "))


@dataclass
class Encoded:
    """One tokenised example.

    Attributes:
        input_ids: prompt tokens followed by the target word's tokens.
        answer_pos: index of the last prompt token (its logits predict the first target token).
        target_ids: the target word's tokens (label word, or a generic label for SPUL forget rows).
        label: index of the true label word in ``TaskSpec.label_words``.
        truncated: the record's text was cut to fit ``max_length`` (:mod:`spulctl.data.truncate`).
    """

    input_ids: list[int]
    answer_pos: int
    target_ids: list[int]
    label: int
    truncated: bool = False


@dataclass
class LabelVocab:
    """Token ids of the label and generic words.

    Attributes:
        label_ids: per label word, its token ids.
        generic_ids: per generic label, its token ids.
        first_label_ids: first token of each label word (restricted prediction = argmax over these).
    """

    label_ids: list[list[int]]
    generic_ids: list[list[int]]
    first_label_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.first_label_ids = [ids[0] for ids in self.label_ids]


def label_vocab(spec: TaskSpec, tokenizer: PreTrainedTokenizerBase) -> LabelVocab:
    """Tokenise label and generic words.

    Raises:
        DataError: a word tokenises to nothing, or two label words share their first token (restricted
            prediction would be ambiguous).
    """

    def ids(word: str) -> list[int]:
        out = tokenizer(spec.label_prefix + word, add_special_tokens=False)["input_ids"]
        if not out:
            raise DataError(f"label word '{word}': tokenises to no tokens")
        return list(out)

    vocab = LabelVocab([ids(w) for w in spec.label_words], [ids(w) for w in spec.generic_labels])
    firsts = vocab.first_label_ids
    if len(set(firsts)) != len(firsts):
        raise DataError(f"label words {list(spec.label_words)}: two share their first token; pick distinct words")
    return vocab


def label_indices(records: list[dict], spec: TaskSpec) -> list[int]:
    """Index of each record's label among ``spec.label_words``.

    Raises:
        DataError: a record's label is not one of the label words.
    """
    index = {w: i for i, w in enumerate(spec.label_words)}
    for i, rec in enumerate(records):
        if rec.get("label") not in index:
            raise DataError(f"record {i}: label '{rec.get('label')}' is not a label word {list(spec.label_words)}")
    return [index[r["label"]] for r in records]


def encode(
    records: list[dict],
    spec: TaskSpec,
    tokenizer: PreTrainedTokenizerBase,
    vocab: LabelVocab | None = None,
    targets: list[list[int]] | None = None,
    max_length: int | None = None,
) -> list[Encoded]:
    """Tokenise records into prompt + target examples, long texts cut by the one policy of
    :mod:`spulctl.data.truncate` (template and answer position kept; ``Encoded.truncated`` marks a cut text).

    Args:
        records: ``{"text", "label"}`` dicts (label = a label word).
        targets: per record, target token ids overriding the true label's (e.g. a generic label).
        max_length: tokens per example, prompt + target (commands pass
            :func:`~spulctl.data.truncate.resolve_max_length`; None: ``FALLBACK_MAX_LENGTH``).

    Raises:
        DataError: a record's label is not one of the label words, or ``max_length`` cannot hold the template.
    """
    from spulctl.data.truncate import FALLBACK_MAX_LENGTH, fit_prompts

    if not records:
        return []
    max_length = max_length or FALLBACK_MAX_LENGTH
    vocab = vocab or label_vocab(spec, tokenizer)
    labels = label_indices(records, spec)
    tgts = [list(targets[i]) if targets is not None else list(vocab.label_ids[lab]) for i, lab in enumerate(labels)]
    prompts, cut = fit_prompts([r["text"] for r in records], spec, tokenizer, [max_length - len(t) for t in tgts])
    return [Encoded(ids + tgt, len(ids) - 1, tgt, label, was_cut)
            for ids, tgt, label, was_cut in zip(prompts, tgts, labels, cut, strict=True)]


def task_for_splits(task: TaskSpec, splits: str | Path) -> TaskSpec | NerTaskSpec:
    """The task to train and score ``splits`` with: :class:`~spulctl.data.ner.NerTaskSpec` when ``split.json`` says
    the splits were built for NER (``spulctl data ner``) and ``task`` is the default sentiment task; else ``task``."""
    from spulctl.data.ner import NerTaskSpec, is_ner_splits

    return NerTaskSpec() if task == TaskSpec() and is_ner_splits(splits) else task


def is_generative(task: object) -> bool:
    """Whether ``task`` answers with generated text (NER) rather than a label word at one answer position."""
    return getattr(task, "kind", None) == "ner"
