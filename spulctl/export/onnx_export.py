"""``spulctl export``: compile the soft prompt into its per-layer KV prefix and export an ONNX scorer.

The prompt sits at positions 0..p-1 and attends only to itself, so its keys and values in every layer are
constants of (base model, bundle). We compute them once (``prefix.safetensors``) and hand them to the graph as past
keys/values, positions offset by p; the graph itself sees the real tokens only. Two ways to hand them over:

* ``baked`` (default): the prefix is stored in the graph as initializers. One self-contained file, nothing to feed.
* ``inputs``: the graph takes ``past_key_{i}`` / ``past_value_{i}`` (1, kv_heads, p, head_dim) as inputs, and the
  runtime binds them once (IOBinding: on the GPU they stay in device memory).

Both are measured side by side in ``benchmarks/bench_inference.py`` (``docs/benchmarks.md``); on CPU they are within
noise of each other, so the default is the one with fewer moving parts.

Opset 17 (``torch.onnx.export``, TorchScript exporter). ``float32`` for CPU, ``float16`` for the CUDA execution
provider (the log-softmax over the vocabulary is computed in fp32 either way).

Graph: ``input_ids`` (b, t) int64, ``attention_mask`` (b, t) int64, ``answer_pos`` (b,) int64 [, prefix inputs] →
``label_logprobs`` (b, L) fp32 full-vocabulary log-probabilities of the label words' first tokens, ``top1`` (b,)
the top-1 token id over the whole vocabulary.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from spulctl.errors import MissingDependencyError

if TYPE_CHECKING:
    from torch import nn

OPSET = 17
PREFIX_MODES = ("baked", "inputs")
DTYPES = ("float32", "float16")
MODEL_FILE = "model.onnx"
PREFIX_FILE = "prefix.safetensors"
MANIFEST_FILE = "manifest.json"


def prefix_input_names(n_layers: int) -> list[str]:
    """Graph input names of the ``inputs`` prefix mode, in order: key then value for each layer."""
    return [f"past_{kind}_{i}" for i in range(n_layers) for kind in ("key", "value")]


def _scorer_module(model: nn.Module, prefix: list[tuple[Any, Any]] | None, label_first_ids: list[int],
                   prefix_mode: str = "baked") -> nn.Module:
    import torch
    from transformers import DynamicCache

    from spulctl.step import body_and_head

    class PrefixedScorer(torch.nn.Module):
        """Decoder body + answer-position head; the KV prefix baked in as buffers or taken as inputs."""

        def __init__(self) -> None:
            super().__init__()
            self.body, self.head = body_and_head(model)
            self.n_layers = len(prefix or [])
            self.p = 0 if not prefix else int(prefix[0][0].shape[2])
            self.baked = prefix_mode == "baked"
            if self.baked:
                for i, (k, v) in enumerate(prefix or []):
                    self.register_buffer(f"prefix_k{i}", k)
                    self.register_buffer(f"prefix_v{i}", v)
            self.register_buffer("label_ids", torch.tensor(label_first_ids, dtype=torch.long))

        def forward(self, input_ids, attention_mask, answer_pos, *prefix_kv):
            b = input_ids.shape[0]
            kwargs = {}
            if self.p:
                if self.baked:
                    prefix_kv = [getattr(self, f"prefix_{kind}{i}") for i in range(self.n_layers) for kind in "kv"]
                layers = [(prefix_kv[2 * i].expand(b, -1, -1, -1), prefix_kv[2 * i + 1].expand(b, -1, -1, -1))
                          for i in range(self.n_layers)]
                kwargs = {"past_key_values": DynamicCache(ddp_cache_data=layers, config=self.body.config),
                          "use_cache": True}
                attention_mask = torch.cat([attention_mask.new_ones(b, self.p), attention_mask], dim=1)
            hidden = self.body(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
            rows = hidden[torch.arange(b), answer_pos]  # (b, d)
            logits = self.head(rows).float()  # (b, V)
            return logits.log_softmax(-1)[:, self.label_ids], logits.argmax(-1)

    return PrefixedScorer().eval()


def export_onnx(model: nn.Module, prefix: list[tuple[Any, Any]] | None, label_first_ids: list[int],
                path: Path, sample: tuple[Any, Any, Any], prefix_mode: str = "baked") -> None:
    """Export the scorer to ``path`` (dynamic batch and sequence axes) and check it with ``onnx.checker``.

    The graph's float dtype is the model's (cast the model, and the prefix with it, before calling).

    Args:
        prefix: per-layer (key, value), each (1, kv_heads, p, head_dim), in the model's dtype; None: unprompted.
        prefix_mode: ``baked`` (initializers) or ``inputs`` (graph inputs ``past_key_{i}``/``past_value_{i}``).
        sample: (input_ids, attention_mask, answer_pos) to trace with.
    """
    try:
        import onnx
        import torch
    except ImportError:
        raise MissingDependencyError("export needs onnx and onnxruntime: pip install 'spulctl[export]'") from None
    if prefix_mode not in PREFIX_MODES:
        raise ValueError(f"prefix_mode {prefix_mode!r}: use one of {PREFIX_MODES}")
    module = _scorer_module(model, prefix, label_first_ids, prefix_mode)
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}, "answer_pos": {0: "batch"}}
    names = list(axes)
    args = tuple(sample)
    if prefix is not None and prefix_mode == "inputs":
        names += prefix_input_names(len(prefix))
        args += tuple(t for kv in prefix for t in kv)
    with torch.inference_mode():
        torch.onnx.export(module, args, str(path), input_names=names, output_names=["label_logprobs", "top1"],
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    onnx.checker.check_model(str(path))
