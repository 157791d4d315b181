"""Plots (matplotlib, PNG): t-SNE of answer-position states (paper Fig. 1) and the forget/retain trade-off."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from spulctl.errors import MissingDependencyError

if TYPE_CHECKING:
    import torch
    from torch import nn


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError("plots need matplotlib: pip install 'spulctl[plots]'") from None
    return plt


def answer_states(model: nn.Module, tok: Any, task: Any, records: list[dict], prompt: torch.Tensor | None,
                  batch_size: int = 32, max_length: int | None = None) -> Any:
    """Last-layer hidden state at each record's answer position, (n, d) numpy (texts cut to ``max_length`` tokens
    by :mod:`spulctl.data.truncate`; None: the context window minus the prompt's length)."""
    import numpy as np
    import torch

    from spulctl.data.task import encode, label_vocab
    from spulctl.data.truncate import resolve_max_length
    from spulctl.step import bucketed_batches, collate, prompted_hidden

    max_length = max_length or resolve_max_length(model.config, 0 if prompt is None else int(prompt.shape[0]))
    examples = encode(records, task, tok, label_vocab(task, tok), max_length=max_length)
    device = next(model.parameters()).device
    out = np.zeros((len(examples), model.config.hidden_size), dtype=np.float32)
    phi = None if prompt is None else prompt.to(device)
    with torch.inference_mode():
        for idx in bucketed_batches([len(e.input_ids) for e in examples], batch_size, seed=None):
            batch = collate([examples[i] for i in idx], tok.pad_token_id, idx).to(device)
            out[idx] = prompted_hidden(model, batch, phi)[:, 0].float().cpu().numpy()
    return out


def tsne_plot(states: dict[str, Any], kinds: list[str], labels: list[str], path: Path, seed: int = 0) -> Path:
    """One t-SNE panel per state set (e.g. ``before``/``after``): colour = retain/forget, marker = label.

    Args:
        states: title -> (n, d) array, the same n records in each.
        kinds: per record, ``forget`` or ``retain``.
        labels: per record, its label word.
    """
    import numpy as np
    from sklearn.manifold import TSNE

    plt = _plt()
    fig, axes = plt.subplots(1, len(states), figsize=(6 * len(states), 5), squeeze=False)
    markers = dict(zip(sorted(set(labels)), "o^sxD", strict=False))
    colours = {"retain": "tab:blue", "forget": "tab:red"}
    for ax, (title, x) in zip(axes[0], states.items(), strict=True):
        xy = TSNE(n_components=2, random_state=seed, init="pca", perplexity=min(30, len(x) - 1)).fit_transform(x)
        for kind in ("retain", "forget"):
            for label, marker in markers.items():
                sel = np.array([k == kind and lab == label for k, lab in zip(kinds, labels, strict=True)])
                if sel.any():
                    ax.scatter(xy[sel, 0], xy[sel, 1], s=10, c=colours[kind], marker=marker, alpha=0.6,
                               label=f"{kind} / {label}")
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].legend(loc="best", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def tradeoff_plot(results: dict[str, dict[str, dict]], path: Path) -> Path:
    """Scatter of test_forget accuracy (x, lower is better) vs test_retain accuracy (y, higher) per subject."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, per in results.items():
        if "test_forget" in per and "test_retain" in per:
            x, y = per["test_forget"]["accuracy"], per["test_retain"]["accuracy"]
            ax.scatter([x], [y], s=40)
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=9)
    ax.set_xlabel("test_forget accuracy % (lower = more forgotten)")
    ax.set_ylabel("test_retain accuracy % (higher = more kept)")
    ax.set_xlim(-2, 102)
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
