"""``spulctl eval`` and ``spulctl sweep``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from spulctl.cli.common import (
    ConfigOpt,
    DtypeOpt,
    IgnoreFingerprintOpt,
    LoadIn4bitOpt,
    LoadIn8bitOpt,
    MaxLengthOpt,
    ModelOpt,
    OverwriteOpt,
    SeedOpt,
    check_positive,
    console,
    err_console,
    handle_errors,
)
from spulctl.errors import SpulError

SPLIT_COLUMNS = ("train_retain", "train_forget", "test_retain", "test_forget")
ARROWS = {"train_retain": "↑", "train_forget": "↓", "test_retain": "↑", "test_forget": "↓"}


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
    mia: Annotated[bool, typer.Option("--mia", help="Run membership inference (loss, Min-k% prob, zlib; "
                                                    "reference with --mia-reference).")] = False,
    mia_reference: Annotated[str | None, typer.Option(
        "--mia-reference", help="Reference model for the likelihood-ratio attack (implies --mia), e.g. a model "
        "familiarized with --never-seen.", show_default=False)] = None,
    plots: Annotated[Path | None, typer.Option(help="Write tsne.png and tradeoff.png here.")] = None,
    robustness: Annotated[bool, typer.Option("--robustness", help="Score rewritten forget queries too.")] = False,
    kernels: Annotated[str, typer.Option(help="auto | triton | torch (fused head for the MIA token scores).")]
    = "auto",
    dtype: DtypeOpt = "auto",
    load_in_4bit: LoadIn4bitOpt = False,
    load_in_8bit: LoadIn8bitOpt = False,
    backend: Annotated[str, typer.Option(help="torch | onnx: score the splits through an ONNX Runtime export of "
                                              "each subject (checked against torch first; faster on the CPU).")]
    = "torch",
    junit: Annotated[Path | None, typer.Option(help="Write the gates as JUnit XML here.")] = None,
    ignore_fingerprint: IgnoreFingerprintOpt = False,
    max_length: MaxLengthOpt = None,
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Score the model (with --bundle, and --compare subjects) on the splits; exit 1 if a gate fails."""
    from spulctl.pipeline import run_eval
    from spulctl.progress import RichEvents
    from spulctl.quantization import quantization_name

    folder = splits or splits_arg
    if folder is None:
        raise SpulError("eval: give the splits directory (argument or --splits)")
    check_positive(limit=limit, batch_size=batch_size)
    gates = {"max_forget_acc": max_forget_acc, "max_retain_drop": max_retain_drop, "min_retain_acc": min_retain_acc,
             "max_forget_restricted_acc": max_forget_restricted_acc, "max_mia_auc": max_mia_auc}
    with RichEvents(console) as events:
        report = run_eval(model, folder, out, bundle=bundle, compare=compare, limit=limit, batch_size=batch_size,
                          gates=gates, junit=junit, overwrite=overwrite, ignore_fingerprint=ignore_fingerprint,
                          mia=mia, plots=plots, robustness=robustness, kernels=kernels, dtype=dtype,
                          backend=backend, recipe=config, on_event=events, max_length=max_length,
                          mia_reference=mia_reference,
                          quantization=quantization_name(load_in_4bit, load_in_8bit))
    _print_report(report)
    if any(not g["passed"] for g in report["gates"]):
        raise typer.Exit(1)


def _print_report(report: dict) -> None:
    """Accuracy table (Δ vs the model), rewritten-query probes, MIA AUCs, and one line per gate."""
    if report.get("task") == "ner":  # per-type P/R/F1 (spulctl.evaluate.ner_report)
        from spulctl.cli.data import print_ner_report

        print_ner_report(report)
        return
    table = Table("subject", *[f"{s} {ARROWS[s]} %" for s in SPLIT_COLUMNS], title="accuracy (Δ vs model)")
    for name, per in report["results"].items():
        cells = []
        for s in SPLIT_COLUMNS:
            m, d = per.get(s), report["deltas"][name].get(s, {}).get("accuracy")
            cells.append("–" if m is None else f"{m['accuracy']:.1f} ({d:+.1f})")
        table.add_row(name, *cells)
    console.print(table)
    for name, per in report["results"].items():
        probes = ", ".join(f"{k.removeprefix('probe:')} {m['accuracy']:.1f}%" for k, m in per.items()
                           if k.startswith("probe:"))
        if probes:
            console.print(f"rewritten forget queries, {name}: {probes}")
    from spulctl.evaluate.mia import ATTACK_NAMES

    for name, sides in report["mia"].items():
        for side, att in sides.items():
            aucs = ", ".join(f"{ATTACK_NAMES.get(a, a)} AUC {m['auc']:.3f}" for a, m in att.items())
            console.print(f"MIA {name} {side}: {aucs}", highlight=False, soft_wrap=True)
    if report["mia"] and (report.get("mia_reference") or {}).get("model") is None:
        console.print("MIA reference attack skipped (no --mia-reference)", highlight=False, soft_wrap=True)
    for g in report["gates"]:
        (err_console if not g["passed"] else console).print(("FAIL " if not g["passed"] else "pass ") + g["detail"],
                                                            highlight=False, soft_wrap=True)


@handle_errors
def sweep(
    out: Annotated[Path, typer.Option("--out", "-o", help="Sweep directory (resumable).")],
    splits: Annotated[Path, typer.Option(help="Splits directory.")],
    model: ModelOpt = "smollm2-135m",
    alpha: Annotated[str | None, typer.Option(help="α values, e.g. 0.5,1")] = None,
    beta: Annotated[str | None, typer.Option(help="β values.")] = None,
    prompt_tokens: Annotated[str | None, typer.Option("--prompt-tokens", help="p values.")] = None,
    tau: Annotated[str | None, typer.Option(help="Forget-set fractions τ.")] = None,
    prompt_encoder: Annotated[str, typer.Option(help="none | mlp")] = "none",
    epochs: Annotated[int, typer.Option(help="Epochs per cell (only with --forget-share 0).")] = 10,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-2,
    forget_share: Annotated[float, typer.Option(help="Forget share per batch (0: the data's own mix).")] = 0.5,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 16,
    retain_limit: Annotated[int | None, typer.Option(help="Retain subset per cell.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Steps per cell (quick runs).")] = None,
    eval_limit: Annotated[int | None, typer.Option(help="Test records per split per cell.")] = 1000,
    seed: SeedOpt = 0,
) -> None:
    """Unlearn + evaluate over a grid of α, β, p, τ; writes results.jsonl, sweep.md, sweep.png."""
    from spulctl.evaluate.sweep import parse_grid, run_sweep
    from spulctl.progress import RichEvents
    from spulctl.train import TrainConfig
    from spulctl.unlearn import UnlearnConfig

    grid = parse_grid({"alpha": alpha, "beta": beta, "prompt_tokens": prompt_tokens, "tau": tau})
    if not grid:
        raise SpulError("sweep: give at least one of --alpha, --beta, --prompt-tokens, --tau")
    check_positive(epochs=epochs, batch_size=batch_size, retain_limit=retain_limit, max_steps=max_steps)
    base = UnlearnConfig(model=model, out=out, splits=splits, prompt_encoder=prompt_encoder, eval_limit=eval_limit,
                         forget_share=forget_share,
                         retain_limit=retain_limit, train=TrainConfig(lr=lr, epochs=epochs, batch_size=batch_size,
                                                                      seed=seed, max_steps=max_steps))
    with RichEvents(console) as events:
        rows = run_sweep(base, grid, out, events)
    console.print(f"{len(rows)} cells; table in {out / 'sweep.md'}, plot in {out / 'sweep.png'}")
