"""``spulctl export``: compile the soft prompt into its per-layer KV prefix and export an ONNX scorer.

The prompt sits at positions 0..p-1 and attends only to itself, so its keys and values in every layer are
constants of (base model, bundle). We compute them once (``prefix.safetensors``) and bake them into the ONNX
graph as initializers; at inference the graph sees the real tokens only, with the prefix as past keys/values and
positions offset by p. We bake the prefix in as initializers rather than feeding it as 2·layers extra graph
inputs: the arithmetic is the same, the shipped graph is one self-contained file, and no caller has to copy the
prefix across the runtime boundary on every call (the inputs variant was not built or measured).

Graph: ``input_ids`` (b, t) int64, ``attention_mask`` (b, t) int64, ``answer_pos`` (b,) int64 →
``label_logprobs`` (b, L) full-vocabulary log-probabilities of the label words' first tokens, ``top1`` (b,)
the top-1 token id over the whole vocabulary.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from spulctl.errors import MissingDependencyError

if TYPE_CHECKING:
    import torch
    from torch import nn

OPSET = 17
MODEL_FILE = "model.onnx"
PREFIX_FILE = "prefix.safetensors"
MANIFEST_FILE = "manifest.json"


def compile_prefix(model: nn.Module, prompt: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer (key, value) of the soft prompt, each (1, kv_heads, p, head_dim) fp32."""
    import torch

    from spulctl.step import prompt_prefix_cache

    with torch.inference_mode():
        cache = prompt_prefix_cache(model, prompt.to(next(model.parameters()).dtype), 1)
        return [(layer.keys.float().contiguous().clone(), layer.values.float().contiguous().clone())
                for layer in cache.layers]


def _scorer_module(model: nn.Module, prefix: list[tuple[Any, Any]] | None, label_first_ids: list[int]) -> nn.Module:
    import torch
    from transformers import DynamicCache

    from spulctl.step import body_and_head

    class PrefixedScorer(torch.nn.Module):
        """Decoder body + answer-position head, with the KV prefix baked in as buffers."""

        def __init__(self) -> None:
            super().__init__()
            self.body, self.head = body_and_head(model)
            self.n_layers = len(prefix or [])
            self.p = 0 if not prefix else int(prefix[0][0].shape[2])
            for i, (k, v) in enumerate(prefix or []):
                self.register_buffer(f"prefix_k{i}", k)
                self.register_buffer(f"prefix_v{i}", v)
            self.register_buffer("label_ids", torch.tensor(label_first_ids, dtype=torch.long))

        def forward(self, input_ids, attention_mask, answer_pos):
            b = input_ids.shape[0]
            kwargs = {}
            if self.p:
                layers = [(getattr(self, f"prefix_k{i}").expand(b, -1, -1, -1),
                           getattr(self, f"prefix_v{i}").expand(b, -1, -1, -1)) for i in range(self.n_layers)]
                kwargs = {"past_key_values": DynamicCache(ddp_cache_data=layers, config=self.body.config),
                          "use_cache": True}
                attention_mask = torch.cat([attention_mask.new_ones(b, self.p), attention_mask], dim=1)
            hidden = self.body(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
            rows = hidden[torch.arange(b), answer_pos]  # (b, d)
            logits = self.head(rows).float()  # (b, V)
            return logits.log_softmax(-1)[:, self.label_ids], logits.argmax(-1)

    return PrefixedScorer().eval()


def export_onnx(model: nn.Module, prefix: list[tuple[Any, Any]] | None, label_first_ids: list[int],
                path: Path, sample: tuple[Any, Any, Any]) -> None:
    """Export the scorer to ``path`` (dynamic batch and sequence axes) and check it with ``onnx.checker``."""
    try:
        import onnx
        import torch
    except ImportError:
        raise MissingDependencyError("export needs onnx and onnxruntime: pip install 'spulctl[export]'") from None
    module = _scorer_module(model, prefix, label_first_ids)
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}, "answer_pos": {0: "batch"}}
    with torch.inference_mode():
        torch.onnx.export(module, sample, str(path), input_names=list(axes), output_names=["label_logprobs", "top1"],
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    onnx.checker.check_model(str(path))
