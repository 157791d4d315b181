"""Familiarize: fit the base model to the task (LoRA or QLoRA), merge, save a plain HF directory.

The paper familiarizes the model with train_forget ∪ train_retain before unlearning, so there is something to
forget. The loss is on the label-word tokens only (answer-only head: no [B, T, V] logits); on NER splits
(``spulctl data ner``) it is on every token of the answer (teacher forcing) and the test splits are scored by
generation (per-type precision / recall / F1). QLoRA trains the adapter on an NF4 base and merges it into a
full-precision copy of the base at the end.

With ``never_seen`` (``--never-seen``) train_forget is left out entirely: the result is the model that never saw
the forget set, the reference an unlearned model is compared with (its forget accuracy in ``eval``; the reference
membership-inference attack of ``eval --mia-reference``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from spulctl.data.ner import load_ner_split
from spulctl.data.readers import find_split_file, load_split
from spulctl.data.task import TaskSpec, is_generative, task_for_splits
from spulctl.distributed import fsdp_requested, rank_private_dir
from spulctl.errors import SpulError
from spulctl.io import check_output_dir, sha256_file, staged_dir, write_json_atomic
from spulctl.train import TrainConfig, fit

MANIFEST = "spulctl-manifest.json"


@dataclass
class LoraSettings:
    """LoRA adapter settings (defaults from the SPUL release: r=16, alpha=64, dropout=0.1, all linear layers)."""

    r: int = 16
    alpha: int = 64
    dropout: float = 0.1
    target_modules: str = "all-linear"

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise SpulError(f"lora: invalid settings r={self.r} alpha={self.alpha} dropout={self.dropout}")

    def peft_config(self) -> Any:
        """The matching ``peft.LoraConfig``."""
        from peft import LoraConfig

        targets = self.target_modules if self.target_modules == "all-linear" else self.target_modules.split(",")
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=targets,
                          task_type="CAUSAL_LM", bias="none")


@dataclass
class FamiliarizeConfig:
    """Everything ``spulctl familiarize`` needs.

    Attributes:
        model: base model spec.
        splits: directory with train_forget / train_retain (/ test_*) files.
        out: output model directory.
        lora: adapter settings.
        train: optimisation settings.
        load_in_4bit: QLoRA (NF4 base).
        dtype: weights and activations of the base while training: ``auto`` (bf16 on CUDA, fp32 elsewhere),
            ``float32``, ``bfloat16`` or ``float16``; the LoRA adapter trains in fp32 and the merged model is saved
            in this dtype.
        retain_limit: use a seeded random subset of this many train_retain records (None = all).
        eval_limit: test records per split for the final accuracy (None = all, 0 = skip).
        task: template and label words.
        eval_batch_size: batch size of the final evaluation.
        max_length: tokens per example; longer texts are cut (:mod:`spulctl.data.truncate`). None: the model's
            context window.
        never_seen: train on train_retain only (train_forget is neither read nor required); the manifest records
            it (``never_seen: true``, ``records.train_forget: 0``).
    """

    model: str
    splits: Path
    out: Path
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=2e-4, epochs=1, batch_size=16,
                                                                    max_grad_norm=1.0, weight_decay=0.0))
    load_in_4bit: bool = False
    dtype: str = "auto"
    retain_limit: int | None = None
    eval_limit: int | None = 1000
    task: TaskSpec = field(default_factory=TaskSpec)
    eval_batch_size: int = 32
    recipe: dict[str, Any] | None = None  # the --config recipe (path, sha256, content), copied into the manifest
    max_length: int | None = None
    never_seen: bool = False


class _LabelObjective:
    """CE on the target tokens at the answer positions (what familiarization minimises): the label word, or every
    token of an NER answer."""

    def __init__(self, model, examples, pad_id: int) -> None:
        self.model, self.examples, self.pad_id = model, examples, pad_id
        self.device = next(model.parameters()).device

    def named_parameters(self):
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def lengths(self) -> list[int]:
        return [len(e.input_ids) for e in self.examples]

    def loss(self, indices: list[int], within: list[int] | None = None):
        """Mean CE over ``indices``; with ``within`` (the whole batch), this micro-batch's share of its mean."""
        from spulctl.step import answer_logits, collate, target_ce

        batch = collate([self.examples[i] for i in indices], self.pad_id, indices).to(self.device)
        loss = target_ce(answer_logits(self.model, batch), batch.targets)
        if within is not None:
            loss = loss * (len(indices) / len(within))
        return {"loss": loss}


