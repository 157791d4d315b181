"""Membership inference: does the (un)learned model still treat the forget set as training data?

Members are train_forget records, non-members test_forget (retain splits give a control). Four attacks, each a
per-record score where **higher = more likely a member**:

* **loss**: score = −CE of the true label word at the answer position (members have lower loss),
* **Min-k % prob**: score = mean of the k % lowest next-token log-probabilities over the prompt's tokens
  (template + text), a reference-free attack on the input itself,
* **zlib** (Carlini et al. 2021): score = −(mean next-token NLL over the prompt's tokens) / (zlib-compressed length
  of the prompt in bytes): the model's log-likelihood normalised by a model-free entropy estimate, so that texts
  that are merely simple (repetitive, short) do not pass for memorised,
* **reference** (Carlini et al. 2021; the likelihood ratio of Mireshghallah et al. 2022): score = target
  log-likelihood − reference log-likelihood of the same record, both the label-word log-likelihood (−CE) the loss
  attack uses; the reference is a model given by the user (``eval --mia-reference``, e.g. one familiarized with
  ``--never-seen``), and without one this attack is skipped. The label word, not the prompt's token sequence,
  because familiarization and unlearning train on the label-word loss only: that is where seeing a record leaves
  its trace, while the prompt's tokens are never a training target; and with the loss attack's own quantity a
  reference equal to the target scores exactly 0 for every record (AUC 0.5).

Reported per attack: ROC AUC and TPR at 1 % FPR (scikit-learn). AUC ≈ 0.5 means the attack cannot tell.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from spulctl.data.task import Encoded
    from spulctl.step import Batch

ATTACKS = ("loss", "min_k", "zlib", "reference")
ATTACK_NAMES = {"loss": "loss", "min_k": "Min-k%", "zlib": "zlib", "reference": "reference"}
MODEL_MANIFEST = "spulctl-manifest.json"  # what familiarize writes next to a model (spulctl.familiarize.MANIFEST)


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
                  on_batch: Callable[[int], None] | None = None, kernels: str = "torch",
                  texts: Sequence[str] | None = None) -> dict[str, list[float]]:
    """Per-example scores of the reference-free attacks (higher = more member-like).

    Args:
        k: the Min-k % share of the prompt's tokens.
        kernels: as :func:`token_logprobs`.
        texts: per example, the prompt as a string (what the model read): adds the ``zlib`` scores.

    Returns:
        ``loss`` and ``min_k`` (and ``zlib`` with ``texts``), one score per example.
    """
    import torch

    from spulctl.loss import row_ce
    from spulctl.step import bucketed_batches, collate, prompted_logits

    device = next(model.parameters()).device
    out: dict[str, list[float]] = {a: [0.0] * len(examples) for a in ("loss", "min_k", "zlib")}
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
                out["loss"][i], out["min_k"][i] = -float(ce[row]), float(vals[:m].mean())
                if texts is not None:
                    out["zlib"][i] = zlib_score(float(vals.mean()), texts[i])
            if on_batch:
                on_batch(len(idx))
    if texts is None:
        del out["zlib"]
    return out


def zlib_bytes(text: str) -> int:
    """zlib entropy of ``text``: the length in bytes of its UTF-8 encoding compressed by :func:`zlib.compress`."""
    return len(zlib.compress(text.encode("utf-8")))


def zlib_score(mean_logprob: float, text: str) -> float:
    """The zlib attack's score: −(mean token NLL) / zlib bytes = mean token log-probability / :func:`zlib_bytes`.

    Args:
        mean_logprob: the mean next-token log-probability of ``text``'s tokens under the model (≤ 0).
        text: the string the model read.

    Returns:
        A score ≤ 0; closer to 0 (higher) = likelier than its compressibility predicts = more member-like.
    """
    return mean_logprob / zlib_bytes(text)


def likelihood_ratio(target: Sequence[float], reference: Sequence[float]) -> list[float]:
    """The reference attack's score per record: target log-likelihood − reference log-likelihood.

    Both must be the same records in the same order. A record the target fits better than a model that never saw
    it scores high; the reference cancels each record's own difficulty (an ambiguous review is hard for both).

    Raises:
        ValueError: the two lists differ in length.
    """
    if len(target) != len(reference):
        raise ValueError(f"likelihood_ratio: {len(target)} target scores vs {len(reference)} reference scores")
    return [t - r for t, r in zip(target, reference, strict=True)]


def label_loglik(model: nn.Module, examples: list[Encoded], pad_id: int, batch_size: int = 16,
                 on_batch: Callable[[int], None] | None = None) -> list[float]:
    """Per example, −CE of the true label word under ``model`` without a prompt (the loss attack's quantity)."""
    import torch

    from spulctl.loss import row_ce
    from spulctl.step import bucketed_batches, collate, prompted_logits

    device = next(model.parameters()).device
    out = [0.0] * len(examples)
    with torch.inference_mode():
        for idx in bucketed_batches([len(e.input_ids) for e in examples], batch_size, seed=None):
            batch = collate([examples[i] for i in idx], pad_id, idx).to(device)
            ce = row_ce(prompted_logits(model, batch, None), batch.targets)  # (b,)
            for row, i in enumerate(idx):
                out[i] = -float(ce[row])
            if on_batch:
                on_batch(len(idx))
    return out


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
                         kernels: str = "torch", max_length: int | None = None,
                         reference: dict[str, list[float]] | None = None) -> dict[str, Any]:
    """The attacks on forget (train vs test) and, as a control, retain (train vs test) records.

    Args:
        max_length: tokens per example (texts cut by :mod:`spulctl.data.truncate`); None: the context window
            minus the prompt's length.
        reference: per split, the reference model's label-word log-likelihood of each record of ``records``
            (:func:`reference_logliks`): adds the ``reference`` attack; None skips it.

    Returns:
        side (``forget``/``retain``) -> attack -> ``{"auc", "tpr@0.01fpr"}``.
    """
    from spulctl.data.task import encode, label_vocab
    from spulctl.data.truncate import resolve_max_length

    max_length = max_length or resolve_max_length(model.config, 0 if prompt is None else int(prompt.shape[0]))

    vocab = label_vocab(task, tok)
    scores = {}
    for split, rows in records.items():
        ex = encode(rows, task, tok, vocab, max_length=max_length)
        texts = [tok.decode(e.input_ids[:e.answer_pos + 1], skip_special_tokens=True) for e in ex]
        name = f"{tag} mia {split}"
        emit({"kind": "eval-start", "split": name, "total": len(ex)})
        scores[split] = attack_scores(model, ex, tok.pad_token_id, prompt, kernels=kernels, texts=texts,
                                      on_batch=lambda n, s=name: emit({"kind": "eval-step", "split": s, "n": n}))
        if reference is not None:
            scores[split]["reference"] = likelihood_ratio(scores[split]["loss"], reference[split])
    out: dict[str, Any] = {}
    for side in ("forget", "retain"):
        tr, te = scores.get(f"train_{side}"), scores.get(f"test_{side}")
        if tr and te:
            out[side] = {attack: auc_tpr(tr[attack], te[attack]) for attack in ATTACKS if attack in tr}
    return out


