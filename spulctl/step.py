"""The forward pass every command shares: batching and the answer-only head.

Training, evaluation and export only need the model's next-token distribution at a handful of *answer
positions* per example, so we run the decoder body, gather those hidden rows and apply the output head to
them alone: ``[B, K, d] @ [d, V]`` instead of the ``[B, T, V]`` logits a plain ``model(...)`` call builds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from spulctl.data.task import Encoded


@dataclass
class Batch:
    """A right-padded batch.

    Attributes:
        input_ids: (b, t) token ids, padded with the pad id.
        attention_mask: (b, t) 1 for real tokens.
        positions: (b, k) positions whose logits predict the k target tokens (padding repeats the answer pos).
        targets: (b, k) target token ids, -100 where padded.
        labels: (b,) index of the true label word.
        index: (b,) index of each row in the dataset it came from.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    positions: torch.Tensor
    targets: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        """Move every tensor to ``device``."""
        return Batch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def collate(examples: list[Encoded], pad_id: int, index: list[int] | None = None) -> Batch:
    """Right-pad examples into a :class:`Batch`."""
    import torch

    b = len(examples)
    t = max(len(e.input_ids) for e in examples)
    k = max(len(e.target_ids) for e in examples)
    input_ids = torch.full((b, t), pad_id, dtype=torch.long)
    mask = torch.zeros((b, t), dtype=torch.long)
    positions = torch.zeros((b, k), dtype=torch.long)
    targets = torch.full((b, k), -100, dtype=torch.long)
    for i, e in enumerate(examples):
        n, m = len(e.input_ids), len(e.target_ids)
        input_ids[i, :n] = torch.tensor(e.input_ids)
        mask[i, :n] = 1
        positions[i] = e.answer_pos
        positions[i, :m] = torch.arange(e.answer_pos, e.answer_pos + m)
        targets[i, :m] = torch.tensor(e.target_ids)
    labels = torch.tensor([e.label for e in examples], dtype=torch.long)
    idx = torch.tensor(index if index is not None else list(range(b)), dtype=torch.long)
    return Batch(input_ids, mask, positions, targets, labels, idx)


def bucketed_batches(lengths: list[int], batch_size: int, seed: int | None, pool: int = 50) -> list[list[int]]:
    """Group example indices into batches of similar length, to waste little compute on padding.

    Args:
        lengths: token count per example.
        batch_size: examples per batch.
        seed: shuffle seed (None: keep the data order, only sort within pools, for evaluation).
        pool: batches per sorting pool; larger = less padding, less randomness.

    Returns:
        Lists of indices; with a seed, pools and the batch order are shuffled reproducibly.
    """
    import torch

    order = list(range(len(lengths)))
    if seed is not None:
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(lengths), generator=g).tolist()
    batches = []
    span = batch_size * pool
    for start in range(0, len(order), span):
        chunk = sorted(order[start:start + span], key=lambda i: lengths[i])
        batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
    if seed is not None:
        perm = torch.randperm(len(batches), generator=torch.Generator().manual_seed(seed + 1)).tolist()
        batches = [batches[i] for i in perm]
    return batches


def body_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """Split a causal LM (optionally PEFT-wrapped) into its decoder body and its output head."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.base_model, base.get_output_embeddings()


def answer_hidden(model: nn.Module, batch: Batch, opts: StepOptions | None = None) -> torch.Tensor:
    """Final hidden states of the unprompted model at the answer positions.

    Returns:
        (b, k, d) rows of the last (normed) hidden state at ``batch.positions``.
    """
    return prompted_hidden(model, batch, None, opts)


def answer_logits(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Next-token logits at the answer positions only, (b, k, V), in fp32."""
    _, head = body_and_head(model)
    return head(answer_hidden(model, batch)).float()


