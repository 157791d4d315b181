"""Predictions at the answer position and the paper's metrics.

Prediction, as in the paper's released code, is the top-1 next token over the **whole vocabulary**: it is
correct only if it is the true label word (a generic word, or anything else, is wrong). We also report the
*restricted* prediction (argmax over the label words' first tokens), which shows whether the knowledge is
still in the weights, and the share of answers that are generic or off-label.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from spulctl.data.task import Encoded, LabelVocab

OTHER = -1  # predicted class for an answer that is no label word


@dataclass
class Predictions:
    """Per-example outputs for one split.

    Attributes:
        labels: (n,) true label index.
        full: (n,) predicted label index from the full-vocabulary top-1 (``OTHER`` if no label word).
        correct: (n,) full-vocabulary prediction is the true label word (all its tokens, teacher forced).
        restricted: (n,) argmax over label words.
        generic: (n,) top-1 is a generic label's first token.
    """

    labels: np.ndarray
    full: np.ndarray
    correct: np.ndarray
    restricted: np.ndarray
    generic: np.ndarray


def predict(
    model: nn.Module,
    examples: list[Encoded],
    vocab: LabelVocab,
    pad_id: int,
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
    logits_fn: Callable | None = None,
) -> Predictions:
    """Run the answer-only head over ``examples`` (length-bucketed, no grad).

    Args:
        logits_fn: ``(model, batch) -> (b, k, V)`` logits; default :func:`spulctl.step.answer_logits`.
        on_batch: called with the number of examples done in each batch (progress).
    """
    import numpy as np
    import torch

    from spulctl.distributed import inference
    from spulctl.step import answer_logits, bucketed_batches, collate

    logits_fn = logits_fn or answer_logits
    device = next(model.parameters()).device
    n = len(examples)
    labels, full, correct = np.zeros(n, int), np.full(n, OTHER), np.zeros(n, bool)
    restricted, generic = np.zeros(n, int), np.zeros(n, bool)
    first = torch.tensor(vocab.first_label_ids, device=device)
    generic_first = torch.tensor([g[0] for g in vocab.generic_ids], device=device)
    batches = bucketed_batches([len(e.input_ids) for e in examples], batch_size, seed=None)
    with inference():
        for idx in batches:
            batch = collate([examples[i] for i in idx], pad_id, idx).to(device)
            logits = logits_fn(model, batch)  # (b, k, V)
            top = logits.argmax(-1)  # (b, k)
            valid = batch.targets != -100
            ok = ((top == batch.targets) | ~valid).all(1)
            first_top = top[:, 0]
            hit = first_top.unsqueeze(1) == first.unsqueeze(0)  # (b, L)
            cls = torch.where(hit.any(1), hit.float().argmax(1), torch.full_like(first_top, OTHER))
            rows = batch.index.cpu().numpy()
            labels[rows] = batch.labels.cpu().numpy()
            full[rows] = cls.cpu().numpy()
            correct[rows] = (ok & (cls == batch.labels)).cpu().numpy()
            restricted[rows] = logits[:, 0, first].argmax(1).cpu().numpy()
            generic[rows] = (first_top.unsqueeze(1) == generic_first.unsqueeze(0)).any(1).cpu().numpy()
            if on_batch:
                on_batch(len(idx))
    return Predictions(labels, full, correct, restricted, generic)


def summarize(pred: Predictions) -> dict[str, float]:
    """Accuracy, weighted F1, restricted accuracy and generic/off-label shares, in percent."""
    from sklearn.metrics import accuracy_score, f1_score

    n = len(pred.labels)
    if n == 0:
        return {"n": 0}
    import numpy as np

    # A first token that names the label but a wrong continuation (multi-token words) is still wrong.
    y_pred = np.where(pred.correct, pred.labels, np.where(pred.full == pred.labels, OTHER, pred.full))
    present = sorted(set(pred.labels.tolist()))
    return {
        "n": n,
        "accuracy": 100.0 * float(pred.correct.mean()),
        "f1_weighted": 100.0 * float(f1_score(pred.labels, y_pred, labels=present, average="weighted",
                                              zero_division=0)),
        "restricted_accuracy": 100.0 * float(accuracy_score(pred.labels, pred.restricted)),
        "generic_share": 100.0 * float(pred.generic.mean()),
        "off_label_share": 100.0 * float((pred.full == OTHER).mean()),
    }


def score_records(model: nn.Module, tok: Any, task: Any, vocab: LabelVocab, rows: list[dict], batch_size: int,
                  emit: Callable[[dict], None], tag: str, logits_fn: Callable | None = None,
                  max_length: int | None = None) -> dict[str, float]:
    """Encode ``rows``, predict with progress events named ``tag``, and summarise (the loop every report uses).

    Args:
        max_length: tokens per example (:func:`spulctl.data.truncate.resolve_max_length`); None: the model's
            context window. The metrics' ``truncated`` is how many records were cut to fit.
    """
    from spulctl.data.task import encode
    from spulctl.data.truncate import resolve_max_length, truncation_note

    max_length = max_length or resolve_max_length(model.config)
    examples = encode(rows, task, tok, vocab, max_length=max_length)
    truncated = sum(e.truncated for e in examples)
    truncation_note(emit, tag, truncated, len(examples), max_length)
    emit({"kind": "eval-start", "split": tag, "total": len(examples)})
    pred = predict(model, examples, vocab, tok.pad_token_id, batch_size, logits_fn=logits_fn,
                   on_batch=lambda n: emit({"kind": "eval-step", "split": tag, "n": n}))
    metrics = {**summarize(pred), "truncated": truncated}
    emit({"kind": "eval-done", "split": tag, "metrics": metrics})
    return metrics
