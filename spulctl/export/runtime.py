"""ONNX Runtime predictor for an export directory (CUDA execution provider when present, CPU otherwise).

Runs go through IOBinding on either provider: the token arrays are bound from host memory, the outputs are
allocated on the provider's device and copied back once. For an export whose prefix is a graph input
(``spulctl export --prefix inputs``) the per-layer keys/values are placed on the device once, at load, and bound to
every run, so they never cross the host/device boundary again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spulctl.errors import MissingDependencyError, SpulError
from spulctl.io import sha256_file

PROVIDERS = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


class ExportError(SpulError):
    """An export directory is missing files, corrupted, or asks for an unavailable provider."""


def verify_export(folder: str | Path) -> dict[str, Any]:
    """Check an export directory's files against the hashes in its manifest; return the manifest.

    Raises:
        ExportError: a file is missing or its sha256 differs from ``manifest.json``.
    """
    from spulctl.export.onnx_export import MANIFEST_FILE

    folder = Path(folder)
    if not (folder / MANIFEST_FILE).is_file():
        raise ExportError(f"{folder}: no {MANIFEST_FILE} (not a spulctl export directory)")
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    for name, digest in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise ExportError(f"{path}: missing")
        if sha256_file(path) != digest:
            raise ExportError(f"{path}: sha256 does not match {MANIFEST_FILE}: the file is corrupted or was replaced")
    return manifest


class OnnxPredictor:
    """Classify texts with an exported scorer.

    Args:
        folder: export directory (``spulctl export``).
        provider: ``auto`` (CUDA if onnxruntime has it, else CPU), ``cuda`` or ``cpu``.
        batch_size: texts per run.
        threads: ONNX Runtime's intra-op threads (None: its default, one per physical core).
        max_length: tokens per text after the prompt (texts cut by :mod:`spulctl.data.truncate`); None: the
            export's ``max_length`` (its base model's context window minus p by default).

    Attributes:
        truncated: how many texts this predictor has cut so far.
    """

    def __init__(self, folder: str | Path, provider: str = "auto", batch_size: int = 32,
                 threads: int | None = None, max_length: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise MissingDependencyError("predict needs onnxruntime: pip install 'spulctl[export]'") from None
        from transformers import AutoTokenizer

        from spulctl.data.task import TaskSpec
        from spulctl.export.onnx_export import MODEL_FILE

        self.folder = Path(folder)
        self.manifest = verify_export(self.folder)
        available = ort.get_available_providers()
        if provider == "auto":
            wanted = [p for p in (PROVIDERS["cuda"], PROVIDERS["cpu"]) if p in available]
        elif provider in PROVIDERS and PROVIDERS[provider] in available:
            wanted = [PROVIDERS[provider]]
        else:
            raise ExportError(f"--provider {provider}: not available (onnxruntime has {', '.join(available)})")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(self.folder / MODEL_FILE), options, providers=wanted)
        self.provider = self.session.get_providers()[0]
        self.device = "cuda" if self.provider == PROVIDERS["cuda"] else "cpu"
        self.prefix_values = self._bound_prefix(ort) if self.manifest.get("prefix") == "inputs" else {}
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        t = self.manifest["task"]
        self.task = TaskSpec.from_dict(t)
        self.batch_size = batch_size
        self.label_first = self.manifest["label_first_ids"]
        self.generic_first = dict(zip(self.manifest["generic_first_ids"], self.task.generic_labels, strict=True))
        self.max_length = self._max_length(max_length)
        from spulctl.data.task import label_vocab

        # room for the first label word's tokens, as the torch classifier leaves (same cut, same prediction)
        self.answer_room = len(label_vocab(self.task, self.tokenizer).label_ids[0])
        self.truncated = 0
        self.last_truncated: list[bool] = []

    def _max_length(self, requested: int | None) -> int:
        """``requested`` checked against the export's context window, else the export's own bound."""
        from spulctl.data.truncate import FALLBACK_MAX_LENGTH

        window, p = self.manifest.get("context_window"), int((self.manifest.get("bundle") or {}).get("p") or 0)
        if requested is None:
            return int(self.manifest.get("max_length") or FALLBACK_MAX_LENGTH)
        if requested < 1 or (window is not None and requested + p > window):
            raise ExportError(f"--max-length {requested}: must be between 1 and {window - p if window else '∞'} "
                              f"(context window {window} minus the prompt's {p} tokens)")
        return requested

    def _bound_prefix(self, ort: Any) -> dict[str, Any]:
        """The prefix keys/values as OrtValues on the provider's device, keyed by graph input name."""
        from safetensors.numpy import load_file

        from spulctl.export.onnx_export import PREFIX_FILE, prefix_input_names

        tensors = load_file(str(self.folder / PREFIX_FILE))
        n_layers = len(tensors) // 2
        names = prefix_input_names(n_layers)
        graph_inputs = {i.name for i in self.session.get_inputs()}
        if not set(names) <= graph_inputs:
            raise ExportError(f"{self.folder / PREFIX_FILE}: {n_layers} layers, but the graph's prefix inputs differ")
        arrays = [tensors[f"layer.{i}.{kind}"] for i in range(n_layers) for kind in ("key", "value")]
        return {name: ort.OrtValue.ortvalue_from_numpy(a, self.device, 0) for name, a in zip(names, arrays,
                                                                                           strict=True)}

    def run(self, feed: dict[str, Any]) -> tuple[Any, Any]:
        """One batch through the graph with IOBinding.

        Args:
            feed: ``input_ids``/``attention_mask`` (b, t) int64 and ``answer_pos`` (b,) int64 numpy arrays.

        Returns:
            ``(label_logprobs, top1)``: (b, L) fp32 and (b,) int64 numpy arrays.
        """
        binding = self.session.io_binding()
        for name, array in feed.items():
            binding.bind_cpu_input(name, array)
        for name, value in self.prefix_values.items():
            binding.bind_ortvalue_input(name, value)
        for name in ("label_logprobs", "top1"):
            binding.bind_output(name, self.device)
        self.session.run_with_iobinding(binding)
        logp, top1 = binding.copy_outputs_to_cpu()
        return logp, top1

    def feed(self, texts: list[str]) -> dict[str, Any]:
        """Graph inputs for ``texts`` (template applied, long texts cut to ``max_length``, right-padded): (b, t) ids
        and mask, (b,) answer_pos. ``last_truncated`` says which texts were cut."""
        import numpy as np

        from spulctl.data.truncate import fit_prompts

        budget = self.max_length - self.answer_room
        ids, self.last_truncated = fit_prompts(texts, self.task, self.tokenizer, [budget] * len(texts))
        self.truncated += sum(self.last_truncated)
        t = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id
        input_ids = np.full((len(ids), t), pad, dtype=np.int64)
        mask = np.zeros((len(ids), t), dtype=np.int64)
        for i, x in enumerate(ids):
            input_ids[i, : len(x)] = x
            mask[i, : len(x)] = 1
        return {"input_ids": input_ids, "attention_mask": mask,
                "answer_pos": np.array([len(x) - 1 for x in ids], dtype=np.int64)}

    def score_texts(self, texts: list[str], on_batch: Callable[[int], None] | None = None) -> tuple[Any, Any]:
        """Every text through the graph in length-sorted batches; outputs back in input order (``last_truncated``
        then flags each text that was cut).

        Returns:
            ``(label_logprobs, top1)``: (n, L) fp32 and (n,) int64 numpy arrays.
        """
        import numpy as np

        n = len(texts)
        logp, top1 = np.zeros((n, len(self.label_first)), dtype=np.float32), np.zeros(n, dtype=np.int64)
        order = sorted(range(n), key=lambda i: len(texts[i]))  # similar lengths batch together
        cut = [False] * n
        for s in range(0, n, self.batch_size):
            idx = order[s:s + self.batch_size]
            logp[idx], top1[idx] = self.run(self.feed([texts[i] for i in idx]))
            for i, flag in zip(idx, self.last_truncated, strict=True):
                cut[i] = flag
            if on_batch:
                on_batch(len(idx))
        self.last_truncated = cut
        return logp, top1

    def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        """Per text: ``label`` (label word, generic label, or None), ``answer`` (the top-1 token's text), ``top1`` (its
        id), ``scores`` (log-probability of each label word's first token)."""
        logp, top1 = self.score_texts(texts)
        results = []
        for text, row, tok, cut in zip(texts, logp, top1.tolist(), self.last_truncated, strict=True):
            label = (self.task.label_words[self.label_first.index(tok)] if tok in self.label_first
                     else self.generic_first.get(tok))
            results.append({"text": text, "label": label, "answer": self.tokenizer.decode([tok]), "top1": tok,
                            "scores": {w: float(v) for w, v in zip(self.task.label_words, row, strict=True)},
                            "truncated": cut})
        return results