def target_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of (b, k, V) logits against (b, k) targets, ignoring -100; each row weighs 1/b."""
    import torch.nn.functional as F

    per_tok = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")  # (b, k)
    n_tok = (targets != -100).sum(1).clamp(min=1)
    return (per_tok.sum(1) / n_tok).mean()


# ---------------------------------------------------------------------------------------------------------------
# Prompted forward (SPUL). The soft prompt sits at positions 0..p-1 and attends only to itself, so its per-layer
# keys/values are the same for every example: compute them once per step and share them across the batch. The same
# holds for the leading tokens every row of a batch starts with (the template's "### Text:"): they join the prefix.
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class StepOptions:
    """Switches of the fast step; each can be turned off (benchmarks, equivalence tests).

    Attributes:
        answer_only: apply the output head to answer rows only (never build (b, t, V) logits).
        shared_prefix: run the p prompt positions, and the leading tokens all rows of the batch share, once per
            step and feed their keys/values to the whole batch.
        cached_reference: take the unprompted reference from cached hidden rows instead of a second forward.
        prepend_kernel: build the prompted input with the fused Triton ``prompt_prepend`` (``--kernels triton``):
            one (b, p + t, d) buffer and a deterministic ∂φ reduction on the concatenate path; on the
            shared-prefix path it prepares only φ in the compute dtype and the gathered token embeddings.
        lean_mlp: run SiLU-gated MLPs through :func:`spulctl.lean_mlp.lean_swiglu` (one (b, t, I) tensor per
            layer fewer kept for the backward pass; bit-identical results).
        grouped_attention: on the CPU, attend through :func:`spulctl.attention.grouped_attention` (key/value heads
            read in place instead of repeated per query head; same function as SDPA up to fp32 rounding).
        cuda_graphs: on CUDA, replay SPUL's whole step (forward, loss, backward) from a CUDA graph captured once
            per padded batch shape (:mod:`spulctl.cuda_graphs`); the step is launch-bound there otherwise.
    """

    answer_only: bool = True
    shared_prefix: bool = True
    cached_reference: bool = True
    prepend_kernel: bool = False
    lean_mlp: bool = True
    grouped_attention: bool = True
    cuda_graphs: bool = True


def shared_token_count(batch: Batch) -> int:
    """How many leading tokens every row of ``batch`` shares (real tokens, before every answer position).

    Returns 0 for a single row: there is nothing to share, and splitting its forward would only add a call.
    """
    if len(batch) < 2:
        return 0
    ids, mask = batch.input_ids, batch.attention_mask
    same = (ids == ids[:1]).all(0) & mask.bool().all(0)  # (t,)
    run = int(same.int().cumprod(0).sum())
    return min(run, int(batch.positions.min()))  # each row keeps its answer position in the batched part


def prompt_prefix_cache(model: nn.Module, prefix: torch.Tensor, batch_size: int) -> Any:
    """Per-layer keys/values of a prefix shared by the batch, computed once and expanded (as views) to it.

    Args:
        prefix: (n, d) input embeddings of the prefix (soft prompt, then shared tokens) in the model's compute
            dtype; gradients flow back through the cache.
        batch_size: b, the number of examples that will attend to the prefix.

    Returns:
        A ``transformers`` ``DynamicCache`` whose layers hold (b, kv_heads, n, head_dim) keys and values.
    """
    from transformers import DynamicCache

    body, _ = body_and_head(model)
    out = body(inputs_embeds=prefix.unsqueeze(0), use_cache=True)  # keys/values (1, h, n, hd) per layer
    shared = [(layer.keys.expand(batch_size, -1, -1, -1), layer.values.expand(batch_size, -1, -1, -1))
              for layer in out.past_key_values.layers]
    return DynamicCache(ddp_cache_data=shared, config=body.config)


def compile_prefix(model: nn.Module, prompt: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The soft prompt's per-layer (key, value), each (1, kv_heads, p, head_dim) fp32: constants of (model, prompt).

    What a bundle stores as its compiled prefix and what an export feeds the graph as past keys/values.
    """
    from spulctl.distributed import inference

    with inference():
        cache = prompt_prefix_cache(model, prompt.to(next(model.parameters()).dtype), 1)
        return [(layer.keys.float().contiguous().clone(), layer.values.float().contiguous().clone())
                for layer in cache.layers]


