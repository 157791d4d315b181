"""The fine-tuning baselines' shared machinery: LoRA (or full) fine-tuning, merged and saved as a model dir.

Each baseline (ga, rl, ga_kl, ga_gd) is a few lines in its own module: the loss weights and forget targets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spulctl.methods.base import (
    AnswerObjective,
    UnlearnContext,
    generic_forget_targets,
    reference_hidden,
    step_options,
)


class FineTuneBaseline:
    """LoRA/full fine-tuning with an :class:`AnswerObjective` (subclasses set the weights and targets).

    Attributes:
        forget_weight: +1 descends to the forget targets, -1 ascends (gradient ascent).
        use_retain_ce: include α·CE on the retain rows (GD).
        uses_retain: the method trains on retain rows at all.
        use_kl: include β·KL to the original model on the retain rows.
        generic_targets: forget targets are generic labels (RL) instead of the true labels (GA).
    """

    artifact = "model"
    default_lr = 1e-4
    uses_retain = False
    forget_weight = -1.0
    use_retain_ce = False
    use_kl = False
    generic_targets = False

    def __init__(self, ctx: UnlearnContext) -> None:
        self.ctx = ctx
        self.model = ctx.model

    def forget_targets(self) -> list[list[int]] | None:
        return generic_forget_targets(self.ctx) if self.generic_targets else None

    def objective(self, examples, n_forget: int, ref_key: str) -> AnswerObjective:
        import torch
        from peft import get_peft_model

        from spulctl.loss import LossWeights, resolve_kernels
        from spulctl.step import body_and_head, prompted_hidden, prompted_logits

        s, ctx = self.ctx.settings, self.ctx
        device = next(ctx.model.parameters()).device
        opts = step_options(s)
        _, head = body_and_head(ctx.model)
        ref = None
        if self.use_kl and opts.cached_reference:
            ref = reference_hidden(ctx.model, examples[n_forget:], ctx.tokenizer.pad_token_id,
                                   ctx.ckpt_dir / "reference.safetensors", ref_key, s.eval_batch_size, ctx.emit)
        torch.manual_seed(s.train.seed)
        if s.full:
            for p in ctx.model.parameters():
                p.requires_grad_(True)
            self.model = ctx.model
        else:
            self.model = get_peft_model(ctx.model, s.lora.peft_config())
        self.model.train()
        weights = LossWeights(forget=self.forget_weight, retain=s.alpha if self.use_retain_ce else 0.0,
                              kl=s.beta if self.use_kl else 0.0, kl_direction=s.kl_direction)

        def reference_logits(batch):
            with self.model.disable_adapter() if hasattr(self.model, "disable_adapter") else torch.no_grad():
                return prompted_logits(self.model, batch, None, opts)

        def reference_hidden_rows(batch):
            with self.model.disable_adapter() if hasattr(self.model, "disable_adapter") else torch.no_grad():
                return prompted_hidden(self.model, batch, None, opts)

        params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        return AnswerObjective(examples, n_forget, params,
                               logits_fn=lambda b: prompted_logits(self.model, b, None, opts),
                               ref_hidden=ref, ref_logits_fn=reference_logits, head=head, weights=weights,
                               pad_id=ctx.tokenizer.pad_token_id, device=device,
                               hidden_fn=lambda b: prompted_hidden(self.model, b, None, opts),
                               ref_hidden_fn=reference_hidden_rows,
                               kernels="torch" if s.full else resolve_kernels(s.kernels, device))

    def finished_model(self) -> Any:
        """The unlearned model, LoRA merged."""
        self.model.eval()
        if hasattr(self.model, "merge_and_unload"):
            self.model = self.model.merge_and_unload()
        return self.model

    def live_scorer(self):
        """Scorer for mid-training evaluation (adapters stay unmerged)."""
        from spulctl.step import answer_logits

        return lambda _model, batch: answer_logits(self.model, batch)

    def scorer(self):
        from spulctl.step import answer_logits

        model = self.finished_model()
        return lambda _model, batch: answer_logits(model, batch)

    def save(self, stage: Path, meta: dict[str, Any]) -> None:
        from spulctl.io import write_json_atomic

        model = self.finished_model()
        model.save_pretrained(stage, safe_serialization=True)
        self.ctx.tokenizer.save_pretrained(stage)
        write_json_atomic(stage / "spulctl-manifest.json", {"kind": "unlearned-model", **meta})
