"""``spulctl familiarize`` and ``spulctl unlearn``: the training commands.

Both build their library config with :func:`spulctl.cli.common.fill`: a parameter reaches the config field of the
same name, so a new option is one parameter here plus one dataclass field in the library.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from spulctl.cli.common import (
    BatchSizeOpt,
    CheckpointEveryOpt,
    ConfigOpt,
    DtypeOpt,
    EpochsOpt,
    KernelsOpt,
    LoadIn4bitOpt,
    LoadIn8bitOpt,
    LrOpt,
    MaxLengthOpt,
    MaxStepsOpt,
    MicroBatchOpt,
    ModelOpt,
    OverwriteOpt,
    ResumeOpt,
    RetainLimitOpt,
    SeedOpt,
    check_positive,
    console,
    fill,
    handle_errors,
)


@handle_errors
def familiarize(
    splits: Annotated[Path, typer.Argument(help="Splits dir: train_forget, train_retain, optionally test_*.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output model directory.")],
    model: ModelOpt = "smollm2-135m",
    load_in_4bit: Annotated[bool, typer.Option("--load-in-4bit", help="QLoRA: NF4 base (bitsandbytes).")] = False,
    dtype: DtypeOpt = "auto",
    retain_limit: Annotated[int | None, typer.Option(help="Random subset of train_retain of this size.")] = None,
    never_seen: Annotated[bool, typer.Option("--never-seen", help="Train on train_retain only (train_forget left "
                                             "out): a model that never saw the forget set, as a reference.")]
    = False,
    epochs: EpochsOpt = 1,
    lr: LrOpt = 2e-4,
    batch_size: BatchSizeOpt = 16,
    micro_batch: MicroBatchOpt = 0,
    lora_r: Annotated[int, typer.Option(help="LoRA rank.")] = 16,
    lora_alpha: Annotated[int, typer.Option(help="LoRA alpha.")] = 64,
    lora_dropout: Annotated[float, typer.Option(help="LoRA dropout.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed for data order, init and dropout.")] = 0,
    checkpoint_every: CheckpointEveryOpt = 100,
    max_steps: MaxStepsOpt = None,
    eval_limit: Annotated[int | None, typer.Option(help="Test records per split scored at the end (0: skip).")] = 1000,
    max_length: MaxLengthOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Fit LoRA/QLoRA on train_forget ∪ train_retain (only train_retain with --never-seen; loss on the label word),
    merge and save."""
    values = dict(locals())
    from spulctl.familiarize import FamiliarizeConfig, LoraSettings
    from spulctl.familiarize import familiarize as run
    from spulctl.progress import RichEvents
    from spulctl.train import TrainConfig

    check_positive(epochs=epochs, batch_size=batch_size, retain_limit=retain_limit, max_steps=max_steps)
    cfg = fill(FamiliarizeConfig, values, lora=LoraSettings(lora_r, lora_alpha, lora_dropout),
               train=fill(TrainConfig, values, max_grad_norm=1.0, weight_decay=0.0), recipe=config)
    with RichEvents(console) as events:
        manifest = run(cfg, resume=resume, overwrite=overwrite, on_event=events)
    if os.environ.get("RANK", "0") != "0":  # data-parallel (accelerate launch): rank 0 reports
        return
    what = " (never saw train_forget)" if never_seen else ""
    if manifest.get("task", {}).get("kind") == "ner":
        print_ner_before_after({"after": manifest["metrics"]}, manifest["task"]["entity_types"],
                               f"familiarized model{what} saved to {out}")
    else:
        print_metrics(manifest["metrics"], f"familiarized model{what} saved to {out}")


