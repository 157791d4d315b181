"""Prompt baselines with no training, shipped as prompt bundles and scored exactly like SPUL.

* ``hard_prompt``: the plain instruction "Answer unknown if the text mentions …" (or ``--prompt-text``) as real
  token embeddings in front of every query: what a user gets by just asking the model to forget.
* ``icul``: in-context unlearning in the manner of Pawelczyk et al. (2023): a context of forget examples shown
  with a generic label, interleaved with retain examples shown with their true label, all in the task's own
  template, placed in front of every query.

Both prompts are embeddings of real tokens, so the bundle is a p×d prompt like SPUL's and goes through ``eval``,
``export`` and ``predict`` unchanged; ``p`` is the context's token count.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from spulctl.methods import register
from spulctl.methods.base import UnlearnContext, generic_forget_targets

ICUL_FORGET_EXAMPLES = 4
ICUL_RETAIN_EXAMPLES = 4


class _NoParameters:
    """The objective of a method that does not train (the loop is skipped; counts report 0 parameters)."""

    def named_parameters(self) -> list:
        return []


class _FixedPromptBaseline:
    """A bundle whose prompt is the embeddings of a fixed text (subclasses choose the text)."""

    artifact = "bundle"
    uses_retain = False
    trains = False
    default_lr = 1e-2

    def __init__(self, ctx: UnlearnContext) -> None:
        self.ctx = ctx
        self.phi = None

    def text(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def objective(self, examples, n_forget: int, ref_key: str) -> _NoParameters:
        """Embed the text (p tokens, exactly as written: no cycling to ``--prompt-tokens``)."""
        import torch

        from spulctl.errors import SpulError

        ids = self.ctx.tokenizer(self.text(), add_special_tokens=False)["input_ids"]
        if not ids:
            raise SpulError(f"--method {self.name}: the prompt text tokenises to nothing")
        emb = self.ctx.model.get_input_embeddings().weight.detach()
        self.phi = emb[torch.tensor(ids, device=emb.device)].float().cpu().clone()  # (p, d)
        self.ctx.emit({"kind": "note", "message": f"{self.name}: {len(ids)} prompt tokens, no training"})
        return _NoParameters()

    def forget_targets(self) -> list[list[int]]:
        return generic_forget_targets(self.ctx)

    def scorer(self):
        """``(model, batch) -> logits`` with the fixed prompt."""
        from spulctl.step import prompted_logits

        phi = self.phi.to(next(self.ctx.model.parameters()).device)
        return lambda model, batch: prompted_logits(model, batch, phi)

    live_scorer = scorer

    def save(self, stage: Path, meta: dict[str, Any]) -> None:
        from spulctl.bundle import save_bundle

        save_bundle(stage, self.phi, {**meta, "prompt_text": self.text()})


@register("hard_prompt")
class HardPrompt(_FixedPromptBaseline):
    """The instruction naming the people to forget, as a hard prompt."""

    def text(self) -> str:
        from spulctl.data.split import forget_entities
        from spulctl.prompt import DEFAULT_INIT_TEXT, entities_text

        s = self.ctx.settings
        if s.prompt_text:
            return s.prompt_text
        names = forget_entities(s.forget_entities, s.splits, s.forget)
        return (entities_text(names) if names else DEFAULT_INIT_TEXT) + "\n\n"


@register("icul")
class InContextUnlearning(_FixedPromptBaseline):
    """Forget examples labelled generic and retain examples labelled true, as an in-context prefix."""

    uses_retain = True

    def text(self) -> str:
        s, ctx = self.ctx.settings, self.ctx
        rng = random.Random(s.train.seed)
        shots = [(r["text"], rng.choice(ctx.task.generic_labels))
                 for r in rng.sample(ctx.forget, min(ICUL_FORGET_EXAMPLES, len(ctx.forget)))]
        shots += [(r["text"], r["label"]) for r in rng.sample(ctx.retain, min(ICUL_RETAIN_EXAMPLES, len(ctx.retain)))]
        rng.shuffle(shots)
        return "".join(f"{ctx.task.prompt(t)}{ctx.task.label_prefix}{label}\n\n" for t, label in shots)
