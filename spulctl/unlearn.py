"""``spulctl unlearn``: read forget/retain data, run a registered method through the training loop, save.

SPUL writes a prompt bundle; the fine-tuning baselines write a model directory. Both go through a staging
directory, so an interrupted or failed run leaves no partial artifact; checkpoints live beside the output in
``.<out>.ckpt/`` until the run succeeds.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from spulctl.data.task import DEFAULT_GENERIC_LABELS, TaskSpec
from spulctl.distributed import fsdp_requested, load_kwargs, rank_private_dir, shard_frozen, world
from spulctl.errors import SpulError
from spulctl.familiarize import LoraSettings, evaluate_splits
from spulctl.io import check_output_dir, sha256_file, sha256_text, staged_dir, write_jsonl_atomic
from spulctl.train import TrainConfig, TrainResult, fit
from spulctl.unlearn_data import FORGET_FILE, RETAIN_FILE, load_inputs

Event = Callable[[dict[str, Any]], None]


@dataclass
class UnlearnConfig:
    """Settings of ``spulctl unlearn``.

    The defaults are the measured ones (docs/results.md, "Choosing the defaults"): plain prompt tuning at lr 1e-2,
    the prompt started from an instruction naming the people to forget, half of every batch forget rows, a step
    budget from the forget set's size, keep-best selection and early stop on slices that cost no forget record.

    Attributes:
        model: the (familiarized) model spec to unlearn from.
        out: output bundle (SPUL) or model directory (baselines).
        method: registered method name.
        forget, retain: data files; or ``splits`` (train_forget / train_retain, test_* used for the report).
        retain_from: unlabelled texts used as retain inputs, labelled by the model itself.
        self_generate: without any retain data, how many on-task texts off the target the model writes itself
            (:mod:`spulctl.reveal`, retain mode; 0 = half the forget set, within [256, 1024]).
        prompt_tokens: p; None = auto (:func:`spulctl.methods.spul.resolve_prompt_tokens`).
            prompt_encoder: ``none`` | ``mlp``. prompt_init: ``random`` | ``vocab`` | ``text`` |
            ``entities`` (the text "Answer unknown if the text mentions …" naming split.json's forget entities).
        prompt_text: the text for ``prompt_init=text`` (default: a generic instruction).
        alpha, beta: weights of L_r and L_kl. kl_direction: ``forward`` KL(r‖q) | ``reverse`` KL(q‖r).
        generic_labels: SPUL's forget targets.
        answer_only, shared_prefix, cached_reference: fast-step switches (all on by default).
        cuda_graphs: on CUDA, replay SPUL's step from CUDA graphs (:mod:`spulctl.cuda_graphs`; on by default).
        full: baselines fine-tune all weights instead of LoRA.
        eval_limit: records per test split in the before/after report (None = all, 0 = none).
        kernels: ``auto`` (Triton on CUDA, torch elsewhere), ``triton`` or ``torch`` for the answer-head loss.
        dtype: weights and activations: ``auto`` (bf16 on CUDA, fp32 elsewhere), ``float32``, ``bfloat16``,
            ``float16``; the soft prompt itself always trains in fp32. load_in_4bit / load_in_8bit: NF4 / int8 base.
        report_before: also score the model without the artifact (the "before" column).
        tau: train on this seeded fraction of the forget set (paper Table 3).
        eval_every: every this many epochs, score held-out slices (``holdout`` of forget and of retain, taken out
            of training); ``keep="best"`` ends with the best epoch by score = retain accuracy − forget accuracy.
        forget_share: share of every batch given to forget rows (:class:`~spulctl.data.sampling.MixedBatches`);
            0 = the paper's mixing (batches drawn from the data as it is, ``epochs`` over all of it).
        forget_passes: step budget in passes over the forget set; ``min_steps`` / ``budget_steps`` bound it
            (``train.max_steps``, when given, replaces ``budget_steps``); ``rounds`` evaluations along the way.
        augment: train on robustness variants of the forget records and, when the names are known,
            counterfactuals (names swapped) as retain rows (:mod:`spulctl.data.rewrite`).
        hard_negatives: share of the retain rows given to retain records that name other people than the forgotten
            ones (:mod:`spulctl.data.hard_negatives`; 0 = off, the retain rows drawn at random).
        forget_entities: the names to forget (default: split.json's entities, when there is one; else inferred
            from the forget records by NER). Without forget records, ``reveal_forget`` records about them (or about
            ``forget_target``, a free-text description) are revealed by the model (``reveal_budget`` texts at most,
            0 = reveal's default) — forget-data-free unlearning.
        select: score each round on the selection slices (``select_forget`` training forget records and their
            variants, ``select_retain`` held-out retain records, fresh counterfactuals), keep the best round by the
            aggregate score and stop once forget accuracy ≤ ``stop_forget_acc`` and retain drop ≤
            ``stop_retain_drop`` for ``stop_patience`` rounds in a row (:mod:`spulctl.unlearn_plan`).
        max_length: tokens per example; longer texts are cut (:mod:`spulctl.data.truncate`). None: the model's
            context window minus p for a prompt bundle.
        release_rounds, release_objective, release_rank, ortho_lambda, stop_at, npo_beta, merge: ``--method
            release`` (:mod:`spulctl.methods.release`): at most this many rounds, the forget term (``ce`` | ``ga`` |
            ``npo``), each module's LoRA rank, the orthogonality weight λ, the stop share (percent of revealed
            records still answered with their label), NPO's β, and a merged model beside the adapter.
    """

    model: str
    out: Path
    method: str = "spul"
    forget: Path | None = None
    retain: Path | None = None
    splits: Path | None = None
    retain_from: Path | None = None
    self_generate: int = 0
    prompt_tokens: int | None = None
    prompt_encoder: str = "none"
    encoder_hidden: int = 128
    prompt_init: str = "auto"
    prompt_text: str | None = None
    alpha: float = 1.0
    beta: float = 1.0
    kl_direction: str = "forward"
    generic_labels: tuple[str, ...] = DEFAULT_GENERIC_LABELS
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-2))
    lora: LoraSettings = field(default_factory=LoraSettings)
    full: bool = False
    answer_only: bool = True
    shared_prefix: bool = True
    cached_reference: bool = True
    cuda_graphs: bool = True
    eval_limit: int | None = 1000
    eval_batch_size: int = 32
    retain_limit: int | None = None
    eval_every: int = 0
    keep: str = "last"
    holdout: float = 0.1
    tau: float = 1.0
    report_before: bool = True
    kernels: str = "auto"
    dtype: str = "auto"
    load_in_4bit: bool = False
    load_in_8bit: bool = False
    max_length: int | None = None
    forget_share: float = 0.5
    forget_passes: float = 10.0
    min_steps: int = 200
    budget_steps: int = 600
    rounds: int = 10
    augment: bool = True
    hard_negatives: float = 0.25
    forget_entities: tuple[str, ...] = ()
    select: bool = True
    select_forget: int = 100
    select_retain: int = 200
    stop_forget_acc: float = 3.0
    stop_retain_drop: float = 0.5
    stop_patience: int = 2
    forget_target: str | None = None
    reveal_forget: int = 300
    reveal_budget: int = 0
    release_rounds: int = 3
    release_objective: str = "ce"
    release_rank: int = 8
    ortho_lambda: float = 0.5
    stop_at: float = 10.0
    npo_beta: float = 0.1
    merge: bool = False
    recipe: dict[str, Any] | None = None  # the --config recipe (path, sha256, content), copied into bundle.json

    def __post_init__(self) -> None:
        from spulctl.loss import LossWeights
        from spulctl.methods import get_method

        check = getattr(get_method(self.method), "check_settings", None)  # a method's own options
        if check is not None:
            check(self)
        if self.prompt_tokens is not None and self.prompt_tokens <= 0:
            raise SpulError(f"--prompt-tokens {self.prompt_tokens}: must be >= 1")
        LossWeights(retain=self.alpha, kl=self.beta, kl_direction=self.kl_direction)
        if self.splits is None and self.forget is None and not self.forget_entities and not self.forget_target:
            raise SpulError("unlearn: give --forget FILE, --splits DIR, or the names (--forget-entities) / a "
                            "description (--forget-target) for the model to reveal the forget set from")
        if self.keep not in ("last", "best") or (self.keep == "best" and not self.eval_every):
            raise SpulError(f"--keep {self.keep}: expected last, or best together with --eval-every N")
        from spulctl.loss import KERNEL_CHOICES

        if self.kernels not in KERNEL_CHOICES:
            raise SpulError(f"--kernels {self.kernels}: expected one of {', '.join(KERNEL_CHOICES)}")
        if not 0 < self.tau <= 1:
            raise SpulError(f"--tau {self.tau}: must be in (0, 1]")
        if self.eval_every < 0 or not 0 < self.holdout < 1:
            raise SpulError(f"--eval-every {self.eval_every} / holdout {self.holdout}: out of range")
        if self.self_generate < 0:
            raise SpulError(f"--self-generate {self.self_generate}: must be >= 0 (0 = auto)")
        if not 0 <= self.hard_negatives < 1:
            raise SpulError(f"--hard-negatives {self.hard_negatives}: must be in [0, 1)")
        if not 0 <= self.forget_share <= 1:
            raise SpulError(f"--forget-share {self.forget_share}: must be in [0, 1] (0 = the data's own mix)")
        if self.forget_passes <= 0 or self.min_steps < 1 or self.budget_steps < 1 or self.rounds < 1:
            raise SpulError(f"step budget: --forget-passes {self.forget_passes}, --min-steps {self.min_steps}, "
                            f"--budget-steps {self.budget_steps}, --rounds {self.rounds}: each must be positive")
        if self.forget_share > 0 and (self.eval_every or self.keep == "best"):
            raise SpulError("--eval-every/--keep best belong to --forget-share 0 (with a forget share, selection "
                            "runs every round: --select/--no-select)")
        if not self.generic_labels or not all(g.strip() for g in self.generic_labels):
            raise SpulError(f"--generic-labels: need at least one non-empty word, got {list(self.generic_labels)}")


def unlearn(cfg: UnlearnConfig, resume: bool = False, overwrite: bool = False, on_event: Event | None = None,
            reveal: Callable[..., list[dict]] | None = None) -> dict:
    """Run ``cfg.method`` and save its artifact; returns the metadata written with it. ``reveal`` (``(model, k) ->
    forget records``) replaces the reveal call of iterative methods' later rounds (tests, library use); default:
    :func:`spulctl.unlearn_data.revealed_forget` on the names / target. NER splits: :mod:`spulctl.unlearn_ner`."""
    from spulctl.data.ner import is_ner_splits

    if cfg.splits is not None and is_ner_splits(cfg.splits):
        from spulctl.unlearn_ner import unlearn_ner

        return unlearn_ner(cfg, resume, overwrite, on_event, reveal)
    import torch

    from spulctl.data.task import encode, label_vocab
    from spulctl.data.truncate import POLICY, resolve_max_length, truncation_note
    from spulctl.methods import get_method
    from spulctl.methods.base import UnlearnContext
    from spulctl.models import fingerprint, load_model
    from spulctl.quantization import quantization_name

    if (private := rank_private_dir(cfg.out)) is not None:  # accelerate rank > 0: trains, writes nothing shown
        cfg, on_event, overwrite = replace(cfg, out=private), None, True
    emit = on_event or (lambda _e: None)
    note = lambda m: emit({"kind": "note", "message": m})  # noqa: E731
    ckpt = cfg.out.parent / f".{cfg.out.name}.ckpt"
    if not (resume and ckpt.is_dir()):  # --resume with nothing to resume still must not clobber an output
        check_output_dir(cfg.out, overwrite)
    forget, retain, hashes = load_inputs(cfg, note)
    method_cls = get_method(cfg.method)
    task = TaskSpec(generic_labels=tuple(cfg.generic_labels))
    quantization = quantization_name(cfg.load_in_4bit, cfg.load_in_8bit)
    if quantization != "none" and method_cls.artifact != "bundle":
        raise SpulError(f"--load-in-{quantization}: only for prompt methods (spul, hard_prompt, icul); {cfg.method} "
                        "writes fine-tuned weights into the base")
    trains_base = method_cls.artifact != "bundle"  # FSDP: refused here if it cannot be, else loaded on the CPU
    load = {"dtype": cfg.dtype, **load_kwargs(cfg.dtype, trains_base, quantization != "none")}
    model, tok = load_model(cfg.model, progress=note, quantization=quantization, **load)
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    base_fp = fingerprint(model)
    if fsdp_requested():  # accelerate launch --use_fsdp: every rank keeps 1/world of each decoder layer
        note(f"FSDP: {shard_frozen(model, trains_base)} frozen decoder layers sharded across {world()[1]} processes")
    vocab = label_vocab(task, tok)
    from spulctl.data.sampling import hold_out
    from spulctl.data.split import forget_entities, infer_forget_entities
    from spulctl.unlearn_data import retain_without_labels, revealed_forget

    entities = forget_entities(cfg.forget_entities, cfg.splits, cfg.forget)
    generated: dict[str, list[dict]] = {}  # what the model wrote or labelled itself, saved with the artifact
    if forget is None:  # forget-data-free: the model reveals what it knows about the names / the target
        forget = generated[FORGET_FILE] = revealed_forget(model, tok, task, cfg, entities, emit)
    if not entities and cfg.augment:
        entities = infer_forget_entities(forget, retain or [], emit)
    if cfg.prompt_init == "entities" and not entities and method_cls.artifact == "bundle":
        raise SpulError("--prompt-init entities: no names to start from: give --forget-entities, or --splits from "
                        "`spulctl split --by entity` (split.json lists them)")
    if cfg.prompt_tokens is None and method_cls.artifact == "bundle":
        from spulctl.methods.spul import resolve_prompt_tokens

        cfg = replace(cfg, prompt_tokens=resolve_prompt_tokens(cfg, tok, entities, note))
    max_length = resolve_max_length(model.config, cfg.prompt_tokens if method_cls.artifact == "bundle" else 0,
                                    cfg.max_length)
    retain_source = "labelled retain file"
    if retain is None and method_cls.uses_retain:
        retain, retain_source = retain_without_labels(model, tok, task, cfg, forget, entities, emit, max_length)
        generated[RETAIN_FILE] = retain
    retain = retain if method_cls.uses_retain else []
    held_f, held_r, plan, evaluate = [], [], None, None
    iterative = getattr(method_cls, "iterative", False)
    if iterative:  # held-out slices for the per-round table, taken before any augmentation
        forget, held_f = hold_out(forget, cfg.holdout, cfg.train.seed)
        retain, held_r = hold_out(retain, cfg.holdout, cfg.train.seed)
    # fixed forget share per batch, budget from the forget set, selection slices
    if cfg.forget_share > 0 and getattr(method_cls, "trains", True):
        from spulctl.unlearn_plan import build_plan, plan_notes, selection_evaluator

        plan = build_plan(forget, retain, entities, cfg, method_cls.uses_retain, note)
        forget, retain = plan.forget, plan.retain
        for line in plan_notes(plan.summary):
            note(line)
        if cfg.select:  # "before" accuracies with the plain model: built before the method touches it
            evaluate = selection_evaluator(model, tok, task, vocab, plan, lambda: method.live_scorer(),
                                           cfg.eval_batch_size, max_length, emit)
    elif cfg.eval_every and not iterative:
        forget, held_f = hold_out(forget, cfg.holdout, cfg.train.seed)
        retain, held_r = hold_out(retain, cfg.holdout, cfg.train.seed)
        note(f"held out {len(held_f)} forget + {len(held_r)} retain records for --eval-every")
    before = _report(model, tok, task, cfg, emit, "before", None, max_length) if cfg.report_before else {}
    extra: dict[str, Any] = {"entities": entities}
    if iterative:
        extra.update(held_forget=held_f, held_retain=held_r, max_length=max_length,
                     reveal=reveal or _reveal_hook(tok, task, cfg, entities, emit))
    ctx = UnlearnContext(model, tok, task, vocab, forget, retain, cfg, ckpt, emit, base_fp, extra=extra)
    method = method_cls(ctx)
    examples = (encode(forget, task, tok, vocab, targets=method.forget_targets(), max_length=max_length)
                + encode(retain, task, tok, vocab, max_length=max_length))
    truncation = {"max_length": max_length, "policy": POLICY, "truncated": sum(e.truncated for e in examples)}
    truncation_note(emit, "unlearn", truncation["truncated"], len(examples), max_length)
    ref_key = sha256_text(json.dumps([base_fp, hashes, len(retain), task.to_dict(), cfg.retain_limit,
                                      cfg.train.seed, plan.summary if plan else None], sort_keys=True))
    objective = method.objective(examples, len(forget), ref_key)
    run_key = {"model": base_fp, "data": hashes, "method": cfg.method, "settings": _settings(cfg)}
    note(f"{cfg.method}: {len(forget)} forget + {len(retain)} retain records, "
         f"{sum(p.numel() for _, p in objective.named_parameters()):,} trainable parameters")
    train_cfg, eval_every, keep_best, fit_kw = cfg.train, cfg.eval_every, cfg.keep == "best", {}
    if plan is not None:
        from spulctl.unlearn_plan import stop_rule

        train_cfg = replace(cfg.train, epochs=plan.budget.rounds, max_steps=plan.budget.steps)
        eval_every, keep_best = (1, True) if cfg.select else (0, False)
        fit_kw = {"plan": plan.batches.round, "should_stop": stop_rule(cfg).met if cfg.select else None}
    elif cfg.eval_every and not iterative:
        evaluate = _holdout_evaluator(model, tok, task, vocab, method, held_f, held_r, cfg, max_length)
    if getattr(method_cls, "trains", True):
        with torch.enable_grad():
            train = method.fit_rounds if iterative else fit  # an iterative method runs fit once per round
            result = train(objective, train_cfg, ckpt, resume, emit, run_key, evaluate, eval_every, keep_best,
                           **fit_kw)
    else:
        result = TrainResult(0, 0.0, 0.0)
    after = _report(model, tok, task, cfg, emit, "after", method.scorer(), max_length)
    meta = {
        "method": cfg.method, "settings": _settings(cfg), "task": task.to_dict(),
        "base_model": {"spec": cfg.model, "fingerprint": base_fp, "quantization": quantization},
        "data": {"sha256": hashes, "forget_records": len(forget), "retain_records": len(retain),
                 "retain_source": retain_source, "truncation": truncation,
                 "plan": plan.summary if plan else None},
        "training": {"steps": result.steps, "seconds": round(result.seconds, 1),
                     "samples_per_s": round(result.samples_per_s, 2), "loss_history": result.history,
                     "evals": result.evals, "kept": "best" if keep_best else "last",
                     "best": result.best, "stopped_early": result.stopped_early,
                     "selection_before": getattr(evaluate, "before", None)},
        "metrics": {"before": before, "after": after},
    }
    if cfg.recipe is not None:
        meta["recipe"] = cfg.recipe
    with staged_dir(cfg.out, overwrite=True) as stage:
        for name, rows in generated.items():  # what the model wrote / labelled itself: kept for inspection
            stage.mkdir(parents=True, exist_ok=True)
            write_jsonl_atomic(stage / name, rows)
            entry = {"name": name, "records": len(rows), "sha256": sha256_file(stage / name)}
            meta["data"].setdefault("generated", []).append(entry)
            if name == RETAIN_FILE:
                meta["data"]["retain_file"] = entry
        method.save(stage, meta)
    shutil.rmtree(ckpt, ignore_errors=True)
    return meta


def _reveal_hook(tok, task: TaskSpec, cfg: UnlearnConfig, entities: list[str], emit: Event):
    """``(model, k) -> records`` revealed in round k about the names / target by the model as it is now (None
    without either); a model that reveals nothing any more gives no records."""
    if not entities and not cfg.forget_target:
        return None
    from spulctl.errors import DataError
    from spulctl.unlearn_data import revealed_forget

    def reveal(model, k: int) -> list[dict]:  # round k samples with its own seed, also when resumed into it
        seeded = replace(cfg, train=replace(cfg.train, seed=cfg.train.seed + 1000 * k))
        try:
            return revealed_forget(model, tok, task, seeded, entities, emit)
        except DataError as exc:
            emit({"kind": "note", "message": f"reveal: {exc}"})
            return []

    return reveal


def _holdout_evaluator(model, tok, task: TaskSpec, vocab, method, held_f: list[dict], held_r: list[dict],
                       cfg: UnlearnConfig, max_length: int | None = None):
    """``epoch -> {forget_acc, retain_acc, score}`` on the held-out slices, with the artifact as it is now."""
    from spulctl.data.task import encode
    from spulctl.evaluate.metrics import predict

    ex_f, ex_r = (encode(held_f, task, tok, vocab, max_length=max_length),
                  encode(held_r, task, tok, vocab, max_length=max_length))

    def evaluate(_epoch: int) -> dict[str, float]:
        scorer = method.live_scorer()
        acc = {}
        for name, ex in (("forget_acc", ex_f), ("retain_acc", ex_r)):
            acc[name] = 100.0 * float(predict(model, ex, vocab, tok.pad_token_id, cfg.eval_batch_size,
                                              logits_fn=scorer).correct.mean()) if ex else 0.0
        return {**acc, "score": acc["retain_acc"] - acc["forget_acc"]}

    return evaluate


def _settings(cfg: UnlearnConfig) -> dict[str, Any]:
    d = asdict(cfg)
    for k in ("model", "out", "forget", "retain", "splits", "retain_from", "recipe"):
        d.pop(k)
    return json.loads(json.dumps(d, default=str))


def _report(model, tok, task: TaskSpec, cfg: UnlearnConfig, emit: Event, tag: str, scorer,
            max_length: int | None = None) -> dict:
    """Accuracy on the test splits (when ``--splits`` has them), with or without the learned artifact."""
    if cfg.splits is None or cfg.eval_limit == 0:
        return {}
    return evaluate_splits(model, tok, task, cfg.splits, cfg.eval_limit, cfg.eval_batch_size, emit,
                           logits_fn=scorer, tag=tag, max_length=max_length)
