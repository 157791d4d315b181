"""``spulctl eval --backend onnx``: score a subject through its ONNX Runtime export (what ``spulctl export`` ships).

The subject (model alone, or model + bundle) is exported once into a temporary directory — the compiled KV
prefix baked into the graph, checked against torch before it is used, exactly as ``spulctl export`` does — and
every split is scored by :class:`spulctl.export.runtime.OnnxPredictor`. The graph returns the full-vocabulary
top-1 token and the label words' log-probabilities at the answer position, which is all the paper's metrics
need when every label word is one token; multi-token label words are refused (their teacher-forced check needs
the torch backend).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spulctl.errors import SpulError

if TYPE_CHECKING:
    from spulctl.evaluate.metrics import Predictions


class OnnxSubject:
    """One subject exported to ONNX Runtime for the lifetime of the object (a context manager).

    Args:
        model: model spec. bundle: prompt bundle directory, or None for the model alone.
        batch_size: texts per ONNX Runtime run.
        emit: progress/note events.
        threads: ONNX Runtime intra-op threads (None: its default).
        max_length: tokens per text after the prompt, as ``spulctl export --max-length`` (None: the context window
            minus the prompt).
    """

    def __init__(self, model: str, bundle: Path | None, batch_size: int, emit: Callable[[dict], None],
                 ignore_fingerprint: bool = False, threads: int | None = None, max_length: int | None = None) -> None:
        self.model, self.bundle, self.batch_size, self.emit, self.threads = model, bundle, batch_size, emit, threads
        self.max_length = max_length
        self.ignore_fingerprint = ignore_fingerprint
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.predictor: Any = None

    def __enter__(self) -> OnnxSubject:
        from spulctl.data.task import label_vocab
        from spulctl.export.build import export_scorer
        from spulctl.export.runtime import OnnxPredictor

        self._tmp = tempfile.TemporaryDirectory(prefix="spulctl-eval-onnx-")
        out = Path(self._tmp.name) / "onnx"
        self.emit({"kind": "note", "message": f"exporting {self.bundle or self.model} to ONNX Runtime for scoring"})
        export_scorer(self.model, out, bundle=self.bundle, no_bundle=self.bundle is None,
                   ignore_fingerprint=self.ignore_fingerprint, on_event=self.emit, max_length=self.max_length)
        self.predictor = OnnxPredictor(out, provider="auto", batch_size=self.batch_size, threads=self.threads)
        task = self.predictor.task
        for word, ids in zip(task.label_words, label_vocab(task, self.predictor.tokenizer).label_ids, strict=True):
            if len(ids) != 1:
                self.__exit__()
                raise SpulError(f"--backend onnx: label word '{word}' is several tokens for this tokenizer; its "
                                "teacher-forced check needs --backend torch")
        return self

    def __exit__(self, *exc: object) -> None:
        self.predictor = None
        if self._tmp is not None:
            self._tmp.cleanup()

    def score(self, rows: list[dict], tag: str) -> dict[str, float]:
        """Metrics of :func:`spulctl.evaluate.metrics.summarize` for ``rows`` (``{"text", "label"}`` records)."""
        from spulctl.data.truncate import truncation_note
        from spulctl.evaluate.metrics import summarize

        self.emit({"kind": "eval-start", "split": tag, "total": len(rows)})
        pred = self.predictions(rows, lambda n: self.emit({"kind": "eval-step", "split": tag, "n": n}))
        truncated = sum(self.predictor.last_truncated)
        truncation_note(self.emit, tag, truncated, len(rows), self.predictor.max_length)
        metrics = {**summarize(pred), "truncated": truncated}
        self.emit({"kind": "eval-done", "split": tag, "metrics": metrics})
        return metrics

    def predictions(self, rows: list[dict], on_batch: Callable[[int], None] | None = None) -> Predictions:
        """Per-record predictions, as :func:`spulctl.evaluate.metrics.predict` returns them for torch."""
        import numpy as np

        from spulctl.data.task import label_indices
        from spulctl.evaluate.metrics import OTHER, Predictions

        pred = self.predictor
        labels = np.array(label_indices(rows, pred.task), dtype=int)
        logp, top1 = pred.score_texts([r["text"] for r in rows], on_batch)  # (n, L), (n,)
        hit = top1[:, None] == np.array(pred.label_first)[None, :]  # (n, L)
        full = np.where(hit.any(1), hit.argmax(1), OTHER)
        generic = (top1[:, None] == np.array(list(pred.generic_first))[None, :]).any(1)
        return Predictions(labels, full, full == labels, logp.argmax(1), generic)