def reference_key(task: Any, prompt_tokens: int) -> str:
    """Which reference scores a subject needs: its task (template, label words) and its soft prompt's length p."""
    return json.dumps({"task": task.to_dict(), "p": prompt_tokens}, sort_keys=True)


def reference_logliks(spec: str, needs: dict[str, tuple[Any, int]], records: dict[str, list[dict]],
                      emit: Callable[[dict], None], dtype: str = "auto", max_length: int | None = None,
                      batch_size: int = 16) -> dict[str, dict[str, list[float]]]:
    """Label-word log-likelihood of every record under the reference model, once per distinct need.

    The reference is scored without a prompt, on the same records as the subjects, each example cut as the
    subject's is (``max_length``, or the context window minus the subject's p).

    Args:
        spec: the reference model (``--mia-reference``).
        needs: :func:`reference_key` -> (TaskSpec, p), one entry per distinct subject setting.
        records: split -> records, as the subjects are scored on.

    Returns:
        key -> split -> one log-likelihood per record.

    Raises:
        SpulError: the reference model cannot be loaded (naming ``--mia-reference``).
    """
    from spulctl.data.task import encode, label_vocab
    from spulctl.data.truncate import resolve_max_length
    from spulctl.errors import SpulError
    from spulctl.models import load_model

    try:
        model, tok = load_model(spec, dtype=dtype)
    except SpulError as exc:
        raise SpulError(f"--mia-reference {spec}: {exc}") from None
    out: dict[str, dict[str, list[float]]] = {}
    for key, (task, p) in needs.items():
        limit_len = resolve_max_length(model.config, p, max_length)
        vocab, out[key] = label_vocab(task, tok), {}
        for split, rows in records.items():
            ex = encode(rows, task, tok, vocab, max_length=limit_len)
            name = f"reference mia {split}"
            emit({"kind": "eval-start", "split": name, "total": len(ex)})
            step = lambda n, s=name: emit({"kind": "eval-step", "split": s, "n": n})  # noqa: E731
            out[key][split] = label_loglik(model, ex, tok.pad_token_id, batch_size, on_batch=step)
    return out


def never_seen(spec: str) -> bool | None:
    """Whether the model directory ``spec`` was familiarized with ``--never-seen`` (train_forget left out).

    Returns:
        True or False from its ``spulctl-manifest.json``; None when ``spec`` has no such manifest (an alias, a hub
        id, a model spulctl did not familiarize).
    """
    path = Path(spec) / MODEL_MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("kind") != "familiarized-model":
        return None
    return bool(manifest.get("never_seen", False))


def reference_info(spec: str | None) -> dict[str, Any]:
    """What the report says about the reference attack: its model, or why it was skipped."""
    if spec is None:
        return {"model": None, "skipped": "no --mia-reference given"}
    return {"model": spec, "never_seen": never_seen(spec)}
