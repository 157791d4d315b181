"""The ``spulctl`` command line (Typer + rich). Parses, validates, calls the library, prints.

This module must not import torch at import time: ``spulctl --help`` stays instant. Library errors
(:class:`~spulctl.errors.SpulError`) become one red line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from spulctl.errors import SpulError

app = typer.Typer(name="spulctl",
                  help="Unlearning with soft prompts (SPUL): split, familiarize, unlearn, eval, export.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
models_app = typer.Typer(help="List, pull and inspect models.", no_args_is_help=True)
app.add_typer(models_app, name="models")
console = Console()
err_console = Console(stderr=True)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show library logs, warnings and bars.")]
          = False) -> None:
    """Keep the terminal to spulctl's own progress unless --verbose: transformers' loading bars and the
    deprecation chatter of dependencies say nothing actionable to a user."""
    if verbose:
        return
    import logging
    import os
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(transformers|peft|torch|bitsandbytes)\b")
    # the ONNX exporter's tracer notes on transformers' code (the export is checked against torch afterwards)
    warnings.filterwarnings("ignore", message=r".*\btrace\b", module=r"transformers\b")
    # bitsandbytes' note that an optional hub kernel for 4-bit CPU matmuls is not installed (it falls back)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn SpulError into a one-line message and its exit code (2); Ctrl-C into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SpulError as exc:
            err_console.print(f"[red]error:[/red] {exc}", soft_wrap=True, highlight=False)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/yellow] (re-run with --resume to continue)")
            raise typer.Exit(130) from None

    return wrapper


ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Alias, HF directory, .gguf file or hub id.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]
MicroBatchOpt = Annotated[int, typer.Option(help="Examples per forward/backward slice of a step (gradients added up; "
                                               "less memory, same step). 0: the whole batch.")]
DtypeOpt = Annotated[str, typer.Option(help="Model weights/activations: auto (bf16 on CUDA, fp32 on CPU) | float32 | "
                                            "bfloat16 | float16.")]


@models_app.command("list")
@handle_errors
def models_list() -> None:
    """Show the built-in model aliases and whether they are pulled."""
    from spulctl.models import ALIASES, alias_dir

    table = Table("alias", "source", "pulled", "description")
    for a in ALIASES.values():
        pulled = "yes" if (alias_dir(a.name) / "config.json").is_file() else "-"
        table.add_row(a.name, a.source, pulled, a.description)
    console.print(table)


@models_app.command("pull")
@handle_errors
def models_pull(name: Annotated[str, typer.Argument(help="Built-in alias, e.g. smollm2-135m.")],
                overwrite: OverwriteOpt = False) -> None:
    """Download a built-in model into the cache ($SPULCTL_HOME, default ~/.cache/spulctl)."""
    from spulctl.models import pull

    path = pull(name, overwrite=overwrite, progress=lambda m: console.print(f"[dim]{m}[/dim]"))
    console.print(f"{name}: {path}")


@models_app.command("info")
@handle_errors
def models_info(spec: Annotated[str, typer.Argument(help="Alias, directory, .gguf or hub id.")]) -> None:
    """Show where a model lives, its shape and its fingerprint."""
    from spulctl.models import model_info

    console.print_json(json.dumps(model_info(spec)))


@app.command()
@handle_errors
def familiarize(
    splits: Annotated[Path, typer.Argument(help="Splits dir: train_forget, train_retain, optionally test_*.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output model directory.")],
    model: ModelOpt = "smollm2-135m",
    load_in_4bit: Annotated[bool, typer.Option("--load-in-4bit", help="QLoRA: NF4 base (bitsandbytes).")] = False,
    retain_limit: Annotated[int | None, typer.Option(help="Random subset of train_retain of this size.")] = None,
    epochs: Annotated[int, typer.Option(help="Passes over the data.")] = 1,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 2e-4,
    batch_size: Annotated[int, typer.Option(help="Examples per step.")] = 16,
    micro_batch: MicroBatchOpt = 0,
    lora_r: Annotated[int, typer.Option(help="LoRA rank.")] = 16,
    lora_alpha: Annotated[int, typer.Option(help="LoRA alpha.")] = 64,
    lora_dropout: Annotated[float, typer.Option(help="LoRA dropout.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed for data order, init and dropout.")] = 0,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 100,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many steps.")] = None,
    eval_limit: Annotated[int | None, typer.Option(help="Test records per split scored at the end (0: skip).")] = 1000,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint.")] = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Fit LoRA/QLoRA on train_forget ∪ train_retain (loss on the label word), merge and save."""
    from spulctl.familiarize import FamiliarizeConfig, LoraSettings
    from spulctl.familiarize import familiarize as run
    from spulctl.progress import RichEvents
    from spulctl.train import TrainConfig

    _check_positive(epochs=epochs, batch_size=batch_size, retain_limit=retain_limit, max_steps=max_steps)
    cfg = FamiliarizeConfig(
        model=model, splits=splits, out=out, load_in_4bit=load_in_4bit, retain_limit=retain_limit,
        eval_limit=eval_limit, lora=LoraSettings(lora_r, lora_alpha, lora_dropout),
        train=TrainConfig(lr=lr, epochs=epochs, batch_size=batch_size, seed=seed, max_grad_norm=1.0,
                          weight_decay=0.0, checkpoint_every=checkpoint_every, max_steps=max_steps,
                          micro_batch=micro_batch),
    )
    with RichEvents(console) as events:
        manifest = run(cfg, resume=resume, overwrite=overwrite, on_event=events)
    _print_metrics(manifest["metrics"], f"familiarized model saved to {out}")