def familiarize(cfg: FamiliarizeConfig, resume: bool = False, overwrite: bool = False,
                on_event: Callable[[dict], None] | None = None) -> dict:
    """Fit LoRA/QLoRA on train_forget ∪ train_retain (train_retain only with ``never_seen``), merge, save, evaluate
    on the test splits.

    Returns:
        The manifest written next to the model (base fingerprint, data hashes, config, metrics).
    """
    import torch
    from peft import get_peft_model, get_peft_model_state_dict

    from spulctl.data.task import encode, label_vocab
    from spulctl.data.truncate import POLICY, resolve_max_length, truncation_note
    from spulctl.models import fingerprint, load_model

    if fsdp_requested():
        raise SpulError("FSDP shards frozen bases only: familiarize trains LoRA weights inside the layers; launch "
                        "it data-parallel (without --use_fsdp)")
    if (private := rank_private_dir(cfg.out)) is not None:  # accelerate rank > 0: trains, writes nothing shown
        cfg, on_event, overwrite = replace(cfg, out=private), None, True
    emit = on_event or (lambda _e: None)
    note = lambda m: emit({"kind": "note", "message": m})  # noqa: E731
    ckpt = cfg.out.parent / f".{cfg.out.name}.ckpt"
    if not (resume and ckpt.is_dir()):  # --resume with nothing to resume still must not clobber an output
        check_output_dir(cfg.out, overwrite)
    trained_on = ("train_retain",) if cfg.never_seen else ("train_forget", "train_retain")
    task = task_for_splits(cfg.task, cfg.splits)  # cfg.task itself unless the splits are NER splits
    load = load_ner_split if is_generative(task) else load_split
    forget = [] if cfg.never_seen else load(cfg.splits, "train_forget", note)
    retain = load(cfg.splits, "train_retain", note)
    if cfg.retain_limit is not None and cfg.retain_limit < len(retain):
        retain = random.Random(cfg.train.seed).sample(retain, cfg.retain_limit)
    records = forget + retain
    note(f"training on {len(forget)} forget + {len(retain)} retain records"
         + (" (--never-seen: train_forget left out)" if cfg.never_seen else ""))
    torch.manual_seed(cfg.train.seed)
    model, tok = load_model(cfg.model, dtype=cfg.dtype, load_in_4bit=cfg.load_in_4bit, progress=note)
    base_fp = fingerprint(model)
    if cfg.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, cfg.lora.peft_config())
    model.train()
    max_length = resolve_max_length(model.config, 0, cfg.max_length)
    if is_generative(task):
        from spulctl.data.ner import encode_ner

        examples = encode_ner(records, task, tok, max_length)
    else:
        vocab = label_vocab(cfg.task, tok)
        examples = encode(records, cfg.task, tok, vocab, max_length=max_length)
    truncation = {"max_length": max_length, "policy": POLICY, "truncated": sum(e.truncated for e in examples)}
    truncation_note(emit, "familiarize", truncation["truncated"], len(examples), max_length)
    data_hashes = {n: sha256_file(find_split_file(cfg.splits, n)) for n in trained_on}
    run_key = {"model": cfg.model, "data": data_hashes, "lora": asdict(cfg.lora), "4bit": cfg.load_in_4bit,
               **({"dtype": cfg.dtype} if cfg.dtype != "auto" else {}), "retain_limit": cfg.retain_limit,
               "task": task.to_dict(), "max_length": max_length,
               **({"never_seen": True} if cfg.never_seen else {})}  # older checkpoints keep their key
    result = fit(_LabelObjective(model, examples, tok.pad_token_id), cfg.train, ckpt, resume, emit, run_key)
    model.eval()
    if cfg.load_in_4bit:
        merged = _merge_into_full_precision(cfg, get_peft_model_state_dict(model), note)
    else:
        merged = model.merge_and_unload()
    metrics = evaluate_splits(merged, tok, task, cfg.splits, cfg.eval_limit, cfg.eval_batch_size, emit,
                              max_length=max_length)
    manifest = {
        "kind": "familiarized-model", "base_model": cfg.model, "base_fingerprint": base_fp,
        "fingerprint": fingerprint(merged), "data_sha256": data_hashes, "never_seen": cfg.never_seen,
        "trained_on": list(trained_on), "records": {"train_forget": len(forget), "train_retain": len(retain)},
        "lora": asdict(cfg.lora), "load_in_4bit": cfg.load_in_4bit, "dtype": cfg.dtype, "train": asdict(cfg.train),
        "task": task.to_dict(), "steps": result.steps, "train_seconds": round(result.seconds, 1),
        "samples_per_s": round(result.samples_per_s, 2), "loss_history": result.history, "metrics": metrics,
        "truncation": truncation,
    }
    if cfg.recipe is not None:
        manifest["recipe"] = cfg.recipe
    with staged_dir(cfg.out, overwrite=True) as stage:
        merged.save_pretrained(stage, safe_serialization=True)
        tok.save_pretrained(stage)
        write_json_atomic(stage / MANIFEST, _with_version(manifest))
    import shutil

    shutil.rmtree(ckpt, ignore_errors=True)
    return manifest


