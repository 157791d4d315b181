"""The one truncation policy for every place spulctl turns a record's text into tokens.

Training, evaluation, export and prediction all go through :func:`fit_prompts`, so a long record is cut the same way
everywhere:

* **Budget.** An example may hold ``max_length`` tokens: the filled template plus the target (label) tokens. The
  default ``max_length`` is the model's context window (``config.max_position_embeddings``) minus the soft prompt's
  ``p`` tokens where a prompt is prepended (:func:`resolve_max_length`).
* **What is cut.** Only the record's *text*. The template before and after ``{text}`` (the question) and the answer
  position stay intact; the text keeps its first tokens and loses its end, at a token boundary, and the shortened
  text is tokenised again inside the template (so the ids are those of a real string).
* **Unchanged when it fits.** A prompt within the budget is tokenised whole, exactly as without a policy.
* **Bounded cost.** Before any tokenisation a text is cut to ``CHARS_PER_TOKEN × max_length`` characters, so a
  200,000-word record is never tokenised whole. A text cut there counts as truncated even if the rest would have fit.
* **Counted.** Every example says whether its text was cut; commands report how many were, in their events and in
  the artifact's manifest or report.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from spulctl.errors import DataError, SpulError

if TYPE_CHECKING:
    from spulctl.data.task import TaskSpec

CHARS_PER_TOKEN = 16  # character pre-cut bound per budget token: no common tokenizer averages longer tokens
FALLBACK_MAX_LENGTH = 2048  # for a caller that knows no model (a config without max_position_embeddings)
POLICY = "text cut at its end to fit max_length tokens; template and answer position kept"


def context_window(config: Any) -> int | None:
    """The model's context window in tokens (``max_position_embeddings``), or None when the config has none."""
    n = getattr(config, "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n > 0 else None


def resolve_max_length(config: Any, prompt_tokens: int = 0, max_length: int | None = None) -> int:
    """Tokens an example may hold (template + text + target) in front of which ``prompt_tokens`` are prepended.

    Args:
        config: the model's config (``model.config``).
        prompt_tokens: p, the soft prompt's length (0 for an unprompted model).
        max_length: the user's ``--max-length``; None for the default, the context window minus p.

    Raises:
        SpulError: ``max_length`` below 1, or ``max_length + p`` beyond the context window.
    """
    window = context_window(config)
    if max_length is not None:
        if max_length < 1:
            raise SpulError(f"--max-length {max_length}: must be >= 1")
        if window is not None and max_length + prompt_tokens > window:
            raise SpulError(f"--max-length {max_length}: plus the soft prompt's {prompt_tokens} tokens exceeds the "
                            f"model's context window of {window} tokens (max_position_embeddings)")
        return max_length
    if window is None:
        return FALLBACK_MAX_LENGTH
    if window - prompt_tokens < 1:
        raise SpulError(f"soft prompt of {prompt_tokens} tokens: fills the model's context window of {window} tokens")
    return window - prompt_tokens


def fit_prompts(texts: list[str], spec: TaskSpec, tokenizer: Any, budgets: list[int]) -> tuple[list[list[int]],
                                                                                                list[bool]]:
    """Token ids of each filled template, its text cut to fit the budget (see the module docstring).

    Args:
        texts: the records' texts.
        spec: the task (template).
        tokenizer: the model's tokenizer (no special tokens are added, as everywhere in spulctl).
        budgets: per text, the most prompt tokens allowed (``max_length`` minus its target tokens).

    Returns:
        ``(ids, truncated)``: per text, the prompt's token ids (at most its budget) and whether its text was cut.

    Raises:
        DataError: a budget is smaller than the template without any text.
    """
    shortened = [t[: CHARS_PER_TOKEN * max(b, 1)] for t, b in zip(texts, budgets, strict=True)]
    rows = tokenizer([spec.prompt(t) for t in shortened], add_special_tokens=False)["input_ids"] if texts else []
    out, cut, overhead = [], [], None
    for text, short, row, budget in zip(texts, shortened, rows, budgets, strict=True):
        if len(row) <= budget:
            out.append(list(row))
            cut.append(len(short) < len(text))
            continue
        if overhead is None:  # the template alone, tokenised once per call
            overhead = len(_ids(tokenizer, spec.prompt("")))
        out.append(_cut_text(short, spec, tokenizer, budget, overhead))
        cut.append(True)
    return out, cut


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _cut_text(text: str, spec: TaskSpec, tokenizer: Any, budget: int, overhead: int) -> list[int]:
    """The filled template with the longest leading piece of ``text`` (at a token boundary) that fits ``budget``."""
    if overhead > budget:
        raise DataError(f"max length: the template alone is {overhead} tokens, more than the {budget} a prompt may "
                        "hold here; raise --max-length")
    count, piece = _leading_pieces(tokenizer, text, budget - overhead)
    keep = count
    while True:
        ids = _ids(tokenizer, spec.prompt(piece(keep)))
        if len(ids) <= budget or keep == 0:  # keep == 0 is the bare template, which fits (checked above)
            return ids
        keep = max(0, keep - max(1, len(ids) - budget))  # tokens merge across the template boundary: shrink again


def _leading_pieces(tokenizer: Any, text: str, limit: int) -> tuple[int, Callable[[int], str]]:
    """``(n, piece)``: n = min(limit, tokens of ``text`` alone); ``piece(k)`` is the leading piece of ``text`` that
    holds its first k tokens (k <= n): a slice of the string (fast tokenizers' offsets), else the decoded ids."""
    if getattr(tokenizer, "is_fast", False):
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"][:limit]
        ends, last = [0], 0
        for _, end in offsets:
            last = max(last, end)
            ends.append(last)
        return len(ends) - 1, lambda k: text[: ends[k]]
    ids = _ids(tokenizer, text)[:limit]
    return len(ids), lambda k: tokenizer.decode(ids[:k])


def truncation_note(emit: Callable[[dict], None] | None, where: str, truncated: int, total: int,
                    max_length: int) -> None:
    """Emit the one-line note every command gives when it cut records (nothing when none were cut)."""
    if emit is not None and truncated:
        emit({"kind": "note", "message": f"{where}: {truncated} of {total} records longer than --max-length "
                                         f"{max_length} tokens were cut ({POLICY})"})
