"""What every unlearning method shares: the run context, the answer-position objective, the cached reference."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spulctl.loss import LossWeights, fused_unlearning_loss, unlearning_loss

if TYPE_CHECKING:
    import torch
    from torch import nn

    from spulctl.data.task import Encoded, LabelVocab, TaskSpec
    from spulctl.step import Batch, StepOptions


@dataclass
class UnlearnContext:
    """Everything a method needs to build its objective and save its artifact.

    Attributes:
        model: the frozen base model (all ``requires_grad=False``).
        tokenizer: its tokenizer.
        task: template and label words.
        vocab: label/generic token ids.
        forget: forget records; retain: retain records (labels = targets for L_r).
        settings: the method's settings (an ``UnlearnConfig``).
        ckpt_dir: checkpoint directory (also holds the cached reference).
        emit: progress callback.
    """

    model: nn.Module
    tokenizer: Any
    task: TaskSpec
    vocab: LabelVocab
    forget: list[dict]
    retain: list[dict]
    settings: Any
    ckpt_dir: Path
    emit: Callable[[dict], None]
    base_fingerprint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class AnswerObjective:
    """L_f + α·L_r + β·L_kl over a mixed forget/retain dataset, for any way of producing logits.

    Args:
        examples: forget examples first, then retain examples.
        n_forget: how many of ``examples`` are forget rows.
        params: named trainable parameters.
        logits_fn: ``batch -> (b, k, V)`` fp32 logits of the model being trained.
        ref_hidden: (n_retain, d) cached unprompted final hidden rows at the retain answer positions, or None.
        ref_logits_fn: ``batch -> (b, k, V)`` logits of the frozen reference, used when ``ref_hidden`` is None.
        head: the output head (maps cached hidden rows to reference logits).
        weights: term weights.
        pad_id: tokenizer pad id.
        hidden_fn: ``batch -> (b, k, d)`` hidden rows of the model being trained (fused-kernel path).
        ref_hidden_fn: ``batch -> (b, k, d)`` unprompted hidden rows (fused path without a cached reference).
        kernels: ``torch`` (the reference loss on logits) or ``triton`` (fused head, logits never built).
        graphed: ``(indices, within) -> parts`` that replaces :meth:`loss` (SPUL's CUDA-graph step,
            :class:`~spulctl.cuda_graphs.GraphedPromptLoss`), or None.
    """

    def __init__(self, examples: list[Encoded], n_forget: int, params: list[tuple[str, torch.nn.Parameter]],
                 logits_fn: Callable[[Batch], torch.Tensor], ref_hidden: torch.Tensor | None,
                 ref_logits_fn: Callable[[Batch], torch.Tensor] | None, head: nn.Module, weights: LossWeights,
                 pad_id: int, device: Any, hidden_fn: Callable[[Batch], torch.Tensor] | None = None,
                 ref_hidden_fn: Callable[[Batch], torch.Tensor] | None = None, kernels: str = "torch",
                 graphed: Callable[..., dict[str, torch.Tensor]] | None = None) -> None:
        self.examples, self.n_forget, self.params = examples, n_forget, params
        # the cached rows live where the head is, in its dtype: indexed by the batch's (device) indices each step
        ref_hidden = None if ref_hidden is None else ref_hidden.to(device, head.weight.dtype)
        self.logits_fn, self.ref_hidden, self.ref_logits_fn = logits_fn, ref_hidden, ref_logits_fn
        self.head, self.weights, self.pad_id, self.device = head, weights, pad_id, device
        self.hidden_fn, self.ref_hidden_fn, self.kernels = hidden_fn, ref_hidden_fn, kernels
        self.graphed = graphed

    def named_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return self.params

    def lengths(self) -> list[int]:
        return [len(e.input_ids) for e in self.examples]

    def loss(self, indices: list[int], within: list[int] | None = None) -> dict[str, torch.Tensor]:
        """The loss over ``indices``; with ``within`` (the whole batch), this micro-batch's share of it."""
        if self.graphed is not None:
            return self.graphed(indices, within)
        batch, is_forget, counts = self.batch(indices, within)
        if self.kernels == "triton":
            return self._fused_loss(batch, is_forget, counts)
        q = self.logits_fn(batch)  # (b, k, V)
        return unlearning_loss(q, batch.targets, is_forget, self.reference_logits(batch, is_forget), self.weights,
                               counts)

    def batch(self, indices: list[int], within: list[int] | None = None,
              ) -> tuple[Batch, torch.Tensor, tuple[int, int] | None]:
        """The collated rows on the device, their (b,) forget mask, and with ``within`` the whole batch's
        (forget, retain) counts that each term is averaged over."""
        from spulctl.step import collate

        batch = collate([self.examples[i] for i in indices], self.pad_id, indices).to(self.device)
        is_forget = batch.index < self.n_forget  # (b,)
        counts = None
        if within is not None:
            n_f = sum(i < self.n_forget for i in within)
            counts = (n_f, len(within) - n_f)
        return batch, is_forget, counts

    def reference_logits(self, batch: Batch, is_forget: torch.Tensor) -> torch.Tensor | None:
        """(m, V) reference logits of the retain rows for the KL term, or None when there is no KL term to compute:
        the cached hidden rows through the head, else a second, unprompted forward."""
        import torch

        if self.weights.kl <= 0 or not bool((~is_forget).any()):
            return None
        with torch.no_grad():
            if self.ref_hidden is not None:
                return self.head(self.ref_hidden[batch.index[~is_forget] - self.n_forget]).float()  # (m, V)
            return self.ref_logits_fn(batch)[~is_forget, 0]

    def _fused_loss(self, batch: Batch, is_forget: torch.Tensor,
                    counts: tuple[int, int] | None) -> dict[str, torch.Tensor]:
        import torch

        ref = None
        if self.weights.kl > 0 and bool((~is_forget).any()):
            with torch.no_grad():
                if self.ref_hidden is not None:
                    ref = self.ref_hidden[batch.index[~is_forget] - self.n_forget]  # (m, d)
                else:
                    ref = self.ref_hidden_fn(batch)[~is_forget, 0]  # (m, d): a second, unprompted forward
        return fused_unlearning_loss(self.hidden_fn(batch), batch.targets, is_forget, ref, self.head.weight,
                                     self.weights, counts)


