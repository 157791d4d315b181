"""CUDA-graph replay of the SPUL step: forward, loss and backward captured once per padded batch shape.

On a GPU the SPUL step of a small model is bound by kernel launches, not arithmetic: SmolLM2's forward and
backward issue thousands of small kernels, each paying the host's launch cost while the chip idles (docs/
benchmarks.md). A CUDA graph records those kernels once and replays them with a single launch.

A graph is static, so each batch *shape* gets one: rows are right-padded to a multiple of ``length_multiple``
tokens (padding is masked out and follows every answer position, so it changes no real row), and the key also
holds the row count, the targets per row and the batch's shared leading tokens. What differs between batches of
one shape (token ids, masks, positions, targets, per-row loss weights, reference rows) is copied into the
graph's input buffers; the prompt parameters are read in place, where the optimiser updates them.

All graphs share one memory pool. Everything a capture allocates, except the graph's outputs, is freed before the
capture ends, so the pool holds about the largest shape's working set rather than the sum over shapes; graphs
replay one at a time on one stream, which makes the sharing safe.

The loss is :func:`spulctl.loss.weighted_unlearning_loss`: rows are weighted rather than selected, so nothing is
read back to the host inside the step. Without CUDA (``capture=False``) the same static-shape step runs eagerly,
which is how the CPU tests check it against :class:`~spulctl.methods.base.AnswerObjective`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from spulctl.data.task import Encoded
    from spulctl.loss import LossWeights
    from spulctl.step import StepOptions

LENGTH_MULTIPLE = 16
PARTS = ("loss", "l_f", "l_r", "l_kl")


def graphs_apply(opts: StepOptions, device: Any, reference: bool) -> bool:
    """Whether SPUL's step runs from CUDA graphs.

    It does when asked for (``opts.cuda_graphs``), on CUDA, on the captured path (shared prefix and answer-only
    head) and with ``reference`` true: the reference rows are cached, or there is no KL term.
    """
    return bool(opts.cuda_graphs and str(device).startswith("cuda") and opts.shared_prefix and opts.answer_only
                and reference)


@dataclass
class _Entry:
    """One batch shape: its input buffers and, once captured, the graph and its output buffers."""

    static: dict[str, torch.Tensor]
    graph: Any = None
    parts: dict[str, torch.Tensor] | None = None
    grads: tuple[torch.Tensor, ...] | None = None


class GraphedPromptLoss:
    """SPUL's loss and ∂L/∂prompt for a batch of example indices, replayed from CUDA graphs.

    Call it like :meth:`AnswerObjective.loss`: the returned ``loss`` backpropagates the captured gradients into
    the prompt parameters' ``.grad``, so the training loop, clipping and micro-batching stay as they are.

    Args:
        model: the frozen base model.
        prompt: the soft-prompt module; its parameters are the trainable ones.
        head: the model's output head.
        examples: forget examples first, then retain examples.
        n_forget: how many of ``examples`` are forget rows.
        ref_hidden: (n_retain, d) cached reference rows (moved to the head's device and dtype here), or None
            (only with β = 0).
        weights: loss term weights.
        opts: fast-step switches (the shared-prefix path is the one captured).
        pad_id: tokenizer pad id.
        kernels: ``torch`` or ``triton`` (fused answer-head loss).
        length_multiple: lengths are padded up to a multiple of this (fewer shapes, more padding).
        capture: record CUDA graphs (default: when the model is on CUDA); False runs the static step eagerly.
        warmup: eager runs on a side stream before each capture (cuBLAS and autograd set themselves up there).
        note: called with a one-line message if a capture fails (the step then runs eagerly from there on).
    """

    def __init__(self, model: nn.Module, prompt: nn.Module, head: nn.Module, examples: list[Encoded],
                 n_forget: int, ref_hidden: torch.Tensor | None, weights: LossWeights, opts: StepOptions,
                 pad_id: int, kernels: str = "torch", length_multiple: int = LENGTH_MULTIPLE,
                 capture: bool | None = None, warmup: int = 2, note: Callable[[str], None] | None = None) -> None:
        from spulctl.errors import SpulError

        if ref_hidden is None and weights.kl > 0:
            raise SpulError("CUDA-graph step: the KL term needs the cached reference (drop --no-cached-reference)")
        self.model, self.prompt, self.head, self.examples = model, prompt, head, examples
        self.device = head.weight.device
        self.ref_hidden = None if ref_hidden is None else ref_hidden.to(self.device, head.weight.dtype)
        self.n_forget, self.weights, self.opts = n_forget, weights, opts
        self.pad_id, self.kernels, self.length_multiple = pad_id, kernels, max(1, length_multiple)
        self.capture = self.device.type == "cuda" if capture is None else capture
        self.warmup, self.note = warmup, note or (lambda _m: None)
        self.params = [p for p in prompt.parameters() if p.requires_grad]
        self.pool = None  # the graphs' shared memory pool, made at the first capture
        self.entries: dict[tuple[int, ...], _Entry] = {}

    @property
    def captured(self) -> int:
        """How many shapes have a recorded graph."""
        return sum(e.graph is not None for e in self.entries.values())

    def host_inputs(self, indices: list[int], within: list[int] | None = None) -> tuple[tuple[int, ...], dict]:
        """The batch's padded input tensors (on the CPU) and its shape key.

        Returns:
            ``(key, inputs)``: key = (rows, padded length, targets per row, shared leading tokens); inputs =
            ``input_ids``/``attention_mask`` (b, T), ``positions``/``targets`` (b, k), ``w_f``/``w_r`` (b,) fp32
            per-row weights of L_f and L_r (and L_kl), ``ref_rows`` (b,) row of the cached reference.
        """
        import torch

        from spulctl.step import collate, shared_token_count

        batch = collate([self.examples[i] for i in indices], self.pad_id, indices)
        b, t = batch.input_ids.shape
        c = shared_token_count(batch) if self.opts.shared_prefix else 0
        pad = math.ceil(t / self.length_multiple) * self.length_multiple - t
        ids = torch.nn.functional.pad(batch.input_ids, (0, pad), value=self.pad_id)
        mask = torch.nn.functional.pad(batch.attention_mask, (0, pad), value=0)
        is_f = batch.index < self.n_forget  # (b,)
        whole = indices if within is None else within
        n_f = sum(i < self.n_forget for i in whole)
        n_r = len(whole) - n_f
        inputs = {"input_ids": ids, "attention_mask": mask, "positions": batch.positions, "targets": batch.targets,
                  "w_f": is_f.float() / max(n_f, 1), "w_r": (~is_f).float() / max(n_r, 1),
                  "ref_rows": torch.where(is_f, 0, batch.index - self.n_forget)}
        return (b, t + pad, batch.targets.shape[1], c), inputs

    def _step(self, static: dict[str, torch.Tensor], shared: int):
        """The captured computation: prompted forward, weighted loss, gradients of the prompt parameters."""
        import torch

        from spulctl.loss import weighted_unlearning_loss
        from spulctl.step import Batch, prompted_hidden

        # labels and index are not read by the forward: the reference rows stand in for both
        batch = Batch(static["input_ids"], static["attention_mask"], static["positions"], static["targets"],
                      static["ref_rows"], static["ref_rows"])
        hidden = prompted_hidden(self.model, batch, self.prompt(), self.opts, shared=shared)  # (b, k, d)
        ref = None if self.ref_hidden is None or self.weights.kl <= 0 else self.ref_hidden[static["ref_rows"]]
        parts = weighted_unlearning_loss(hidden, static["targets"], static["w_f"], static["w_r"], ref, self.head,
                                         self.weights, self.kernels)
        grads = torch.autograd.grad(parts["loss"], self.params)
        return {k: parts[k].detach() for k in PARTS}, grads

    def _record(self, key: tuple[int, ...], inputs: dict[str, torch.Tensor]) -> _Entry:
        entry = _Entry({k: v.to(self.device) for k, v in inputs.items()})
        if not self.capture:
            return entry
        try:
            self._capture(entry, key[3])
        except RuntimeError as err:  # a model whose forward reads values back to the host cannot be captured
            entry.graph = entry.parts = entry.grads = None
            self.capture = False
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            self.note(f"CUDA-graph capture failed ({first}); running the step eagerly "
                      "(--no-cuda-graphs skips the attempt)")
        return entry

    def _capture(self, entry: _Entry, shared: int) -> None:
        """Warm up on a side stream, then record ``entry``'s step into a graph in the shared pool."""
        import torch

        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self._step(entry.static, shared)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            entry.parts, entry.grads = self._step(entry.static, shared)
        entry.graph = graph

    def prepare(self, batches: list[list[int]]) -> int:
        """Record the graphs of every shape among ``batches`` now (else each is recorded on first use).

        Returns:
            How many new shapes were recorded.
        """
        new = 0
        for indices in batches:
            key, inputs = self.host_inputs(indices)
            if key not in self.entries:
                self.entries[key] = self._record(key, inputs)
                new += 1
        return new

    def __call__(self, indices: list[int], within: list[int] | None = None) -> dict[str, torch.Tensor]:
        """Loss parts over ``indices`` (with ``within``: this slice's share of that batch), as AnswerObjective."""
        key, inputs = self.host_inputs(indices, within)
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = self._record(key, inputs)
        else:
            for k, v in inputs.items():
                entry.static[k].copy_(v, non_blocking=True)
        if entry.graph is not None:
            entry.graph.replay()
            parts, grads = entry.parts, entry.grads
        else:
            parts, grads = self._step(entry.static, key[3])
        # copies: the next replay of this shape overwrites the graph's output buffers
        out = {k: v.clone() for k, v in parts.items()}
        out["loss"] = _precomputed()(out["loss"], tuple(g.clone() for g in grads), *self.params)
        return out


_PRECOMPUTED = None


def _precomputed():
    """An autograd function whose output is a given loss and whose backward hands out given gradients."""
    global _PRECOMPUTED
    if _PRECOMPUTED is None:
        import torch

        class Precomputed(torch.autograd.Function):
            @staticmethod
            def forward(ctx, loss, grads, *params):  # params: only connect the graph
                ctx.grads = grads
                return loss.clone()

            @staticmethod
            def backward(ctx, grad_out):
                return (None, None, *(g * grad_out for g in ctx.grads))

        _PRECOMPUTED = Precomputed.apply
    return _PRECOMPUTED
