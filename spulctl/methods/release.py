"""Reveal-and-Release (``--method release``): unlearn in rounds, a new orthogonal LoRA module per round.

The base model stays frozen. Round k trains a fresh rank-r LoRA module (all linear layers, ``lora_alpha = 4r``)
on records the model revealed, on top of the frozen stack of earlier modules, with an O-LoRA penalty keeping its
A rows away from theirs; then it joins the stack (:mod:`spulctl.release.lora`). The loop is
:mod:`spulctl.release.rounds`, the loss :mod:`spulctl.release.objective`. The artifact is one PEFT LoRA adapter
of rank Σ r_k (+ ``spulctl-manifest.json`` with the per-round table; ``--merge`` adds the merged model in
``merged/``). docs/release.md gives the choices and why.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from spulctl.errors import SpulError
from spulctl.methods import register
from spulctl.methods.base import UnlearnContext, reference_hidden, step_options

NEW = "new"  # the adapter name of the module being trained (the stack is lora.STACK)
ALPHA_PER_RANK = 4  # lora_alpha = 4·r: the scaling of the SPUL release's LoRA (r 16, α 64) and O-LoRA's (r 8, α 32)


@register("release")
class Release:
    """Iterative unlearning with stacked orthogonal LoRA modules (see the module docstring)."""

    artifact = "adapter"
    uses_retain = True
    iterative = True  # unlearn: call fit_rounds instead of one fit; keep held-out slices for the round table
    default_lr = 1e-4

    @staticmethod
    def check_settings(s: Any) -> None:
        """Refuse bad Release settings with one line."""
        from spulctl.release.objective import OBJECTIVES

        if s.release_rounds < 1:
            raise SpulError(f"--release-rounds {s.release_rounds}: must be >= 1")
        if s.release_rank < 1:
            raise SpulError(f"--release-rank {s.release_rank}: must be >= 1")
        if s.ortho_lambda < 0:
            raise SpulError(f"--ortho-lambda {s.ortho_lambda}: must be >= 0")
        if s.release_objective not in OBJECTIVES:
            raise SpulError(f"--release-objective {s.release_objective}: expected one of {', '.join(OBJECTIVES)}")
        if not 0 <= s.stop_at <= 100:
            raise SpulError(f"--stop-at {s.stop_at}: a percentage in [0, 100]")
        if s.npo_beta <= 0:
            raise SpulError(f"--npo-beta {s.npo_beta}: must be > 0")
        if s.full:
            raise SpulError("--full: Release trains LoRA modules only")

    def __init__(self, ctx: UnlearnContext) -> None:
        self.ctx, self.model = ctx, ctx.model
        self.stack: dict | None = None  # layer -> (A (R, in), B (out, R)) of the finished modules
        self.rounds: list[dict] = []
        self.before: dict[str, float] = {}
        self.stop_reason = ""
        self.retain_examples: list = []
        self.ref = None  # cached reference rows of the retain examples (the same every round)
        self._penalty = None

    # ------------------------------------------------------------------ data
    def forget_targets(self, records: list[dict] | None = None, k: int = 1) -> list[list[int]] | None:
        """Generic labels (``ce``, seeded per round) or None (the true labels: ``ga``, ``npo``)."""
        if self.ctx.settings.release_objective != "ce":
            return None
        rng = random.Random(self.ctx.settings.train.seed + 1000 * (k - 1))
        return [rng.choice(self.ctx.vocab.generic_ids) for _ in (self.ctx.forget if records is None else records)]

    def training_rows(self, records: list[dict], k: int) -> list:
        """Round k's encoded rows: the revealed records (+ one variant each, as round 1 when ``--augment`` and a
        forget share), then the retain rows of round 1."""
        from spulctl.data.rewrite import forget_variants
        from spulctl.data.task import encode

        ctx, s = self.ctx, self.ctx.settings
        rows = list(records)
        if s.augment and s.forget_share > 0:
            rows += forget_variants(records, ctx.extra.get("entities") or [], s.train.seed + k)
        self.n_forget = len(rows)
        return encode(rows, ctx.task, ctx.tokenizer, ctx.vocab, targets=self.forget_targets(rows, k),
                      max_length=ctx.extra.get("max_length")) + self.retain_examples

    def relabel(self, records: list[dict]) -> list[dict]:
        """Records labelled with the base model's answer (restricted to the label words): what it knew."""
        if not records:
            return []
        from spulctl.evaluate.metrics import predict

        words = self.ctx.task.label_words
        pred = predict(self.model, self._encode(records, relabel=True), self.ctx.vocab,
                       self.ctx.tokenizer.pad_token_id, self.ctx.settings.eval_batch_size, logits_fn=self._base_logits)
        return [{**r, "revealed_label": r.get("label"), "label": words[int(i)]}
                for r, i in zip(records, pred.restricted, strict=True)]

    def known_share(self, records: list[dict]) -> float:
        """Percent of ``records`` the current model answers with their label (full-vocabulary top-1)."""
        from spulctl.evaluate.metrics import predict

        pred = predict(self.model, self._encode(records), self.ctx.vocab, self.ctx.tokenizer.pad_token_id,
                       self.ctx.settings.eval_batch_size, logits_fn=self.live_scorer())
        return round(100.0 * float(pred.correct.mean()), 2)

    def heldout_metrics(self) -> dict[str, float]:
        """Accuracy (%) of the current model on the held-out forget and retain slices (never trained on)."""
        out = {}
        for key, name in (("held_forget", "forget_acc"), ("held_retain", "retain_acc")):
            rows = self.ctx.extra.get(key) or []
            if rows:
                out[name] = self.known_share(rows)
        return out

    def _encode(self, records: list[dict], relabel: bool = False) -> list:
        from spulctl.data.task import encode

        ctx = self.ctx
        rows = [{**r, "label": ctx.task.label_words[0]} for r in records] if relabel else records
        return encode(rows, ctx.task, ctx.tokenizer, ctx.vocab, max_length=ctx.extra.get("max_length"))

    # ------------------------------------------------------------------ modules
    def objective(self, examples: list, n_forget: int, ref_key: str) -> Any:
        """Round 1's objective over the rows ``unlearn`` prepared (forget first, then retain)."""
        self.retain_examples, self.ref_key, self.n_forget = examples[n_forget:], ref_key, n_forget
        return self.round_objective(examples, 1)

    def round_objective(self, examples: list, k: int) -> Any:
        """A fresh module on top of the frozen stack, and the round's :class:`ReleaseObjective`."""
        import torch

        from spulctl.release.objective import ReleaseObjective, label_logp, release_weights
        from spulctl.step import body_and_head, prompted_logits

        ctx, s = self.ctx, self.ctx.settings
        opts = step_options(s)
        base = self._unwrap()
        device = next(base.parameters()).device
        if self.ref is None and s.beta > 0 and opts.cached_reference:
            self.ref = reference_hidden(base, self.retain_examples, ctx.tokenizer.pad_token_id,
                                        ctx.ckpt_dir / "reference.safetensors", self.ref_key, s.eval_batch_size,
                                        ctx.emit)
        torch.manual_seed(s.train.seed + k)
        self._wrap(base)
        n_f = self.n_forget
        ref_logp = None
        if s.release_objective == "npo":
            ref_logp = label_logp(self.model, examples[:n_f], ctx.tokenizer.pad_token_id, s.eval_batch_size,
                                  lambda b: self._base_logits(self.model, b))
        self.model.train()
        params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

        def reference_logits(batch):
            with self.model.disable_adapter():
                return prompted_logits(self.model, batch, None, opts)

        return ReleaseObjective(examples, n_f, params, logits_fn=lambda b: prompted_logits(self.model, b, None, opts),
                                ref_hidden=self.ref, ref_logits_fn=reference_logits, head=body_and_head(base)[1],
                                weights=release_weights(s.release_objective, s.alpha, s.beta, s.kl_direction),
                                pad_id=ctx.tokenizer.pad_token_id, device=device,
                                forget_objective=s.release_objective, ref_logp=ref_logp, npo_beta=s.npo_beta,
                                penalty=self._penalty, ortho_lambda=s.ortho_lambda)

    def _wrap(self, base: Any) -> None:
        """``base`` + the frozen stack (if any) + a new trainable module; sets the penalty closure."""
        from peft import LoraConfig, get_peft_model

        from spulctl.release.lora import STACK, lora_layers, ortho_penalty, stacked_model

        s = self.ctx.settings
        new_cfg = LoraConfig(r=s.release_rank, lora_alpha=ALPHA_PER_RANK * s.release_rank, lora_dropout=s.lora.dropout,
                             target_modules=s.lora.peft_config().target_modules, task_type="CAUSAL_LM", bias="none")
        if self.stack is None:
            self.model = get_peft_model(base, new_cfg, adapter_name=NEW)
            self._penalty = None
            return
        self.model = stacked_model(base, self.stack)
        self.model.add_adapter(NEW, new_cfg)
        self.model.base_model.set_adapter([STACK, NEW])
        for name, p in self.model.named_parameters():
            p.requires_grad_(f".{NEW}." in name)
        device = next(base.parameters()).device
        prev = {n: a.to(device) for n, (a, _) in self.stack.items()}  # (R, in) each, frozen
        new = {n: m.lora_A[NEW].weight for n, m in lora_layers(self.model, NEW).items()}  # (r, in) each, trained
        self._penalty = lambda: ortho_penalty(prev, new)

    def finish_round(self) -> float:
        """Freeze the new module into the stack; returns its final (unweighted) penalty."""
        from spulctl.release.lora import read_module, stack_modules, stacked_model

        penalty = float(self._penalty().detach()) if self._penalty is not None else 0.0
        self.stack = stack_modules(self.stack, read_module(self.model, NEW))
        self.model = stacked_model(self._unwrap(), self.stack)
        self._penalty = None
        return penalty

    def restore(self, stack: dict, rounds: list[dict], before: dict) -> None:
        """Resume: the finished rounds' stack and table."""
        from spulctl.release.lora import stacked_model

        self.stack, self.rounds, self.before = stack, rounds, before
        self.model = stacked_model(self._unwrap(), stack)

    def _unwrap(self) -> Any:
        """The plain base model (PEFT layers removed, weights untouched)."""
        return self.model.unload() if hasattr(self.model, "peft_config") else self.model

    def _base_logits(self, _model: Any, batch: Any) -> Any:
        """``(model, batch) -> (b, k, V)`` logits of the base model (every module switched off)."""
        from spulctl.step import answer_logits

        if hasattr(self.model, "disable_adapter"):
            with self.model.disable_adapter():
                return answer_logits(self.model, batch)
        return answer_logits(self.model, batch)

    # ------------------------------------------------------------------ loop, scoring, artifact
    def fit_rounds(self, objective: Any, *args: Any, **kw: Any) -> Any:
        """The rounds (:func:`spulctl.release.rounds.run_rounds`, same arguments as :func:`spulctl.train.fit`)."""
        from spulctl.release.rounds import run_rounds

        return run_rounds(self, objective, *args, **kw)

    def live_scorer(self):
        from spulctl.step import answer_logits

        return lambda _model, batch: answer_logits(self.model, batch)

    scorer = live_scorer

    def save(self, stage: Path, meta: dict[str, Any]) -> None:
        """The stack as one PEFT LoRA adapter + tokenizer + manifest (+ ``merged/`` with ``--merge``)."""
        import json

        from spulctl.io import write_json_atomic
        from spulctl.release.lora import CONFIG_FILE, MANIFEST, MANIFEST_KIND, rank

        s = self.ctx.settings
        meta["release"] = {"rounds": self.rounds, "before": self.before, "stop": self.stop_reason,
                           "rank": rank(self.stack), "modules": sum(bool(r.get("trained")) for r in self.rounds),
                           "objective": s.release_objective, "ortho_lambda": s.ortho_lambda,
                           "module_rank": s.release_rank, "module_alpha": ALPHA_PER_RANK * s.release_rank}
        self.model.save_pretrained(stage, safe_serialization=True)
        cfg = json.loads((stage / CONFIG_FILE).read_text())
        write_json_atomic(stage / CONFIG_FILE, {**cfg, "base_model_name_or_path": s.model})
        self.ctx.tokenizer.save_pretrained(stage)
        write_json_atomic(stage / MANIFEST, {"kind": MANIFEST_KIND, **meta})
        if s.merge:
            merged = self.model.merge_and_unload()
            merged.save_pretrained(stage / "merged", safe_serialization=True)
            self.ctx.tokenizer.save_pretrained(stage / "merged")
            write_json_atomic(stage / "merged" / MANIFEST, {"kind": "unlearned-model", **meta})
