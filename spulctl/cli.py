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
    splits: Annotated[Path, typer.Argument(help="Splits directory (train_forget/train_retain[/test_*]).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output model directory.")],
    model: ModelOpt = "smollm2-135m",
    load_in_4bit: Annotated[bool, typer.Option("--load-in-4bit", help="QLoRA: NF4 base (bitsandbytes).")] = False,
    retain_limit: Annotated[int | None, typer.Option(help="Random subset of train_retain of this size.")] = None,
    epochs: Annotated[int, typer.Option(help="Passes over the data.")] = 1,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 2e-4,
    batch_size: Annotated[int, typer.Option(help="Examples per step.")] = 16,
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
                          weight_decay=0.0, checkpoint_every=checkpoint_every, max_steps=max_steps),
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