@app.command()
@handle_errors
def split(
    data: Annotated[str, typer.Argument(help="Labelled dataset: .jsonl/.csv/.tsv/.parquet, a hub name, or 'demo'.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output splits directory.")],
    by: Annotated[str, typer.Option(help="entity | cluster | file")] = "entity",
    entities: Annotated[str | None, typer.Option(help="People to forget, comma-separated.")] = None,
    top_entities: Annotated[int | None, typer.Option(help="Forget the N most mentioned PERSON entities.")] = None,
    min_entity_count: Annotated[int, typer.Option(help="Ignore NER candidates seen fewer times.")] = 3,
    clusters: Annotated[int, typer.Option(help="k for --by cluster.")] = 20,
    forget_fraction: Annotated[float, typer.Option(help="Train share to forget (--by cluster).")] = 0.05,
    embedder: Annotated[str, typer.Option(help="'minilm' or a model spec (mean-pooled states).")] = "minilm",
    forget: Annotated[Path | None, typer.Option(help="Records to forget (--by file).")] = None,
    test_size: Annotated[float, typer.Option(help="Share held out as test.")] = 0.3,
    tau: Annotated[float, typer.Option(help="Keep this fraction of train_forget (paper Table 3).")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    text_field: Annotated[str | None, typer.Option(help="Text column (auto-detected).")] = None,
    label_field: Annotated[str | None, typer.Option(help="Label column (auto-detected).")] = None,
    label_map: Annotated[str | None, typer.Option(help="Label values to words, e.g. '0=negative,1=positive'.")] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Split one labelled dataset into train/test × forget/retain (+ split.json explaining it)."""
    from spulctl.pipeline import run_split
    from spulctl.progress import RichEvents

    with RichEvents(console) as events:
        info = run_split(
            data, out, by=by, entities=[e for e in (entities or "").split(",") if e.strip()],
            top_entities=top_entities, min_entity_count=min_entity_count, clusters=clusters,
            forget_fraction=forget_fraction, embedder=embedder, forget_file=forget, test_size=test_size,
            tau=tau, seed=seed, text_field=text_field, label_field=label_field, label_map=label_map,
            overwrite=overwrite, on_event=events)
    table = Table("split", "records", "labels", title=f"splits written to {out}")
    for name, n in info["counts"].items():
        table.add_row(name, str(n), ", ".join(f"{k}: {v}" for k, v in sorted(info["label_counts"][name].items())))
    console.print(table)
    if info.get("entities"):
        console.print("entities: " + ", ".join(f"{e} ({n})" for e, n in info["entities"].items()))
    if info.get("dropped_cross_duplicates"):
        console.print(f"dropped {info['dropped_cross_duplicates']} retain records whose text is also a forget text")


@app.command("eval")
@handle_errors
def eval_(
    splits_arg: Annotated[Path | None, typer.Argument(metavar="SPLITS", help="Splits directory.")] = None,
    model: ModelOpt = "smollm2-135m",
    bundle: Annotated[Path | None, typer.Option(help="Prompt bundle to evaluate on --model.")] = None,
    splits: Annotated[Path | None, typer.Option(help="Splits directory (or give it as the argument).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Report directory (report.json, report.md).")] = None,
    compare: Annotated[list[str] | None, typer.Option(help="name=model-or-bundle, repeatable.")] = None,
    limit: Annotated[int | None, typer.Option(help="Records per split (quick runs).")] = None,
    batch_size: Annotated[int, typer.Option(help="Examples per batch.")] = 32,
    max_forget_acc: Annotated[float | None, typer.Option(help="Gate: test_forget accuracy % at most.")] = None,
    max_forget_restricted_acc: Annotated[float | None, typer.Option(help="Gate: restricted forget acc %.")] = None,
    max_retain_drop: Annotated[float | None, typer.Option(help="Gate: test_retain drop vs --model, points.")] = None,
    min_retain_acc: Annotated[float | None, typer.Option(help="Gate: test_retain accuracy % at least.")] = None,
    max_mia_auc: Annotated[float | None, typer.Option(help="Gate: forget membership-inference AUC at most.")] = None,
    mia: Annotated[bool, typer.Option("--mia", help="Run membership inference (loss, Min-k% prob).")] = False,
    plots: Annotated[Path | None, typer.Option(help="Write tsne.png and tradeoff.png here.")] = None,
    robustness: Annotated[bool, typer.Option("--robustness", help="Score rewritten forget queries too.")] = False,
    kernels: Annotated[str, typer.Option(help="auto | triton | torch (fused head for the MIA token scores).")]
    = "auto",
    dtype: DtypeOpt = "auto",
    backend: Annotated[str, typer.Option(help="torch | onnx: score the splits through an ONNX Runtime export of "
                                              "each subject (checked against torch first; faster on the CPU).")]
    = "torch",
    junit: Annotated[Path | None, typer.Option(help="Write the gates as JUnit XML here.")] = None,
    ignore_fingerprint: Annotated[bool, typer.Option("--ignore-fingerprint")] = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Score the model (with --bundle, and --compare subjects) on the splits; exit 1 if a gate fails."""
    from spulctl.pipeline import run_eval
    from spulctl.progress import RichEvents

    folder = splits or splits_arg
    if folder is None:
        raise SpulError("eval: give the splits directory (argument or --splits)")
    _check_positive(limit=limit, batch_size=batch_size)
    gates = {"max_forget_acc": max_forget_acc, "max_retain_drop": max_retain_drop, "min_retain_acc": min_retain_acc,
             "max_forget_restricted_acc": max_forget_restricted_acc, "max_mia_auc": max_mia_auc}
    with RichEvents(console) as events:
        report = run_eval(model, folder, out, bundle=bundle, compare=compare, limit=limit, batch_size=batch_size,
                          gates=gates, junit=junit, overwrite=overwrite, ignore_fingerprint=ignore_fingerprint,
                          mia=mia, plots=plots, robustness=robustness, kernels=kernels, dtype=dtype,
                          backend=backend, on_event=events)
    table = Table("subject", *[f"{s} %" for s in ("train_retain ↑", "train_forget ↓", "test_retain ↑",
                                                  "test_forget ↓")], title="accuracy (Δ vs model)")
    for name, per in report["results"].items():
        cells = []
        for s in ("train_retain", "train_forget", "test_retain", "test_forget"):
            m, d = per.get(s), report["deltas"][name].get(s, {}).get("accuracy")
            cells.append("–" if m is None else f"{m['accuracy']:.1f} ({d:+.1f})")
        table.add_row(name, *cells)
    console.print(table)
    for name, per in report["results"].items():
        probes = ", ".join(f"{k.removeprefix('probe:')} {m['accuracy']:.1f}%" for k, m in per.items()
                           if k.startswith("probe:"))
        if probes:
            console.print(f"rewritten forget queries, {name}: {probes}")
    for name, sides in report["mia"].items():
        for side, att in sides.items():
            console.print(f"MIA {name} {side}: loss AUC {att['loss']['auc']:.3f}, Min-k% AUC {att['min_k']['auc']:.3f}")
    failed = [g for g in report["gates"] if not g["passed"]]
    for g in report["gates"]:
        (err_console if not g["passed"] else console).print(("FAIL " if not g["passed"] else "pass ") + g["detail"],
                                                            highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


@app.command()
@handle_errors
def sweep(
    out: Annotated[Path, typer.Option("--out", "-o", help="Sweep directory (resumable).")],
    splits: Annotated[Path, typer.Option(help="Splits directory.")],
    model: ModelOpt = "smollm2-135m",
    alpha: Annotated[str | None, typer.Option(help="α values, e.g. 0.5,1")] = None,
    beta: Annotated[str | None, typer.Option(help="β values.")] = None,
    prompt_tokens: Annotated[str | None, typer.Option("--prompt-tokens", help="p values.")] = None,
    tau: Annotated[str | None, typer.Option(help="Forget-set fractions τ.")] = None,
    prompt_encoder: Annotated[str, typer.Option(help="none | mlp")] = "mlp",
    epochs: Annotated[int, typer.Option(help="Epochs per cell.")] = 10,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-4,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 16,
    retain_limit: Annotated[int | None, typer.Option(help="Retain subset per cell.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Steps per cell (quick runs).")] = None,
    eval_limit: Annotated[int | None, typer.Option(help="Test records per split per cell.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
) -> None:
    """Unlearn + evaluate over a grid of α, β, p, τ; writes results.jsonl, sweep.md, sweep.png."""
    from spulctl.evaluate.sweep import parse_grid, run_sweep
    from spulctl.progress import RichEvents
    from spulctl.train import TrainConfig
    from spulctl.unlearn import UnlearnConfig

    grid = parse_grid({"alpha": alpha, "beta": beta, "prompt_tokens": prompt_tokens, "tau": tau})
    if not grid:
        raise SpulError("sweep: give at least one of --alpha, --beta, --prompt-tokens, --tau")
    _check_positive(epochs=epochs, batch_size=batch_size, retain_limit=retain_limit, max_steps=max_steps)
    base = UnlearnConfig(model=model, out=out, splits=splits, prompt_encoder=prompt_encoder, eval_limit=eval_limit,
                         retain_limit=retain_limit, train=TrainConfig(lr=lr, epochs=epochs, batch_size=batch_size,
                                                                      seed=seed, max_steps=max_steps))
    with RichEvents(console) as events:
        rows = run_sweep(base, grid, out, events)
    console.print(f"{len(rows)} cells; table in {out / 'sweep.md'}, plot in {out / 'sweep.png'}")


@app.command()
@handle_errors
def export(
    out: Annotated[Path, typer.Option("--out", "-o", help="Export directory.")],
    model: ModelOpt = "smollm2-135m",
    bundle: Annotated[Path | None, typer.Option(help="Prompt bundle to compile into the graph.")] = None,
    no_bundle: Annotated[bool, typer.Option("--no-bundle", help="Export the unprompted model (comparison).")] = False,
    ignore_fingerprint: Annotated[bool, typer.Option("--ignore-fingerprint")] = False,
    prefix: Annotated[str, typer.Option("--prefix", help="baked (initializers in the graph) | inputs (bound once "
                                        "at run time).")] = "baked",
    dtype: Annotated[str, typer.Option(help="float32 (CPU) | float16 (CUDA execution provider).")] = "float32",
    overwrite: OverwriteOpt = False,
) -> None:
    """Compile the bundle into a KV prefix and export an ONNX scorer (model.onnx + prefix + tokenizer + manifest)."""
    from spulctl.pipeline import run_export
    from spulctl.progress import RichEvents

    with RichEvents(console) as events:
        manifest = run_export(model, out, bundle=bundle, no_bundle=no_bundle, ignore_fingerprint=ignore_fingerprint,
                              overwrite=overwrite, prefix_mode=prefix, dtype=dtype, on_event=events)
    check = manifest["check"]
    said = (f"ONNX Runtime check skipped: {check['skipped']}" if check.get("skipped") else
            f"ONNX Runtime check on {check['provider']}: max |score diff| vs torch = {check['max_abs_score_diff']:.2e}")
    console.print(f"exported to {out} (opset {manifest['opset']}, {manifest['dtype']}, prefix {manifest['prefix']}); "
                  + said)


@app.command()
@handle_errors
def predict(
    onnx_dir: Annotated[Path, typer.Option("--onnx", help="Export directory from `spulctl export`.")],
    input_file: Annotated[Path, typer.Option("--input", "-i", help="Texts: .jsonl/.csv/.tsv/.parquet.")],
    output: Annotated[Path | None, typer.Option("--output", help="Write .jsonl or .csv here (default: stdout).")]
    = None,
    provider: Annotated[str, typer.Option(help="auto | cuda | cpu")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Texts per run.")] = 32,
    text_field: Annotated[str | None, typer.Option(help="Text column (auto-detected).")] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Classify texts with an exported model on ONNX Runtime; label + label-word scores per text."""
    import csv
    import io

    from spulctl.data.readers import ReadOptions, read_records
    from spulctl.export.runtime import OnnxPredictor
    from spulctl.io import write_jsonl_atomic, write_text_atomic

    _check_positive(batch_size=batch_size)
    if output is not None and output.exists() and not overwrite:
        raise SpulError(f"{output}: exists (pass --overwrite to replace it)")
    if output is not None and output.suffix not in (".jsonl", ".csv"):
        raise SpulError(f"--output {output}: use a .jsonl or .csv file")
    texts = [r["text"] for r in read_records(input_file, ReadOptions(text_field=text_field, require_label=False))]
    predictor = OnnxPredictor(onnx_dir, provider=provider, batch_size=batch_size)
    rows = predictor.predict(texts)
    if output is None:
        for r in rows:
            console.print_json(json.dumps(r))
    elif output.suffix == ".jsonl":
        write_jsonl_atomic(output, rows)
    else:
        buf = io.StringIO()
        words = list(rows[0]["scores"]) if rows else []
        writer = csv.writer(buf)
        writer.writerow(["text", "label", *[f"score_{w}" for w in words]])
        for r in rows:
            writer.writerow([r["text"], r["label"] or "", *[f"{r['scores'][w]:.6f}" for w in words]])
        write_text_atomic(output, buf.getvalue())
    err_console.print(f"{len(rows)} texts on {predictor.provider}")


bundle_app = typer.Typer(help="Inspect and verify prompt bundles.", no_args_is_help=True)
app.add_typer(bundle_app, name="bundle")


@app.command()
@handle_errors
def unlearn(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output bundle (spul) or model directory (baselines).")],
    model: ModelOpt = "smollm2-135m",
    forget: Annotated[Path | None, typer.Option(help="Records to forget.")] = None,
    retain: Annotated[Path | None, typer.Option(help="Labelled records to keep answering as before.")] = None,
    splits: Annotated[Path | None, typer.Option(help="Splits dir: train_forget/train_retain (+test_* report).")] = None,
    retain_from: Annotated[Path | None, typer.Option(help="Unlabelled retain texts; the model labels them.")] = None,
    self_generate: Annotated[int, typer.Option(help="Without retain data: texts the model writes itself.")] = 256,
    method: Annotated[str, typer.Option(help="spul | ga | rl | ga_kl | ga_gd")] = "spul",
    prompt_tokens: Annotated[int, typer.Option("--prompt-tokens", "-p", help="Soft prompt length p.")] = 30,
    prompt_encoder: Annotated[str, typer.Option(help="none (prompt tuning) | mlp (P-tuning).")] = "mlp",
    prompt_init: Annotated[str, typer.Option(help="random | vocab | text | entities (names from split.json).")]
    = "vocab",
    prompt_text: Annotated[str | None, typer.Option(help="Text for --prompt-init text.")] = None,
    alpha: Annotated[float, typer.Option(help="Weight of the retain CE, α.")] = 1.0,
    beta: Annotated[float, typer.Option(help="Weight of the retain KL, β.")] = 1.0,
    kl_direction: Annotated[str, typer.Option(help="forward = KL(r‖q) | reverse = KL(q‖r).")] = "forward",
    generic_labels: Annotated[str, typer.Option(help="Forget targets, comma-separated.")] = "neutral,unknown",
    epochs: Annotated[int, typer.Option(help="Passes over the data.")] = 10,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 1e-4,
    batch_size: Annotated[int, typer.Option(help="Examples per step.")] = 16,
    micro_batch: MicroBatchOpt = 0,
    max_grad_norm: Annotated[float, typer.Option(help="Gradient clipping norm.")] = 0.3,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.001,
    warmup_ratio: Annotated[float, typer.Option(help="Share of steps with linear warmup.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    retain_limit: Annotated[int | None, typer.Option(help="Random subset of the retain set of this size.")] = None,
    full: Annotated[bool, typer.Option("--full", help="Baselines: full fine-tuning instead of LoRA.")] = False,
    no_answer_only: Annotated[bool, typer.Option("--no-answer-only", help="Build full logits (slow).")] = False,
    no_shared_prefix: Annotated[bool, typer.Option("--no-shared-prefix", help="Concatenate the prompt.")] = False,
    no_cached_reference: Annotated[bool, typer.Option("--no-cached-reference",
                                                      help="Second forward for r each step.")] = False,
    no_cuda_graphs: Annotated[bool, typer.Option("--no-cuda-graphs",
                                                 help="CUDA: run SPUL's step eagerly, not from CUDA graphs.")] = False,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints (also each epoch).")] = 100,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many steps.")] = None,
    eval_limit: Annotated[int | None, typer.Option(help="Test records per split in the report (0: none).")] = 1000,
    eval_every: Annotated[int, typer.Option(help="Score held-out forget/retain slices every N epochs.")] = 0,
    keep: Annotated[str, typer.Option(help="last | best (by retain acc - forget acc; needs --eval-every).")] = "last",
    tau: Annotated[float, typer.Option(help="Train on this fraction of the forget set.")] = 1.0,
    report_before: Annotated[bool, typer.Option(help="Also score the model without the artifact.")] = True,
    kernels: Annotated[str, typer.Option(help="auto | triton | torch (fused answer-head loss).")] = "auto",
    dtype: DtypeOpt = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint.")] = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Unlearn the forget set: SPUL soft prompt (default) or a fine-tuning baseline."""
    from spulctl.familiarize import LoraSettings
    from spulctl.progress import RichEvents
    from spulctl.train import TrainConfig
    from spulctl.unlearn import UnlearnConfig
    from spulctl.unlearn import unlearn as run

    _check_positive(epochs=epochs, batch_size=batch_size, retain_limit=retain_limit, max_steps=max_steps)
    cfg = UnlearnConfig(
        model=model, out=out, method=method, forget=forget, retain=retain, splits=splits, retain_from=retain_from,
        self_generate=self_generate, prompt_tokens=prompt_tokens, prompt_encoder=prompt_encoder,
        prompt_init=prompt_init, prompt_text=prompt_text, alpha=alpha, beta=beta, kl_direction=kl_direction,
        generic_labels=tuple(g.strip() for g in generic_labels.split(",") if g.strip()),
        train=TrainConfig(lr=lr, epochs=epochs, batch_size=batch_size, max_grad_norm=max_grad_norm,
                          weight_decay=weight_decay, warmup_ratio=warmup_ratio, seed=seed,
                          checkpoint_every=checkpoint_every, max_steps=max_steps, micro_batch=micro_batch),
        lora=LoraSettings(), full=full, answer_only=not no_answer_only, shared_prefix=not no_shared_prefix,
        cached_reference=not no_cached_reference, cuda_graphs=not no_cuda_graphs, eval_limit=eval_limit,
        retain_limit=retain_limit, eval_every=eval_every, keep=keep, tau=tau, report_before=report_before,
        kernels=kernels, dtype=dtype,
    )
    with RichEvents(console) as events:
        meta = run(cfg, resume=resume, overwrite=overwrite, on_event=events)
    _print_before_after(meta["metrics"], f"{method}: saved to {out}")


@bundle_app.command("info")
@handle_errors
def bundle_info(path: Annotated[Path, typer.Argument(help="Bundle directory.")]) -> None:
    """Show a bundle's method, base model, prompt shape and metrics (verifies hashes first)."""
    from spulctl.bundle import verify_bundle

    meta = verify_bundle(path)
    console.print_json(json.dumps(meta))


@bundle_app.command("verify")
@handle_errors
def bundle_verify(
    path: Annotated[Path, typer.Argument(help="Bundle directory.")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="Also check it fits this model.")] = None,
    ignore_fingerprint: Annotated[bool, typer.Option("--ignore-fingerprint")] = False,
) -> None:
    """Check files, hashes and shapes; with --model also the base-model fingerprint. Exit 2 on any mismatch."""
    from spulctl.bundle import check_fingerprint, load_bundle

    bundle = load_bundle(path)
    if model is not None:
        from spulctl.models import load_model

        m, _ = load_model(model)
        check_fingerprint(bundle, m, ignore_fingerprint)
    console.print(f"[green]ok[/green] {path}: p={bundle.prompt.shape[0]} d={bundle.prompt.shape[1]} "
                  f"method={bundle.meta.get('method')} base={bundle.fingerprint[:19]}…")


@bundle_app.command("compile")
@handle_errors
def bundle_compile(
    path: Annotated[Path, typer.Argument(help="Bundle directory.")],
    model: ModelOpt = "smollm2-135m",
    ignore_fingerprint: Annotated[bool, typer.Option("--ignore-fingerprint")] = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Store the prompt's per-layer KV prefix for MODEL in the bundle (compiled_prefix); export reuses it."""
    from spulctl.bundle import compile_into_bundle
    from spulctl.models import load_model

    m, _ = load_model(model, device="cpu", dtype="float32")
    entry = compile_into_bundle(path, m, ignore_fingerprint=ignore_fingerprint, overwrite=overwrite)
    console.print(f"[green]ok[/green] {path}/{entry['file']}: {entry['layers']} layers × (key, value) "
                  f"{tuple(entry['shape'])} for base {entry['fingerprint'][:19]}…")


def _print_before_after(metrics: dict[str, dict], title: str) -> None:
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


def _check_positive(**values: int | None) -> None:
    for name, v in values.items():
        if v is not None and v < 1:
            raise SpulError(f"--{name.replace('_', '-')}: must be >= 1, got {v}")


def _print_metrics(metrics: dict[str, dict], title: str) -> None:
    table = Table("split", "n", "accuracy %", "F1 %", "restricted %", "generic %", title=title)
    for split, m in metrics.items():
        table.add_row(split, str(m.get("n", 0)), f"{m.get('accuracy', 0):.1f}", f"{m.get('f1_weighted', 0):.1f}",
                      f"{m.get('restricted_accuracy', 0):.1f}", f"{m.get('generic_share', 0):.1f}")
    console.print(table)
