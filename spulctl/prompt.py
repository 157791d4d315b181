"""The soft prompt φ ∈ R^{p×d}: plain prompt tuning or P-tuning (φ = MLP(ψ)), and its initialisation."""

from __future__ import annotations

from typing import TYPE_CHECKING

from spulctl.errors import SpulError

if TYPE_CHECKING:
    import torch
    from torch import nn

ENCODERS = ("none", "mlp")
INITS = ("random", "vocab", "text", "entities", "auto")
DEFAULT_INIT_TEXT = "Classify the sentiment of the text. Answer unknown if it mentions the forgotten people."
MIN_PROMPT_TOKENS = 30  # p when nothing asks for more (the paper's setting)
MAX_AUTO_PROMPT_TOKENS = 512  # ``--prompt-tokens auto`` never grows the prompt beyond this


def _build_module():
    import torch
    from torch import nn

    class SoftPrompt(nn.Module):
        """Soft prompt module.

        Args:
            init: (p, d) initial vectors (ψ for ``mlp``, φ for ``none``).
            encoder: ``none`` (φ is the parameter) or ``mlp`` (φ = MLP(ψ), hidden ``hidden``, as P-tuning).
            hidden: MLP width.
        """

        def __init__(self, init: torch.Tensor, encoder: str = "none", hidden: int = 128) -> None:
            super().__init__()
            if encoder not in ENCODERS:
                raise SpulError(f"--prompt-encoder {encoder}: expected one of {', '.join(ENCODERS)}")
            self.encoder_kind = encoder
            self.weight = nn.Parameter(init.detach().clone().float())  # (p, d), fp32 master
            self.mlp = None
            if encoder == "mlp":
                d = init.shape[1]
                self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                         nn.Linear(hidden, d))

        def forward(self) -> torch.Tensor:
            """Return φ, (p, d) fp32."""
            return self.weight if self.mlp is None else self.mlp(self.weight)

        @torch.no_grad()
        def compiled(self) -> torch.Tensor:
            """φ as plain vectors (what a bundle stores), (p, d) fp32 on CPU."""
            return self.forward().detach().float().cpu().contiguous()

    return SoftPrompt


_SoftPrompt = None


def soft_prompt(init: torch.Tensor, encoder: str = "none", hidden: int = 128) -> nn.Module:
    """Build a :class:`SoftPrompt` (class created lazily so importing this module does not import torch)."""
    global _SoftPrompt
    if _SoftPrompt is None:
        _SoftPrompt = _build_module()
    return _SoftPrompt(init, encoder, hidden)


def entities_text(entities: list[str]) -> str:
    """Initialisation text naming the people to forget, e.g. "Answer unknown if the text mentions Ann Lee.".

    A one-word name that is a word of a longer listed name (the surname alias "lee" beside "ann lee") is left
    out: its tokens are already in the text.
    """
    words = {w for e in entities if len(e.split()) > 1 for w in e.lower().split()}
    kept = [e for e in dict.fromkeys(entities) if len(e.split()) > 1 or e.lower() not in words]
    names = ", ".join(" ".join(w.capitalize() for w in e.split()) for e in kept)
    return f"Answer unknown if the text mentions {names}."


def auto_prompt_tokens(tokenizer, text: str | None, cap: int = MAX_AUTO_PROMPT_TOKENS) -> tuple[int, int]:
    """p for ``--prompt-tokens auto``: room for every token of the initial ``text``, at least 30, at most ``cap``.

    A prompt started from the names must hold all of them: cycled or cut to 30 tokens, a list of 50 names keeps
    about seven, and the rest start unnamed.

    Returns:
        (p, tokens of ``text``; 0 without a text).
    """
    n = len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0
    return min(cap, max(MIN_PROMPT_TOKENS, n)), n


def init_vectors(model: nn.Module, tokenizer, p: int, how: str, seed: int, text: str = DEFAULT_INIT_TEXT):
    """Initial (p, d) prompt vectors.

    Args:
        how: ``random`` (normal, scaled like the embeddings), ``vocab`` (embeddings of p random vocabulary tokens)
            or ``text``/``entities``/``auto`` (embeddings of ``text``'s tokens, cycled to length p; for ``entities``
            the caller builds ``text`` from the forget entities, see :func:`entities_text`; ``auto`` = ``entities``
            when the names are known, else the plain instruction ``DEFAULT_INIT_TEXT``).

    Raises:
        SpulError: p <= 0 or an unknown ``how``.
    """
    import torch

    if p <= 0:
        raise SpulError(f"--prompt-tokens {p}: must be >= 1")
    if how not in INITS:
        raise SpulError(f"--prompt-init {how}: expected one of {', '.join(INITS)}")
    emb = model.get_input_embeddings().weight.detach().float()  # (V, d)
    g = torch.Generator().manual_seed(seed)
    if how == "random":
        return torch.randn(p, emb.shape[1], generator=g) * emb.std()
    if how == "vocab":
        ids = torch.randint(0, emb.shape[0], (p,), generator=g)
    else:
        ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"] or [0])
        ids = ids.repeat((p + len(ids) - 1) // len(ids))[:p]
    return emb[ids.to(emb.device)].cpu().clone()
