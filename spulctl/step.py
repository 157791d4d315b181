"""The forward pass every command shares: batching and the answer-only head.

Training, evaluation and export only need the model's next-token distribution at a handful of *answer
positions* per example, so we run the decoder body, gather those hidden rows and apply the output head to
them alone: ``[B, K, d] @ [d, V]`` instead of the ``[B, T, V]`` logits a plain ``model(...)`` call builds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

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


def answer_hidden(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Final hidden states at the answer positions.

    Returns:
        (b, k, d) rows of the last (normed) hidden state at ``batch.positions``.
    """
    body, _ = body_and_head(model)
    out = body(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    hidden = out.last_hidden_state  # (b, t, d)
    idx = batch.positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])  # (b, k, d)
    return hidden.gather(1, idx)


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
