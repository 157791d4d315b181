"""Sampling texts from the model: prompt formatting, batched generation and sentence clean-up."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from spulctl.errors import ModelError

if TYPE_CHECKING:
    import torch
    from torch import nn

PLAIN_PREFIX = "Instruction: {instruction}\nResponse:"
MIN_WORDS, MAX_WORDS, MAX_CHARS = 4, 60, 400

_LEAD_IN = re.compile(r"^(?:(?:movie\s+|film\s+)?review|sentence|answer|response|output|text|tweet|verdict|"
                      r"in (?:a |one )?[\w-]*\s*(?:summary|sentence|words?)|"
                      r"here(?:'s| is)[^:]{0,60}|sure[^:]{0,60})\s*(?:\d+\s*)?:\s*", re.IGNORECASE)
_MARKUP = re.compile(r"(\*\*|__|`|^#+\s*|^\s*(?:[-*•]|\d+[.)])\s+)", re.MULTILINE)
# a sentence ends at . ! ? and white space, but not after an initial or a title ("Samuel L. Jackson", "Mr. Bean")
_END = re.compile(r"[.!?…][\"'”’)\]]*$")  # a sentence that ends here is complete
_SENTENCE_END = re.compile(r"(?<=[.!?])(?<!\b[A-Z]\.)(?<!\b(?:Mr|Ms|Dr|St|Jr)\.)(?<!\bMrs\.)[\"')\]]*\s+")


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
           temperature: float = 1.0, top_p: float = 0.95, stop: Callable[[str], bool] | None = None) -> list[str]:
    """The texts of :func:`sample_rows` (whether each finished is dropped)."""
    return sample_rows(model, tok, prompts, seed, max_new_tokens, temperature, top_p, stop)[0]


def sample_rows(model: nn.Module, tok: Any, prompts: list[str], seed: int, max_new_tokens: int = 48,
                temperature: float = 1.0, top_p: float = 0.95,
                stop: Callable[[str], bool] | None = None) -> tuple[list[str], list[bool]]:
    """Sample one continuation per prompt, reproducibly, in one left-padded batch that shrinks as rows finish.

    Distinct prompts are prefilled once and their keys/values copied to every sample drawn from them (repeat a
    prompt to draw several samples). A row finishes at an end-of-sequence token or when ``stop`` says its text is
    complete; finished rows leave the batch (their cache rows are dropped), and the loop ends when none is left or
    after ``max_new_tokens`` — a batch no longer runs to the cap for its slowest row's sake.

    Args:
        prompts: formatted prompts (:func:`format_prompt`).
        seed: seeds this call's sampling only (its own generator; the global RNG is not touched).
        temperature / top_p: nucleus sampling (:func:`top_p_sample`); HF ``generate`` with ``top_k=0`` draws from
            the same distribution.
        stop: called with a row's decoded text after each token; True ends the row (e.g. :func:`finished`).

    Returns:
        The decoded continuations (special tokens dropped) in prompt order, and whether each finished (False:
        cut off by ``max_new_tokens``).
    """
    import torch

    from spulctl.distributed import inference

    device = next(model.parameters()).device
    distinct = list(dict.fromkeys(prompts))
    side = tok.padding_side
    tok.padding_side = "left"  # every row's last prompt token sits at the same position, so sampling starts together
    try:
        enc = tok(distinct, return_tensors="pt", padding=True, add_special_tokens=False).to(device)  # (u, t)
    finally:
        tok.padding_side = side
    rows = torch.tensor([distinct.index(p) for p in prompts], device=device)  # (b,) prompt of each sample
    mask = enc["attention_mask"]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (u, t) left padding shifts the positions, as generate does
    eos = _eos_ids(model, tok)
    gen = torch.Generator(device=device).manual_seed(seed)
    new: list[list[int]] = [[] for _ in prompts]
    ended = [False] * len(prompts)
    with inference():
        out = model(input_ids=enc["input_ids"], attention_mask=mask, position_ids=pos, use_cache=True,
                    **_last_logits_only(model))
        cache = out.past_key_values
        cache.batch_select_indices(rows)  # (b, h, t, hd) per layer: each sample gets its prompt's keys/values
        logits, mask, last = out.logits[rows, -1], mask[rows], pos[rows, -1]  # (b, V), (b, t), (b,)
        live = torch.arange(len(prompts), device=device)  # original row of each live row
        for step in range(max_new_tokens):
            nxt = top_p_sample(logits, temperature, top_p, gen)  # (l,)
            for r, t in zip(live.tolist(), nxt.tolist(), strict=True):
                if t not in eos:
                    new[r].append(t)
                ended[r] = t in eos or (stop is not None and stop(tok.decode(new[r], skip_special_tokens=True)))
            keep = ~torch.tensor([ended[r] for r in live.tolist()], device=device)
            if step == max_new_tokens - 1 or not keep.any():
                break
            if not keep.all():
                idx = keep.nonzero().squeeze(1)
                cache.batch_select_indices(idx)
                live, nxt, mask, last = live[idx], nxt[idx], mask[idx], last[idx]
            mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)  # (l, t + step + 1)
            last = last + 1
            out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last[:, None],
                        past_key_values=cache, use_cache=True)
            logits = out.logits[:, -1]  # (l, V)
    return tok.batch_decode(new, skip_special_tokens=True), ended


def top_p_sample(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator,
                 candidates: int = 256) -> torch.Tensor:
    """One token per row from the nucleus of ``softmax(logits / temperature)``: the fewest most likely tokens
    whose mass reaches ``top_p`` (the rule of ``transformers``' ``TopPLogitsWarper``).

    Sorting the whole vocabulary every step costs more than a small model's forward on a CPU; the nucleus almost
    always lies within the ``candidates`` most likely tokens, so only those are sorted, and a row whose nucleus is
    larger falls back to the full sort. The draw is from the renormalised nucleus either way.

    Args:
        logits: (b, V) next-token logits.

    Returns:
        (b,) token ids.
    """
    import torch

    logits = logits.float() / temperature
    probs, ids, closed = _nucleus(logits, min(candidates, logits.shape[-1]), top_p)  # (b, k), (b, k), (b,)
    out = ids.gather(1, torch.multinomial(probs, 1, generator=gen)).squeeze(1)  # (b,)
    if not closed.all():  # these rows' nucleus is wider than the candidates: draw again from the full sort
        wide = (~closed).nonzero().squeeze(1)
        probs, ids, _ = _nucleus(logits[wide], logits.shape[-1], top_p)
        out[wide] = ids.gather(1, torch.multinomial(probs, 1, generator=gen)).squeeze(1)
    return out


def _nucleus(logits: torch.Tensor, k: int, top_p: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``k`` most likely tokens of each row, their probabilities zeroed outside the nucleus (unnormalised),
    and whether the nucleus closes within them. (b, V) -> (b, k), (b, k), (b,)."""
    import torch

    vals, ids = logits.topk(k, dim=-1)  # sorted, most likely first
    p = (vals - logits.logsumexp(-1, keepdim=True)).exp()
    cum = p.cumsum(-1)
    keep = cum - p < top_p  # the mass before a token is short of top_p: the token is in (the first always is)
    closed = cum[:, -1] >= top_p if k < logits.shape[-1] else torch.ones_like(cum[:, -1], dtype=torch.bool)
    return p * keep, ids, closed


def _eos_ids(model: nn.Module, tok: Any) -> set[int]:
    """The ids that end a sample: the tokenizer's end-of-sequence token and the model's generation config's."""
    ids = {tok.eos_token_id} if tok.eos_token_id is not None else set()
    cfg = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(cfg if isinstance(cfg, (list, tuple)) else [] if cfg is None else [cfg])
    return ids


def _last_logits_only(model: nn.Module) -> dict[str, int]:
    """``logits_to_keep=1`` where the model's forward takes it (the prefill then skips (b, t, V) logits)."""
    import inspect

    forward = getattr(model, "forward", None)
    try:
        return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(forward).parameters else {}
    except (TypeError, ValueError):
        return {}


def clean(raw: str, max_sentences: int = 2) -> str | None:
    """Turn a raw sample into a task input: no markup, quotes or lead-ins, the first one or two sentences.

    Returns:
        The cleaned text, or None when what is left is too short or too long to be a review sentence.
    """
    sentences = _sentences(raw)
    if len(sentences) > 1 and not _END.search(sentences[-1]):
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


def has_sentence(raw: str) -> bool:
    """Whether the text :func:`clean` reads from ``raw`` holds a complete sentence (a sample cut off in the middle
    of its first sentence does not)."""
    sentences = _sentences(raw)
    return len(sentences) > 1 or bool(sentences and _END.search(sentences[0]))


def _sentences(raw: str) -> list[str]:
    """The sentences of the first text line of ``raw`` (markup, lead-in lines and quotes removed)."""
    lines = [ln.strip() for ln in _MARKUP.sub("", raw).splitlines() if ln.strip()]
    # a chatty first line ("Here is a review:") introduces the text; skip it when something follows
    while len(lines) > 1 and _lead_in(lines[0]):
        lines.pop(0)
    text = lines[0] if lines else ""  # what follows the first text line is another thing (a rating, hashtags)
    for _ in range(2):
        text = _LEAD_IN.sub("", text).strip().strip("\"'“”‘’ ")
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def finished(raw: str, max_sentences: int = 2) -> bool:
    """Whether a sample is complete for :func:`clean`: more text would not change what it keeps.

    True once a text line has ended (a newline after a line that is not a lead-in like "Here is a review:") or
    ``max_sentences`` sentences are complete (end punctuation followed by white space) — the stop rule of
    :func:`sample`, so a row stops where ``clean`` would cut it anyway.
    """
    lines = _MARKUP.sub("", raw).split("\n")
    if any(ln.strip() and not _lead_in(ln.strip()) for ln in lines[:-1]):
        return True
    return len(_SENTENCE_END.findall(_LEAD_IN.sub("", lines[-1].strip()))) >= max_sentences


def _lead_in(line: str) -> bool:
    """A line that introduces the text instead of being it ("Here is a review:", "Sure!": too short to be one)."""
    return line.endswith(":") or bool(_LEAD_IN.fullmatch(line + " ")) or len(line.split()) < MIN_WORDS


def normalise(text: str) -> str:
    """Lower-case words only: the key for exact-duplicate removal."""
    return " ".join(re.findall(r"\w+", re.sub(r"['’]", "", text.lower())))


def describe_model_error(exc: Exception) -> ModelError:
    """A one-line error for a generation failure (e.g. a model that cannot generate)."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return ModelError(f"reveal: generation failed: {first}")
