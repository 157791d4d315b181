"""Sampling texts from the model: prompt formatting, batched generation and sentence clean-up."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from spulctl.errors import ModelError

if TYPE_CHECKING:
    from torch import nn

PLAIN_PREFIX = "Instruction: {instruction}\nResponse:"
MIN_WORDS, MAX_WORDS, MAX_CHARS = 4, 60, 400

_LEAD_IN = re.compile(r"^(?:(?:movie\s+|film\s+)?review|sentence|answer|response|output|text|tweet|verdict|"
                      r"in (?:a |one )?[\w-]*\s*(?:summary|sentence|words?)|"
                      r"here(?:'s| is)[^:]{0,60}|sure[^:]{0,60})\s*(?:\d+\s*)?:\s*", re.IGNORECASE)
_MARKUP = re.compile(r"(\*\*|__|`|^#+\s*|^\s*(?:[-*•]|\d+[.)])\s+)", re.MULTILINE)
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")


def has_chat_template(tok: Any) -> bool:
    """Whether the tokenizer carries a chat template."""
    return bool(getattr(tok, "chat_template", None))


def check_prompting(tok: Any, plain_prompt: bool, model_name: str) -> None:
    """Refuse a model without a chat template unless plain instruction prompts were asked for.

    Raises:
        ModelError: no chat template and ``plain_prompt`` is False.
    """
    if not has_chat_template(tok) and not plain_prompt:
        raise ModelError(f"{model_name}: the tokenizer has no chat template; pass --plain-prompt to instruct it "
                         "with a plain 'Instruction: … Response:' prefix")


def format_prompt(tok: Any, instruction: str) -> str:
    """The instruction as the model expects a user turn: its chat template, else the plain prefix."""
    if has_chat_template(tok):
        return tok.apply_chat_template([{"role": "user", "content": instruction}], tokenize=False,
                                       add_generation_prompt=True)
    return PLAIN_PREFIX.format(instruction=instruction)


def sample(model: nn.Module, tok: Any, prompts: list[str], seed: int, max_new_tokens: int = 48,
           temperature: float = 1.0, top_p: float = 0.95) -> list[str]:
    """Sample one continuation per prompt in a single left-padded batch, reproducibly.

    Args:
        prompts: formatted prompts (:func:`format_prompt`); repeat a prompt to draw several samples.
        seed: seeds this call's sampling only (the caller's RNG state is left as it was).

    Returns:
        The decoded continuations, special tokens dropped, in prompt order.
    """
    import torch

    device = next(model.parameters()).device
    side = tok.padding_side
    tok.padding_side = "left"  # every row's last prompt token sits at the same position, so sampling starts together
    try:
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)  # (b, t)
    finally:
        tok.padding_side = side
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.inference_mode():
        torch.manual_seed(seed)
        out = model.generate(**enc, do_sample=True, top_p=top_p, temperature=temperature, top_k=0,
                             max_new_tokens=max_new_tokens, pad_token_id=pad)  # (b, t + new)
    return tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def clean(raw: str, max_sentences: int = 2) -> str | None:
    """Turn a raw sample into a task input: no markup, quotes or lead-ins, the first one or two sentences.

    Returns:
        The cleaned text, or None when what is left is too short or too long to be a review sentence.
    """
    lines = [ln.strip() for ln in _MARKUP.sub("", raw).splitlines() if ln.strip()]
    # a chatty first line ("Here is a review:") introduces the text; skip it when something follows
    while len(lines) > 1 and (lines[0].endswith(":") or _LEAD_IN.fullmatch(lines[0] + " ")):
        lines.pop(0)
    text = " ".join(lines[:2])
    for _ in range(2):
        text = _LEAD_IN.sub("", text).strip().strip("\"'“”‘’ ")
    sentences = [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]
    if len(sentences) > 1 and not re.search(r"[.!?][\"'”’)]*$", sentences[-1]):
        sentences.pop()  # cut off by max_new_tokens: keep the complete sentences before it
    kept = ""
    for s in sentences[:max_sentences]:
        if kept and len(kept) + len(s) + 1 > MAX_CHARS:
            break
        kept = f"{kept} {s}".strip()
    kept = kept.strip("\"'“”‘’ ")
    words = len(kept.split())
    if not MIN_WORDS <= words <= MAX_WORDS or len(kept) > MAX_CHARS:
        return None
    return kept


def normalise(text: str) -> str:
    """Lower-case words only: the key for exact-duplicate removal."""
    return " ".join(re.findall(r"\w+", re.sub(r"['’]", "", text.lower())))


def describe_model_error(exc: Exception) -> ModelError:
    """A one-line error for a generation failure (e.g. a model that cannot generate)."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return ModelError(f"reveal: generation failed: {first}")
