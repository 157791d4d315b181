"""Retain data when the user has none: pseudo-labels for unlabelled texts, or texts the model writes itself.

SPUL needs retain inputs to keep the model's answers on everything else. Their targets are the frozen model's
own answers (restricted to the label words), so L_r and L_kl teach the prompt to leave those answers alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from spulctl.errors import DataError

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


def generate_texts(model: nn.Module, tokenizer: Any, task: TaskSpec, n: int, seed: int = 0,
                   max_new_tokens: int = 40, batch_size: int = 16, exclude: set[str] | None = None,
                   emit: Callable[[dict], None] | None = None) -> list[str]:
    """Sample ``n`` distinct task inputs from the model itself: it continues the template up to ``{text}``.

    Raises:
        DataError: the model produced fewer than ``n // 4`` usable texts.
    """
    import torch

    emit = emit or (lambda _e: None)
    exclude = exclude or set()
    head = task.template.split("{text}")[0]
    enc = tokenizer([head] * batch_size, return_tensors="pt", add_special_tokens=False)
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    texts: list[str] = []
    emit({"kind": "eval-start", "split": "self-generated", "total": n})
    tries = 0
    with torch.inference_mode():
        while len(texts) < n and tries < 4 * (n // batch_size + 1):
            tries += 1
            out = model.generate(**enc.to(device), do_sample=True, top_p=0.95, temperature=1.0,
                                 max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
            for row in tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True):
                text = row.split("\n")[0].strip()
                if len(text.split()) >= 3 and text not in exclude and text not in texts and len(texts) < n:
                    texts.append(text)
                    emit({"kind": "eval-step", "split": "self-generated", "n": 1})
    if len(texts) < max(1, n // 4):
        raise DataError(f"self-generated retain set: the model wrote only {len(texts)} usable texts of {n}; "
                        "pass --retain or --retain-from")
    return texts