def _states(model: nn.Module, batch: Batch, prompt: torch.Tensor | None, opts: StepOptions,
            shared: int | None = None):
    """Run the body (with the prompt, if any); return final hidden states and the offset of ``batch``'s positions.

    Args:
        shared: the batch's shared leading token count when the caller knows it (the CUDA-graph step counts them
            on the host: reading them off the device would synchronise); None counts them here.

    Returns:
        ``(hidden, offset)``: hidden row ``positions + offset`` belongs to position ``positions`` of ``batch``.
        Shared-prefix path: (b, t - c, d), offset -c (prompt and the c shared tokens live in the KV cache);
        concatenated prompt: (b, p + t, d), offset p; no prompt: (b, t, d), offset 0.
    """
    import torch

    from spulctl.distributed import sharded

    if opts.shared_prefix and sharded():  # FSDP: every batch one pass, so all ranks run as many (lockstep)
        opts = replace(opts, shared_prefix=False)
    body, _ = body_and_head(model)
    b, p = len(batch), 0 if prompt is None else prompt.shape[0]
    # Shared tokens: not while training with dropout (one mask would serve every row), and without a prompt only
    # on the CPU (there they cost an extra model call, which a launch-bound GPU pays more for than it saves).
    share = opts.shared_prefix and not body.training and (p > 0 or batch.input_ids.device.type == "cpu")
    c = (shared_token_count(batch) if shared is None else shared) if share else 0
    if not p and not c:
        out = body(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        return out.last_hidden_state, 0
    embed = body.get_input_embeddings()  # (V, d) table, frozen
    kernel = bool(opts.prepend_kernel and p)
    if kernel:
        from spulctl.kernels.prompt_prepend import prompt_prepend
    if opts.shared_prefix:
        if kernel:  # φ cast once (1, p, d) and the gathered token embeddings (b, t, d)
            phi, embeds = prompt_prepend(prompt, embed.weight, batch.input_ids, embed.weight.dtype, shared=True)
            phi = phi[0]
        else:
            embeds = embed(batch.input_ids)  # (b, t, d)
            phi = None if prompt is None else prompt.to(embeds.dtype)
        prefix = embeds[0, :c] if phi is None else torch.cat([phi, embeds[0, :c]])  # (p + c, d)
        cache = prompt_prefix_cache(model, prefix, b)
        mask = torch.cat([batch.attention_mask.new_ones(b, p + c), batch.attention_mask[:, c:]], dim=1)
        out = body(inputs_embeds=embeds[:, c:], attention_mask=mask, past_key_values=cache, use_cache=True)
        return out.last_hidden_state, -c  # positions p + c .. p + t - 1 in the model's frame
    # the prompt concatenated to every row's embeddings (p > 0 here)
    if kernel:
        full = prompt_prepend(prompt, embed.weight, batch.input_ids, embed.weight.dtype)  # (b, p + t, d)
    else:
        embeds = embed(batch.input_ids)
        full = torch.cat([prompt.to(embeds.dtype).unsqueeze(0).expand(b, -1, -1), embeds], dim=1)  # (b, p + t, d)
    mask = torch.cat([batch.attention_mask.new_ones(b, p), batch.attention_mask], dim=1)  # (b, p + t)
    return body(inputs_embeds=full, attention_mask=mask, use_cache=False).last_hidden_state, p


def _body_mode(model: nn.Module, opts: StepOptions):
    """The lean-SwiGLU and grouped-attention contexts that ``opts`` asks for."""
    from contextlib import ExitStack

    from spulctl.attention import grouped_attention_mode
    from spulctl.lean_mlp import lean_swiglu

    stack = ExitStack()
    if opts.lean_mlp:
        stack.enter_context(lean_swiglu(model))
    if opts.grouped_attention:
        stack.enter_context(grouped_attention_mode(body_and_head(model)[0]))
    return stack


def prompted_hidden(model: nn.Module, batch: Batch, prompt: torch.Tensor | None,
                    opts: StepOptions | None = None, shared: int | None = None) -> torch.Tensor:
    """Final hidden states at the answer positions with the soft prompt prepended.

    Args:
        prompt: (p, d) soft prompt, or None for the unprompted model.
        opts: ``shared_prefix`` picks the KV-prefix path; otherwise the prompt is concatenated to the embeddings.
        shared: the batch's shared leading token count, if known (see :func:`shared_token_count`).

    Returns:
        (b, k, d) hidden rows at ``batch.positions``.
    """
    opts = opts or StepOptions()
    with _body_mode(model, opts):
        hidden, offset = _states(model, batch, prompt, opts, shared)
    idx = (batch.positions + offset).unsqueeze(-1).expand(-1, -1, hidden.shape[-1])  # (b, k, d)
    return hidden.gather(1, idx)


def prompted_logits(model: nn.Module, batch: Batch, prompt: torch.Tensor | None,
                    opts: StepOptions | None = None) -> torch.Tensor:
    """(b, k, V) fp32 logits at the answer positions; ``answer_only=False`` builds the full logits first."""
    opts = opts or StepOptions()
    _, head = body_and_head(model)
    if opts.answer_only:
        return head(prompted_hidden(model, batch, prompt, opts)).float()
    # Naive head (the released pipeline): logits for every position, then pick the answer rows.
    with _body_mode(model, opts):
        hidden, offset = _states(model, batch, prompt, opts)
    logits = head(hidden)  # (b, t', V)
    idx = (batch.positions + offset).unsqueeze(-1).expand(-1, -1, logits.shape[-1])
    return logits.gather(1, idx).float()
