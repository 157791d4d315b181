"""Membership inference: does the (un)learned model still treat the forget set as training data?

Members are train_forget records, non-members test_forget (retain splits give a control). Two attacks:

* **loss**: score = −CE of the true label word at the answer position (members have lower loss),
* **Min-k % prob**: score = mean of the k % lowest next-token log-probabilities over the prompt's tokens
  (template + text), a reference-free attack on the input itself.

Reported per attack: ROC AUC and TPR at 1 % FPR (scikit-learn). AUC ≈ 0.5 means the attack cannot tell.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from spulctl.data.task import Encoded
    from spulctl.step import Batch


def token_logprobs(model: nn.Module, batch: Batch, prompt: torch.Tensor | None, chunk: int = 16,
                   kernels: str = "torch") -> torch.Tensor:
    """Log-probability of each actual next token, (b, t-1), over the whole vocabulary.

    Args:
        prompt: (p, d) soft prompt, or None.
        chunk: positions per head application on the torch path (bounds memory at (b, chunk, V)).
        kernels: ``torch`` (logits in position chunks) or ``triton`` (the fused head's forward-only CE over the
            (b·(t-1), d) rows: logits never materialised). Padded positions are not scored on the Triton path
            (their value is 0); callers read only real positions.
    """
    import torch

    from spulctl.step import body_and_head, prompt_prefix_cache

    body, head = body_and_head(model)
    b = batch.input_ids.shape[0]
    if prompt is None:
        hidden = body(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    else:
        cache = prompt_prefix_cache(model, prompt.to(head.weight.dtype), b)
        mask = torch.cat([batch.attention_mask.new_ones(b, prompt.shape[0]), batch.attention_mask], dim=1)
        hidden = body(input_ids=batch.input_ids, attention_mask=mask, past_key_values=cache,
                      use_cache=True).last_hidden_state  # (b, t, d)
    nxt, hidden = batch.input_ids[:, 1:], hidden[:, :-1]  # (b, t-1): position i predicts token i+1
    if kernels == "triton":
        from spulctl.kernels.answer_head_loss import answer_head_ce

        real = batch.attention_mask[:, 1:].bool()
        targets = torch.where(real, nxt, -1).reshape(-1)  # (b·(t-1),)
        ce = answer_head_ce(hidden.reshape(-1, hidden.shape[-1]), head.weight, targets)
        return -ce.view(b, -1)
    out = []
    for s in range(0, nxt.shape[1], chunk):
        logits = head(hidden[:, s:s + chunk]).float()  # (b, c, V)
        c = logits.shape[1]
        lp = logits.gather(-1, nxt[:, s:s + c].unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
        out.append(lp)
    return torch.cat(out, dim=1)


def attack_scores(model: nn.Module, examples: list[Encoded], pad_id: int, prompt: torch.Tensor | None,
                  k: float = 0.2, batch_size: int = 16,
                  on_batch: Callable[[int], None] | None = None, kernels: str = "torch") -> dict[str, list[float]]:
    """Per-example scores of both attacks (higher = more member-like); ``kernels`` as :func:`token_logprobs`."""
    import torch

    from spulctl.loss import row_ce
    from spulctl.step import bucketed_batches, collate, prompted_logits

    device = next(model.parameters()).device
    loss_s, mink_s = [0.0] * len(examples), [0.0] * len(examples)
    phi = None if prompt is None else prompt.to(device)
    with torch.inference_mode():
        for idx in bucketed_batches([len(e.input_ids) for e in examples], batch_size, seed=None):
            batch = collate([examples[i] for i in idx], pad_id, idx).to(device)
            ce = row_ce(prompted_logits(model, batch, phi), batch.targets)  # (b,)
            lp = token_logprobs(model, batch, phi, kernels=kernels)  # (b, t-1)
            for row, i in enumerate(idx):
                n = examples[i].answer_pos  # next-token log-probs over the prompt region only
                vals = lp[row, :n].sort().values
                m = max(1, int(k * n))
                loss_s[i], mink_s[i] = -float(ce[row]), float(vals[:m].mean())
            if on_batch:
                on_batch(len(idx))
    return {"loss": loss_s, "min_k": mink_s}


def auc_tpr(member: list[float], nonmember: list[float], fpr_at: float = 0.01) -> dict[str, float]:
    """ROC AUC and TPR at ``fpr_at`` FPR for scores where members should score higher."""
    import numpy as np
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.r_[np.ones(len(member)), np.zeros(len(nonmember))]
    s = np.r_[member, nonmember]
    fpr, tpr, _ = roc_curve(y, s)
    return {"auc": float(roc_auc_score(y, s)), f"tpr@{fpr_at:g}fpr": float(np.interp(fpr_at, fpr, tpr))}


def membership_inference(model: nn.Module, tok: Any, task: Any, records: dict[str, list[dict]],
                         prompt: torch.Tensor | None, emit: Callable[[dict], None], tag: str,
                         kernels: str = "torch", max_length: int | None = None) -> dict[str, Any]:
    """Both attacks on forget (train vs test) and, as a control, retain (train vs test) records.

    Args:
        max_length: tokens per example (texts cut by :mod:`spulctl.data.truncate`); None: the context window
            minus the prompt's length.
    """
    from spulctl.data.task import encode, label_vocab
    from spulctl.data.truncate import resolve_max_length

    max_length = max_length or resolve_max_length(model.config, 0 if prompt is None else int(prompt.shape[0]))

    vocab = label_vocab(task, tok)
    scores = {}
    for split, rows in records.items():
        ex = encode(rows, task, tok, vocab, max_length=max_length)
        name = f"{tag} mia {split}"
        emit({"kind": "eval-start", "split": name, "total": len(ex)})
        scores[split] = attack_scores(model, ex, tok.pad_token_id, prompt, kernels=kernels,
                                      on_batch=lambda n, s=name: emit({"kind": "eval-step", "split": s, "n": n}))
    out: dict[str, Any] = {}
    for side in ("forget", "retain"):
        tr, te = scores.get(f"train_{side}"), scores.get(f"test_{side}")
        if tr and te:
            out[side] = {attack: auc_tpr(tr[attack], te[attack]) for attack in ("loss", "min_k")}
    return out
