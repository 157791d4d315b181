"""SPUL: learn a soft prompt that makes the frozen model answer a generic label on the forget data only.

The base model never changes; the artifact is a prompt bundle (``prompt.safetensors`` + ``bundle.json``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from spulctl.methods import register
from spulctl.methods.base import (
    AnswerObjective,
    UnlearnContext,
    generic_forget_targets,
    reference_hidden,
    step_options,
)


@register("spul")
class Spul:
    """Soft prompting for unlearning (the default method)."""

    artifact = "bundle"
    uses_retain = True
    default_lr = 1e-2

    def __init__(self, ctx: UnlearnContext) -> None:
        self.ctx = ctx
        self.prompt = None

    def objective(self, examples, n_forget: int, ref_key: str) -> AnswerObjective:
        """Build the soft prompt and the loss over ``examples`` (forget rows first)."""
        from dataclasses import replace

        import torch

        from spulctl.cuda_graphs import GraphedPromptLoss, graphs_apply
        from spulctl.loss import LossWeights, resolve_kernels
        from spulctl.prompt import init_vectors, soft_prompt
        from spulctl.step import body_and_head, prompted_hidden, prompted_logits

        s, ctx = self.ctx.settings, self.ctx
        device = next(ctx.model.parameters()).device
        torch.manual_seed(s.train.seed)
        init = init_vectors(ctx.model, ctx.tokenizer, s.prompt_tokens, s.prompt_init, s.train.seed,
                            **_init_text(s, ctx.extra.get("entities")))
        self.prompt = soft_prompt(init, s.prompt_encoder, s.encoder_hidden).to(device)
        kernels = resolve_kernels(s.kernels, device)
        opts = replace(step_options(s), prepend_kernel=kernels == "triton")
        _, head = body_and_head(ctx.model)
        ref = None
        if opts.cached_reference and s.beta > 0:
            ref = reference_hidden(ctx.model, examples[n_forget:], ctx.tokenizer.pad_token_id,
                                   ctx.ckpt_dir / "reference.safetensors", ref_key, s.eval_batch_size, ctx.emit)
        weights = LossWeights(forget=1.0, retain=s.alpha, kl=s.beta, kl_direction=s.kl_direction)
        graphed = None
        if graphs_apply(opts, device, ref is not None or s.beta <= 0):
            graphed = GraphedPromptLoss(ctx.model, self.prompt, head, examples, n_forget, ref, weights, opts,
                                        ctx.tokenizer.pad_token_id, kernels,
                                        note=lambda m: ctx.emit({"kind": "note", "message": m}))
        return AnswerObjective(
            examples, n_forget, [(f"prompt.{n}", p) for n, p in self.prompt.named_parameters()],
            logits_fn=lambda b: prompted_logits(ctx.model, b, self.prompt(), opts),
            ref_hidden=ref, ref_logits_fn=lambda b: prompted_logits(ctx.model, b, None, opts),
            head=head, weights=weights, pad_id=ctx.tokenizer.pad_token_id, device=device,
            hidden_fn=lambda b: prompted_hidden(ctx.model, b, self.prompt(), opts),
            ref_hidden_fn=lambda b: prompted_hidden(ctx.model, b, None, opts),
            kernels=kernels, graphed=graphed)

    def forget_targets(self) -> list[list[int]]:
        """SPUL pushes forget rows to a generic label, drawn uniformly per record (seeded)."""
        return generic_forget_targets(self.ctx)

    def scorer(self):
        """``(model, batch) -> logits`` for evaluation with the learned prompt."""
        from spulctl.step import prompted_logits

        phi = self.prompt.compiled().to(next(self.ctx.model.parameters()).device)
        return lambda model, batch: prompted_logits(model, batch, phi)

    live_scorer = scorer

    def save(self, stage: Path, meta: dict[str, Any]) -> None:
        """Write the prompt bundle into ``stage``."""
        from spulctl.bundle import save_bundle

        save_bundle(stage, self.prompt.compiled(), meta)


def _init_text(settings: Any, known: list[str] | None = None) -> dict[str, str]:
    """``text=`` for :func:`~spulctl.prompt.init_vectors`: ``--prompt-text``, or the forget entities.

    ``auto`` uses the entities when they are known (``known``: what the run resolved or inferred; else
    ``--forget-entities`` or split.json) and the plain instruction otherwise; ``entities`` insists on them.
    """
    if settings.prompt_init == "text" and settings.prompt_text:
        return {"text": settings.prompt_text}
    if settings.prompt_init not in ("entities", "auto"):
        return {}
    from spulctl.data.split import forget_entities
    from spulctl.errors import SpulError
    from spulctl.prompt import entities_text

    entities = known or forget_entities(getattr(settings, "forget_entities", ()), settings.splits, settings.forget)
    if entities:
        return {"text": entities_text(entities)}
    if settings.prompt_init == "auto":
        return {}
    raise SpulError("--prompt-init entities: needs --forget-entities or --splits from `spulctl split --by entity` "
                    "(no split.json with entities found)")


def resolve_prompt_tokens(settings: Any, tok, entities: list[str], note: Callable[[str], None]) -> int:
    """p for ``--prompt-tokens auto``: 30, or all the tokens of the initial text when it names the people.

    Only a prompt started from a text (``--prompt-init auto|entities|text``) grows; see
    :func:`spulctl.prompt.auto_prompt_tokens`.
    """
    from spulctl.prompt import MIN_PROMPT_TOKENS, auto_prompt_tokens

    if settings.prompt_init not in ("auto", "entities", "text"):
        return MIN_PROMPT_TOKENS
    text = _init_text(settings, entities).get("text")
    p, n = auto_prompt_tokens(tok, text)
    if n > p:
        note(f"soft prompt: p = {p} tokens (the most --prompt-tokens auto gives); the initial text naming "
             f"{len(entities)} forget entities has {n}, its last {n - p} tokens are left out")
    elif n > MIN_PROMPT_TOKENS:
        note(f"soft prompt: p = {p} tokens, room for the whole initial text naming {len(entities)} forget "
             "entities (--prompt-tokens N to fix p)")
    return p