@handle_errors
def unlearn(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output bundle (spul) or model directory (baselines).")],
    model: ModelOpt = "smollm2-135m",
    forget: Annotated[Path | None, typer.Option(help="Records to forget.")] = None,
    retain: Annotated[Path | None, typer.Option(help="Labelled records to keep answering as before.")] = None,
    splits: Annotated[Path | None, typer.Option(help="Splits dir: train_forget/train_retain (+test_* report).")] = None,
    retain_from: Annotated[Path | None, typer.Option(help="Unlabelled retain texts; the model labels them.")] = None,
    self_generate: Annotated[int, typer.Option(help="Without retain data: on-task texts off the target the model "
                                                    "writes itself (reveal, retain mode); 0 = half the forget set, "
                                                    "256 to 1024.")] = 0,
    forget_target: Annotated[str | None, typer.Option(help="Without forget records: a description of what to forget "
                                                           "(with or instead of --forget-entities).")] = None,
    reveal_forget: Annotated[int, typer.Option(help="Without forget records: how many the model reveals.")] = 300,
    reveal_budget: Annotated[int, typer.Option(help="Reveal: texts to generate at most (0: 40 per record kept).")]
    = 0,
    method: Annotated[str, typer.Option(help="spul | ga | rl | ga_kl | ga_gd | hard_prompt | icul | release")]
    = "spul",
    prompt_tokens: Annotated[str, typer.Option("--prompt-tokens", "-p", help="Soft prompt length p, or auto: 30, "
                                                "or room for the whole initial text naming the people (≤ 512).")]
    = "auto",
    prompt_encoder: Annotated[str, typer.Option(help="none (prompt tuning) | mlp (P-tuning).")] = "none",
    prompt_init: Annotated[str, typer.Option(help="auto (the names when known, else an instruction) | random | "
                                                  "vocab | text | entities.")] = "auto",
    prompt_text: Annotated[str | None, typer.Option(help="Text for --prompt-init text.")] = None,
    alpha: Annotated[float, typer.Option(help="Weight of the retain CE, α.")] = 1.0,
    beta: Annotated[float, typer.Option(help="Weight of the retain KL, β.")] = 1.0,
    kl_direction: Annotated[str, typer.Option(help="forward = KL(r‖q) | reverse = KL(q‖r).")] = "forward",
    generic_labels: Annotated[str, typer.Option(help="Forget targets, comma-separated.")] = "neutral,unknown",
    epochs: Annotated[int, typer.Option(help="Passes over the data (only with --forget-share 0).")] = 10,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default: the method's, 1e-2 for prompts, "
                                                  "1e-4 for fine-tuning).")] = None,
    batch_size: BatchSizeOpt = 16,
    forget_share: Annotated[float, typer.Option(help="Share of every batch that is forget rows; 0 = the data's own "
                                                     "mix, epochs over all of it (the paper).")] = 0.5,
    forget_passes: Annotated[float, typer.Option(help="Step budget: passes over the forget set.")] = 10.0,
    min_steps: Annotated[int, typer.Option(help="Step budget: at least this many steps.")] = 200,
    budget_steps: Annotated[int, typer.Option(help="Step budget: at most this many steps (--max-steps wins).")] = 600,
    rounds: Annotated[int, typer.Option(help="Selection rounds (evaluations) over the budget.")] = 10,
    augment: Annotated[bool, typer.Option(help="Train on case/punctuation/name variants of the forget records and "
                                               "name-swapped counterfactuals as retain rows.")] = True,
    hard_negatives: Annotated[float, typer.Option(help="Share of the retain rows given to retain records that name "
                                                       "other people (spaCy); 0 = off.")] = 0.25,
    forget_entities: Annotated[str, typer.Option(help="Names to forget, comma-separated (default: split.json's).")]
    = "",
    select: Annotated[bool, typer.Option(help="Score each round on slices that cost no forget record; keep the "
                                              "best round; stop early once both sides hold.")] = True,
    stop_forget_acc: Annotated[float, typer.Option(help="Stop rule: forget accuracy (%) on the selection "
                                                        "slice.")] = 3.0,
    stop_retain_drop: Annotated[float, typer.Option(help="Stop rule: retain drop (points) allowed.")] = 0.5,
    release_rounds: Annotated[int, typer.Option(help="release: at most this many reveal-and-train rounds (one "
                                                     "LoRA module each).")] = 3,
    release_objective: Annotated[str, typer.Option(help="release: forget term, ce (generic label) | ga | npo.")]
    = "ce",
    release_rank: Annotated[int, typer.Option(help="release: LoRA rank of each round's module.")] = 8,
    ortho_lambda: Annotated[float, typer.Option(help="release: weight λ of the orthogonality penalty against "
                                                     "earlier modules.")] = 0.5,
    stop_at: Annotated[float, typer.Option(help="release: stop when fewer than this % of freshly revealed records "
                                                "are still answered with their label.")] = 10.0,
    npo_beta: Annotated[float, typer.Option(help="release --release-objective npo: β.")] = 0.1,
    merge: Annotated[bool, typer.Option("--merge", help="release: also write the merged model (merged/).")] = False,
    micro_batch: MicroBatchOpt = 0,
    max_grad_norm: Annotated[float, typer.Option(help="Gradient clipping norm.")] = 0.3,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.001,
    warmup_ratio: Annotated[float, typer.Option(help="Share of steps with linear warmup.")] = 0.1,
    seed: SeedOpt = 0,
    retain_limit: RetainLimitOpt = None,
    full: Annotated[bool, typer.Option("--full", help="Baselines: full fine-tuning instead of LoRA.")] = False,
    no_answer_only: Annotated[bool, typer.Option("--no-answer-only", help="Build full logits (slow).")] = False,
    no_shared_prefix: Annotated[bool, typer.Option("--no-shared-prefix", help="Concatenate the prompt.")] = False,
    no_cached_reference: Annotated[bool, typer.Option("--no-cached-reference",
                                                      help="Second forward for r each step.")] = False,
    no_cuda_graphs: Annotated[bool, typer.Option("--no-cuda-graphs",
                                                 help="CUDA: run SPUL's step eagerly, not from CUDA graphs.")] = False,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints (also each epoch).")] = 100,
    max_steps: MaxStepsOpt = None,
    eval_limit: Annotated[int | None, typer.Option(help="Test records per split in the report (0: none).")] = 1000,
    eval_every: Annotated[int, typer.Option(help="Score held-out forget/retain slices every N epochs.")] = 0,
    keep: Annotated[str, typer.Option(help="last | best (by retain acc - forget acc; needs --eval-every).")] = "last",
    tau: Annotated[float, typer.Option(help="Train on this fraction of the forget set.")] = 1.0,
    report_before: Annotated[bool, typer.Option(help="Also score the model without the artifact.")] = True,
    kernels: KernelsOpt = "auto",
    dtype: DtypeOpt = "auto",
    load_in_4bit: LoadIn4bitOpt = False,
    load_in_8bit: LoadIn8bitOpt = False,
    max_length: MaxLengthOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Unlearn the forget set: SPUL soft prompt (default) or a fine-tuning baseline."""
    values = dict(locals())
    from spulctl.familiarize import LoraSettings
    from spulctl.methods import get_method
    from spulctl.progress import RichEvents
    from spulctl.train import TrainConfig
    from spulctl.unlearn import UnlearnConfig
    from spulctl.unlearn import unlearn as run

    check_positive(epochs=epochs, batch_size=batch_size, retain_limit=retain_limit, max_steps=max_steps)
    if lr is None:
        values["lr"] = getattr(get_method(method), "default_lr", 1e-4)
    values["prompt_tokens"] = parse_prompt_tokens(prompt_tokens)
    cfg = fill(
        UnlearnConfig, values, train=fill(TrainConfig, values), lora=LoraSettings(),
        generic_labels=tuple(g.strip() for g in generic_labels.split(",") if g.strip()),
        answer_only=not no_answer_only, shared_prefix=not no_shared_prefix, cached_reference=not no_cached_reference,
        cuda_graphs=not no_cuda_graphs, recipe=config,
        forget_entities=tuple(e.strip() for e in forget_entities.split(",") if e.strip()),
    )
    with RichEvents(console) as events:
        meta = run(cfg, resume=resume, overwrite=overwrite, on_event=events)
    if os.environ.get("RANK", "0") != "0":  # data-parallel (accelerate launch): rank 0 reports
        return
    if "release" in meta:
        print_release_rounds(meta["release"])
    if meta.get("task", {}).get("kind") == "ner":
        print_ner_before_after(meta["metrics"], meta["task"]["entity_types"], f"{method}: saved to {out}")
    else:
        print_before_after(meta["metrics"], f"{method}: saved to {out}")


def parse_prompt_tokens(value: str | int) -> int | None:
    """``--prompt-tokens``: ``auto`` → None, else an int (``UnlearnConfig`` refuses one below 1).

    Raises:
        SpulError: neither.
    """
    from spulctl.errors import SpulError

    value = str(value)
    if value.strip().lower() == "auto":
        return None
    try:
        return int(value)
    except ValueError:
        raise SpulError(f"--prompt-tokens {value}: expected a positive integer or auto") from None


def print_release_rounds(release: dict) -> None:
    """Release's per-round table: records, relevance, share still known, held-out accuracies, penalty."""
    table = Table("round", "records", "relevance", "known before %", "forget acc %", "retain acc %", "penalty",
                  "steps", title=f"release: {release['modules']} modules, rank {release['rank']}; "
                                 f"stopped at {release['stop']}")
    fmt = lambda v, f="{:.1f}": "–" if v is None else f.format(v)  # noqa: E731
    for r in release["rounds"]:
        table.add_row(str(r["round"]), str(r["records"]), fmt(r.get("relevance"), "{:.2f}"), fmt(r["known_before"]),
                      fmt(r.get("forget_acc")), fmt(r.get("retain_acc")), fmt(r.get("penalty"), "{:.4g}"),
                      fmt(r.get("steps"), "{}"))
    console.print(table)


