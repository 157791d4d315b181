"""``spulctl split`` (one labelled dataset into train/test × forget/retain) and ``spulctl data ner`` (texts into
NER-task splits)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from spulctl.cli.common import OverwriteOpt, SeedOpt, TextFieldOpt, check_positive, console, handle_errors

data_app = typer.Typer(help="Build task datasets from raw text (ner).", no_args_is_help=True)


@handle_errors
def split(
    data: Annotated[str, typer.Argument(help="Labelled dataset: .jsonl/.csv/.tsv/.parquet, a hub name, or 'demo'.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output splits directory.")],
    by: Annotated[str, typer.Option(help="entity | cluster | file")] = "entity",
    entities: Annotated[str | None, typer.Option(help="People to forget, comma-separated.")] = None,
    top_entities: Annotated[int | None, typer.Option(help="Forget the N most mentioned PERSON entities.")] = None,
    min_entity_count: Annotated[int, typer.Option(help="Ignore NER candidates seen fewer times.")] = 3,
    surname_aliases: Annotated[bool, typer.Option(
        help="A forgotten person's surname alone counts as the person (when it is not a common word).")] = True,
    clusters: Annotated[int, typer.Option(help="k for --by cluster.")] = 20,
    forget_fraction: Annotated[float, typer.Option(help="Train share to forget (--by cluster).")] = 0.05,
    embedder: Annotated[str, typer.Option(help="'minilm' or a model spec (mean-pooled states).")] = "minilm",
    forget: Annotated[Path | None, typer.Option(help="Records to forget (--by file).")] = None,
    test_size: Annotated[float, typer.Option(help="Share held out as test.")] = 0.3,
    tau: Annotated[float, typer.Option(help="Keep this fraction of train_forget (paper Table 3).")] = 1.0,
    seed: SeedOpt = 0,
    text_field: TextFieldOpt = None,
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
            top_entities=top_entities, min_entity_count=min_entity_count, surname_aliases=surname_aliases,
            clusters=clusters,
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


@data_app.command("ner")
@handle_errors
def ner(
    texts: Annotated[str, typer.Argument(help="Texts: .jsonl/.csv/.tsv/.parquet or a hub name (labels ignored).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output splits directory.")],
    limit: Annotated[int | None, typer.Option(help="Label at most N unique texts (a seeded random sample).")] = None,
    test_size: Annotated[float, typer.Option(help="Share of each pool held out as test.")] = 0.3,
    empty_share: Annotated[float, typer.Option(help="Share of retain made of entity-free records.")] = 0.25,
    seed: SeedOpt = 0,
    text_field: TextFieldOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Label texts with spaCy (PERSON, ORG, GPE) and split them for the generative NER task: forget = records naming
    a person, retain = records naming an ORG or GPE but no person, plus a share of entity-free records."""
    from spulctl.data.ner_split import NerSplitConfig, run_ner_data
    from spulctl.progress import RichEvents

    check_positive(limit=limit)
    cfg = NerSplitConfig(test_size=test_size, empty_share=empty_share, limit=limit, seed=seed)
    with RichEvents(console) as events:
        info = run_ner_data(texts, out, cfg, text_field=text_field, overwrite=overwrite, on_event=events)
    types = info["entity_types"]
    table = Table("split", "records", *types, title=f"NER splits written to {out} (per type: records / mentions)")
    for name, n in info["counts"].items():
        table.add_row(name, str(n), *[f"{info['records_with'][name][t]} / {info['mentions'][name][t]}" for t in types])
    console.print(table)
    pools = info["pools"]
    console.print(f"labelled {info['texts']['labelled']} unique texts with {info['spacy_model']}: "
                  f"{pools['person']} name a person, {pools['org_gpe_only']} only an ORG/GPE, {pools['none']} none "
                  f"({pools['none_kept']} of these kept for retain)", highlight=False)


def print_ner_report(report: dict) -> None:
    """The NER eval table: a row per subject and split, P / R / F1 (ΔF1 vs the model) per entity type."""
    from spulctl.evaluate.ner_report import ner_rows

    head, rows = ner_rows(report)
    table = Table(*head, title="NER: micro P / R / F1 % per type (Δ F1 vs model)")
    for row in rows:
        table.add_row(*row)
    console.print(table)
