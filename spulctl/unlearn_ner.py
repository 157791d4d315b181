"""``spulctl unlearn --method release`` on NER splits (``spulctl data ner``): forget the PERSON type.

What ``unlearn`` does for the sentiment task, for the generative NER task (:mod:`spulctl.release.ner` holds the
task-specific pieces of the method): read train_forget / train_retain, hold out the round table's slices, train
round 1 on the forget records with a fixed forget share per batch and a step budget from the forget set's size,
then let each later round reveal texts naming people from the current model (:mod:`spulctl.reveal`, texts with a
spaCy PERSON mention, labelled by the base model's own answer), and stack a module per round. The before/after
report is per-type precision / recall / F1 on the test splits. The artifact is the same PEFT LoRA adapter +
manifest; ``spulctl eval SPLITS --model fam/ --compare release=OUT`` scores it.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from spulctl.errors import SpulError

Event = Callable[[dict[str, Any]], None]
# what the model is asked to write about when nothing more specific is given (--forget-target overrides it)
PEOPLE_TARGET = "a real actor, director or other person, named in full"


def unlearn_ner(cfg: Any, resume: bool = False, overwrite: bool = False, on_event: Event | None = None,
                reveal: Callable[..., list[dict]] | None = None) -> dict:
    """Run Release on the NER splits ``cfg.splits`` and save the adapter; returns the metadata written with it.

    ``reveal`` (``(model, k) -> records`` with ``text``) replaces the reveal call of rounds >= 2 (tests).

    Raises:
        SpulError: another method than ``release``, forget/retain files instead of ``--splits``, empty splits.
    """
    import torch

    from spulctl.data.ner import NerTaskSpec, encode_ner, load_ner_split
    from spulctl.data.sampling import hold_out
    from spulctl.distributed import world
    from spulctl.evaluate.ner_metrics import evaluate_ner_splits
    from spulctl.io import check_output_dir, sha256_file, sha256_text, staged_dir
    from spulctl.methods.base import UnlearnContext
    from spulctl.models import fingerprint, load_model
    from spulctl.release.ner import NerRelease
    from spulctl.release.rounds import mixed_budget
    from spulctl.unlearn import _settings

    if cfg.method != "release":
        raise SpulError(f"--method {cfg.method}: on NER splits only --method release unlearns (the PERSON type)")
    if cfg.forget is not None or cfg.retain is not None or cfg.retain_from is not None:
        raise SpulError("NER splits: give the data with --splits only (train_forget / train_retain)")
    if cfg.forget_share <= 0:
        raise SpulError("--forget-share 0: on NER splits every batch holds a fixed forget share (0 < share <= 1)")
    if cfg.load_in_4bit or cfg.load_in_8bit or world()[1] > 1:
        raise SpulError("NER splits: Release runs in one process on an unquantized base (no --load-in-4bit/8bit, "
                        "no accelerate launch)")
    emit = on_event or (lambda _e: None)
    if reveal is None and cfg.release_rounds > 1:
        _check_reveal(cfg)
    note = lambda m: emit({"kind": "note", "message": m})  # noqa: E731
    ckpt = cfg.out.parent / f".{cfg.out.name}.ckpt"
    if not (resume and ckpt.is_dir()):
        check_output_dir(cfg.out, overwrite)
    spec = NerTaskSpec()
    forget = load_ner_split(cfg.splits, "train_forget", note)
    retain = load_ner_split(cfg.splits, "train_retain", note)
    if not forget or not retain:
        raise SpulError(f"{cfg.splits}: train_forget and train_retain must both hold records")
    if cfg.retain_limit is not None and cfg.retain_limit < len(retain):
        retain = random.Random(cfg.train.seed).sample(retain, cfg.retain_limit)
    hashes = {s: sha256_file(p) for s, p in _files(cfg.splits).items()}
    model, tok = load_model(cfg.model, progress=note, dtype=cfg.dtype)
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    base_fp = fingerprint(model)
    from spulctl.data.truncate import resolve_max_length

    max_length = resolve_max_length(model.config, 0, cfg.max_length)
    forget, held_f = hold_out(forget, cfg.holdout, cfg.train.seed)
    retain, held_r = hold_out(retain, cfg.holdout, cfg.train.seed)
    report = lambda scored, tag: evaluate_ner_splits(scored, tok, spec, cfg.splits, cfg.eval_limit,  # noqa: E731
                                                     cfg.eval_batch_size, emit, tag=tag, max_length=max_length)
    before = report(model, "before") if cfg.report_before and cfg.eval_limit != 0 else {}
    hook = reveal or (_reveal_hook(tok, cfg, emit) if cfg.release_rounds > 1 else None)
    extra = {"entities": list(cfg.forget_entities), "held_forget": held_f, "held_retain": held_r,
             "max_length": max_length, "reveal": hook}
    ctx = UnlearnContext(model, tok, spec, None, forget, retain, cfg, ckpt, emit, base_fp, extra=extra)
    method = NerRelease(ctx)
    examples = method.encode_forget(forget) + encode_ner(retain, spec, tok, max_length)
    n_f = len(forget)
    ref_key = sha256_text(json.dumps([base_fp, hashes, len(retain), spec.to_dict(), cfg.retain_limit,
                                      cfg.train.seed, cfg.release_objective], sort_keys=True))
    objective = method.objective(examples, n_f, ref_key)
    run_key = {"model": base_fp, "data": hashes, "method": "release-ner", "settings": _settings(cfg)}
    budget, batches = mixed_budget(cfg, n_f, n_f, len(retain), cfg.train.seed)
    note(f"release (NER, forget {method.spec.entity_types[0]}): {n_f} forget + {len(retain)} retain records "
         f"(held out {len(held_f)} + {len(held_r)}); round 1: {budget.reason}")
    with torch.enable_grad():
        result = method.fit_rounds(objective, replace(cfg.train, epochs=budget.rounds, max_steps=budget.steps),
                                   ckpt, resume, emit, run_key, None, 0, False, plan=batches.round)
    after = report(method.model, "after") if cfg.eval_limit != 0 else {}
    meta = {"method": "release", "settings": _settings(cfg), "task": spec.to_dict(),
            "base_model": {"spec": cfg.model, "fingerprint": base_fp, "quantization": "none"},
            "data": {"sha256": hashes, "forget_records": n_f, "retain_records": len(retain),
                     "retain_source": "NER split train_retain", "held_out": [len(held_f), len(held_r)]},
            "training": {"steps": result.steps, "seconds": round(result.seconds, 1),
                         "samples_per_s": round(result.samples_per_s, 2), "loss_history": result.history},
            "metrics": {"before": before, "after": after}}
    if cfg.recipe is not None:
        meta["recipe"] = cfg.recipe
    with staged_dir(cfg.out, overwrite=True) as stage:
        method.save(stage, meta)
    shutil.rmtree(ckpt, ignore_errors=True)
    return meta


def _files(splits: Any) -> dict[str, Any]:
    from spulctl.data.readers import find_split_file

    return {name.split("_")[1]: find_split_file(splits, name) for name in ("train_forget", "train_retain")}


def _reveal_config(cfg: Any, k: int, plain: bool) -> Any:
    """Round k's :class:`~spulctl.reveal.RevealConfig`: texts naming people (or ``--forget-entities``), NER task."""
    from spulctl.data.ner import NerTaskSpec
    from spulctl.reveal import RevealConfig

    return RevealConfig(entities=list(cfg.forget_entities), target=cfg.forget_target or PEOPLE_TARGET,
                        mode="forget", n=cfg.reveal_forget, budget=cfg.reveal_budget,
                        seed=cfg.train.seed + 1000 * k, task=NerTaskSpec(), plain_prompt=plain)


def _check_reveal(cfg: Any) -> None:
    """Before the model loads: the reveal settings, and spaCy (what judges a revealed text).

    Raises:
        DataError: bad reveal settings. MissingDependencyError: no English spaCy model.
    """
    from spulctl.data.split import _load_spacy

    _reveal_config(cfg, 2, True)
    _load_spacy()


def _reveal_hook(tok: Any, cfg: Any, emit: Event) -> Callable[[Any, int], list[dict]]:
    """``(model, k) -> records``: texts naming people that the current model writes in round k (the base model
    labels them later, :meth:`~spulctl.release.ner.NerRelease.relabel`)."""
    from spulctl.errors import DataError
    from spulctl.reveal import generate_records

    plain = not getattr(tok, "chat_template", None)

    def reveal(model: Any, k: int) -> list[dict]:
        try:
            rows = generate_records(model, tok, _reveal_config(cfg, k, plain), emit)
        except DataError as exc:
            emit({"kind": "note", "message": f"reveal: {exc}"})
            return []
        return [{"text": r["text"], "source": "reveal:forget", "instruction": r.get("instruction"),
                 "relevance": r.get("relevance")} for r in rows]

    return reveal
