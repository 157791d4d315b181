"""``spulctl reveal``: the model writes the data to forget (or to retain) itself."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from spulctl.cli.common import (
    ConfigOpt,
    DtypeOpt,
    ModelOpt,
    OverwriteOpt,
    ResumeOpt,
    SeedOpt,
    console,
    fill,
    handle_errors,
)


class RevealBar:
    """Draws ``reveal-*`` events as one bar (kept of N, with generated / budget and the last reward) and passes
    every other event to the shared renderer."""

    def __init__(self, events: Any) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.events = events
        self.progress = Progress(TextColumn("[bold]reveal kept"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console)
        self.task: Any = None

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["kind"]
        if kind == "reveal-start":
            self.progress.start()
            self.task = self.progress.add_task("reveal", total=event["total"], completed=event["kept"],
                                               info=f"generated {event['generated']}/{event['budget']}")
        elif kind == "reveal-round":
            info = f"generated {event['generated']}/{event['budget']}  reward {event['reward']:.3f}"
            self.progress.update(self.task, completed=event["kept"], info=info)
            if not console.is_terminal and event["round"] % 25 == 0:
                console.print(f"round {event['round']}: kept {event['kept']}/{event['total']} {info}")
        else:
            self.events(event)

    def stop(self) -> None:
        """Stop drawing (idempotent)."""
        self.progress.stop()


@handle_errors
def reveal(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .jsonl (report beside it: <name>.report.json).")],
    model: ModelOpt = "smollm2-135m",
    entities: Annotated[str | None, typer.Option(help="Target names, comma-separated.")] = None,
    target: Annotated[str | None, typer.Option(help="The target in free text (matched by meaning).")] = None,
    examples: Annotated[Path | None, typer.Option(help="A few example texts of the target (.jsonl with 'text', or "
                                                       "one per line).")] = None,
    mode: Annotated[str, typer.Option(help="forget: texts about the target | retain: on-task texts off it.")]
    = "forget",
    n: Annotated[int, typer.Option("-n", "--n", help="Records to keep.")] = 100,
    budget: Annotated[int, typer.Option(help="Texts to generate at most (0: 40 × N).")] = 0,
    bandit: Annotated[str, typer.Option(help="neuralucb | random (uniform choice, the baseline).")] = "neuralucb",
    lam: Annotated[float, typer.Option(help="NeuralUCB λ: initial diagonal of U.")] = 1.0,
    nu: Annotated[float, typer.Option(help="NeuralUCB ν: weight of the exploration bonus.")] = 1.0,
    arms_per_round: Annotated[int, typer.Option(help="Instructions picked per round.")] = 4,
    samples_per_arm: Annotated[int, typer.Option(help="Texts sampled per picked instruction.")] = 4,
    paraphrases: Annotated[int, typer.Option(help="Pool instructions the model paraphrases (0: none).")] = 8,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 1.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 0.95,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens generated per text at most.")] = 48,
    max_sentences: Annotated[int, typer.Option(help="Sentences a text keeps (sampling stops there).")] = 2,
    complete_only: Annotated[bool, typer.Option(help="Drop samples cut off by --max-new-tokens before their first "
                                                     "sentence ended.")] = True,
    min_confidence: Annotated[float, typer.Option(help="On task: restricted label confidence at least this.")]
    = 0.6,
    similarity: Annotated[float, typer.Option(help="On target by meaning: cosine to --target/--examples.")] = 0.5,
    dedup_similarity: Annotated[float, typer.Option(help="Near duplicate: cosine to a kept text.")] = 0.95,
    embedder: Annotated[str, typer.Option(help="minilm | shingle (character 3-grams, no model).")] = "minilm",
    plain_prompt: Annotated[bool, typer.Option(help="Allow a model without a chat template (plain prefix).")]
    = False,
    plot: Annotated[bool, typer.Option(help="Also write <name>.reward.png (reward by round).")] = False,
    seed: SeedOpt = 0,
    dtype: DtypeOpt = "auto",
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Make the model reveal what it knows: NeuralUCB-chosen instructions, scored by relevance × diversity."""
    from spulctl.progress import RichEvents
    from spulctl.reveal import RevealConfig
    from spulctl.reveal import reveal as run_reveal
    from spulctl.reveal.config import read_examples

    values = dict(locals())
    cfg = fill(RevealConfig, values, entities=[e for e in (entities or "").split(",") if e.strip()],
               examples=read_examples(examples) if examples else [])
    with RichEvents(console) as events:
        bar = RevealBar(events)
        try:
            result = run_reveal(cfg, on_event=bar)
        finally:
            bar.stop()
    if os.environ.get("RANK", "0") != "0":  # several processes (accelerate launch): rank 0 reports
        return
    table = Table("round", "generated", "relevant", "kept", "relevance", "diversity", "reward", "total kept",
                  title=f"reveal ({cfg.mode.value}): {len(result.records)} records in {result.generated} texts, "
                        f"{result.seconds:.0f} s")
    rows = result.rounds if len(result.rounds) <= 30 else result.rounds[:10] + result.rounds[-10:]
    for r in rows:
        table.add_row(str(r["round"]), str(r["generated"]), str(r["relevant"]), str(r["kept"]),
                      f"{r['relevance']:.3f}", f"{r['diversity']:.3f}", f"{r['reward']:.3f}", str(r["total_kept"]))
    console.print(table)
    dropped: dict[str, int] = {}
    for r in result.rounds:
        for reason, count in r.get("rejected", {}).items():
            dropped[reason] = dropped.get(reason, 0) + count
    console.print("not kept: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in dropped.items() if v))
    console.print(f"wrote {result.out} and {result.report}" + (f" and {result.plot}" if result.plot else ""))