def _with_version(manifest: dict) -> dict:
    from spulctl import __version__

    return {"spulctl_version": __version__, **manifest}


def _merge_into_full_precision(cfg: FamiliarizeConfig, adapter: dict, note) -> Any:
    """QLoRA: apply the trained adapter to an unquantised copy of the base and merge it there."""
    from peft import get_peft_model, set_peft_model_state_dict

    from spulctl.models import load_model

    note("merging the QLoRA adapter into a full-precision copy of the base model")
    base, _ = load_model(cfg.model)
    peft_model = get_peft_model(base, cfg.lora.peft_config())
    set_peft_model_state_dict(peft_model, adapter)
    return peft_model.merge_and_unload().eval()


def evaluate_splits(model, tok, task: TaskSpec, splits: Path, limit: int | None, batch_size: int,
                    emit: Callable[[dict], None], names: tuple[str, ...] = ("test_retain", "test_forget"),
                    logits_fn: Callable | None = None, tag: str = "", max_length: int | None = None) -> dict:
    """Accuracy etc. on the named splits present in ``splits`` (first ``limit`` records each).

    Args:
        logits_fn: ``(model, batch) -> (b, k, V)`` scorer (e.g. with a soft prompt); default: the plain model.
        tag: prefix of the progress-bar names (``before``/``after``).
        max_length: tokens per example (resolved by the caller, who knows the prompt); None: the context window.
    """
    from spulctl.data.task import label_vocab
    from spulctl.evaluate.metrics import score_records

    if limit == 0:
        return {}
    if is_generative(task):  # NER: greedy answers scored per entity type (logits_fn does not apply)
        from spulctl.evaluate.ner_metrics import evaluate_ner_splits

        return evaluate_ner_splits(model, tok, task, splits, limit, batch_size, emit, names, tag, max_length)
    vocab = label_vocab(task, tok)
    out = {}
    for name in names:
        try:
            records = load_split(splits, name)
        except SpulError:
            continue
        out[name] = score_records(model, tok, task, vocab, records[:limit] if limit else records, batch_size, emit,
                                  f"{tag} {name}".strip(), logits_fn, max_length)
    return out