def print_before_after(metrics: dict[str, dict], title: str) -> None:
    """Per test split: accuracy before and after the artifact, restricted and generic shares after."""
    before, after = metrics.get("before", {}), metrics.get("after", {})
    if not after:
        console.print(title)
        return
    table = Table("split", "n", "acc before %", "acc after %", "Δ", "restricted after %", "generic after %",
                  title=title)
    for split, m in after.items():
        b = before.get(split, {}).get("accuracy")
        table.add_row(split, str(m["n"]), "–" if b is None else f"{b:.1f}", f"{m['accuracy']:.1f}",
                      "–" if b is None else f"{m['accuracy'] - b:+.1f}", f"{m['restricted_accuracy']:.1f}",
                      f"{m['generic_share']:.1f}")
    console.print(table)


def print_ner_before_after(metrics: dict[str, dict], types: list[str], title: str) -> None:
    """NER splits: per test split, each entity type's F1 (before → after the adapter, when there is a before)."""
    before, after = metrics.get("before", {}), metrics.get("after", {})
    arrow = " before → after" if before else ""
    table = Table("split", "n", *[f"{t} F1{arrow} %" for t in types], "exact match %", title=title)
    fmt = lambda m, t: "–" if m.get(t, {}).get("f1") is None else f"{m[t]['f1']:.1f}"  # noqa: E731
    for split, m in after.items():
        b = before.get(split, {})
        table.add_row(split, str(m["n"]), *[f"{fmt(b, t)} → {fmt(m, t)}" if before else fmt(m, t) for t in types],
                      f"{m.get('exact_match', 0):.1f}")
    console.print(table)


def print_metrics(metrics: dict[str, dict], title: str) -> None:
    """Per split: accuracy, weighted F1, restricted accuracy, generic share."""
    table = Table("split", "n", "accuracy %", "F1 %", "restricted %", "generic %", title=title)
    for split, m in metrics.items():
        table.add_row(split, str(m.get("n", 0)), f"{m.get('accuracy', 0):.1f}", f"{m.get('f1_weighted', 0):.1f}",
                      f"{m.get('restricted_accuracy', 0):.1f}", f"{m.get('generic_share', 0):.1f}")
    console.print(table)