def generic_forget_targets(ctx: UnlearnContext) -> list[list[int]]:
    """A generic label per forget record, drawn uniformly with the run's seed (SPUL and RL targets)."""
    import random

    rng = random.Random(ctx.settings.train.seed)
    return [rng.choice(ctx.vocab.generic_ids) for _ in ctx.forget]


def reference_hidden(model: nn.Module, examples: list[Encoded], pad_id: int, cache_file: Path, key: str,
                     batch_size: int, emit: Callable[[dict], None]) -> torch.Tensor:
    """Unprompted final hidden state at each example's answer position, computed once and cached.

    The file is safetensors with the run key in its metadata; a file for other data or another model is
    recomputed, never trusted. Several processes: rank 0's file (it holds the checkpoint directory) is broadcast;
    without one, rank r computes batches r, r + world, ... and the rows are summed across the ranks (each row is
    written by one rank); on a sharded base a rank with fewer batches runs a padding pass whose rows it drops.

    Returns:
        (n, d) fp32 rows, in ``examples`` order.
    """
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from spulctl.distributed import broadcast_tensors, inference, lockstep, rank_device, world
    from spulctl.step import answer_hidden, bucketed_batches, collate

    cached = None
    if cache_file.is_file():
        with safe_open(str(cache_file), "pt") as f:
            if (f.metadata() or {}).get("key") == key:
                cached = f.get_tensor("hidden")
    rank, size = world()
    if size > 1:
        cached = broadcast_tensors({"hidden": cached} if cached is not None else None).get("hidden")
    if cached is not None:
        return cached
    device = next(model.parameters()).device
    out = torch.zeros(len(examples), model.config.hidden_size)
    batches = bucketed_batches([len(e.input_ids) for e in examples], batch_size, seed=None)
    mine = batches[rank::size]
    emit({"kind": "eval-start", "split": "reference", "total": sum(len(b) for b in mine)})
    with inference():
        for j in range(lockstep([len(batches[r::size]) for r in range(size)])):
            idx = mine[j] if j < len(mine) else batches[0]
            batch = collate([examples[i] for i in idx], pad_id, idx).to(device)
            rows = answer_hidden(model, batch)[:, 0].float().cpu()  # (b, d) at the answer position
            if j < len(mine):
                out[idx] = rows
                emit({"kind": "eval-step", "split": "reference", "n": len(idx)})
    if size > 1:
        import torch.distributed as dist

        gathered = out.to(rank_device())
        dist.all_reduce(gathered)  # (n, d): every row from the one rank that computed it, zeros from the others
        out = gathered.cpu()
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(f".{cache_file.name}.tmp")
    save_file({"hidden": out.contiguous()}, str(tmp), metadata={"key": key})
    tmp.replace(cache_file)
    return out


def step_options(settings: Any) -> StepOptions:
    """The fast-step switches from a settings object."""
    from spulctl.distributed import sharded
    from spulctl.step import StepOptions

    # FSDP: the reference comes from the cache (and the step turns the shared prefix off itself), so that every
    # loss call is one pass through the sharded layers on every rank (see spulctl.distributed.lockstep)
    whole = not sharded()
    return StepOptions(answer_only=settings.answer_only, shared_prefix=settings.shared_prefix,
                       cached_reference=settings.cached_reference or not whole,
                       cuda_graphs=settings.cuda_graphs and whole)
