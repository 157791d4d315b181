"""Retain data when the user has unlabelled texts only: the model's own labels for them.

(Texts the model writes itself come from :mod:`spulctl.reveal`.)

SPUL needs retain inputs to keep the model's answers on everything else. Their targets are the frozen model's
own answers (restricted to the label words), so L_r and L_kl teach the prompt to leave those answers alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from spulctl.data.task import TaskSpec


def pseudo_label(model: nn.Module, tokenizer: Any, task: TaskSpec, texts: list[str], batch_size: int = 32,
                 emit: Callable[[dict], None] | None = None, max_length: int | None = None) -> list[dict]:
    """Label ``texts`` with the model's own restricted prediction (argmax over the label words), each text cut to
    ``max_length`` tokens by :mod:`spulctl.data.truncate` (None: the model's context window).

    Returns:
        Records ``{"text", "label", "label_source": "model"}``.
    """
    from spulctl.data.task import encode, label_vocab
    from spulctl.data.truncate import resolve_max_length, truncation_note
    from spulctl.evaluate.metrics import predict

    emit = emit or (lambda _e: None)
    vocab = label_vocab(task, tokenizer)
    records = [{"text": t, "label": task.label_words[0]} for t in texts]
    max_length = max_length or resolve_max_length(model.config)
    examples = encode(records, task, tokenizer, vocab, max_length=max_length)
    truncation_note(emit, "pseudo-labels", sum(e.truncated for e in examples), len(examples), max_length)
    emit({"kind": "eval-start", "split": "pseudo-labels", "total": len(examples)})
    pred = predict(model, examples, vocab, tokenizer.pad_token_id, batch_size,
                   on_batch=lambda n: emit({"kind": "eval-step", "split": "pseudo-labels", "n": n}))
    return [{"text": t, "label": task.label_words[int(k)], "label_source": "model"}
            for t, k in zip(texts, pred.restricted, strict=True)]
