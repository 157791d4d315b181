"""Rich rendering of the library's progress events (CLI side; no tensors here)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class RichEvents:
    """Turns ``{"kind": ...}`` events from :func:`spulctl.train.fit` and evaluation into progress bars.

    Use as a context manager; pass the instance as ``on_event``.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=console, transient=False,
        )
        self.tasks: dict[str, Any] = {}
        # Without a terminal (CI logs, redirected output) progress bars only draw at the end: print a plain line
        # every ``log_every`` steps instead.
        self.log_every = 0 if console.is_terminal else 25

    def __enter__(self) -> RichEvents:
        return self

    def _add(self, key: str, description: str, total: int, completed: int = 0) -> None:
        # Start drawing only once there is a bar, so a command that fails early prints just its error.
        if not self.tasks:
            self.progress.start()
        self.tasks[key] = self.progress.add_task(description, total=total, completed=completed, info="")

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["kind"]
        if kind == "note":
            self.console.print(f"[dim]{event['message']}[/dim]")
        elif kind == "start":
            done = event.get("resumed_from", 0)
            if done:
                self.console.print(f"resuming from step {done}")
            self._add("train", "train", event["total"], done)
        elif kind == "step":
            parts = " ".join(f"{k}={v:.4f}" for k, v in event["parts"].items())
            info = f"{parts} {event['samples_per_s']:.1f} samples/s ep {event['epoch']}"
            self.progress.update(self.tasks["train"], completed=event["step"], info=info)
            if self.log_every and (event["step"] % self.log_every == 0 or event["step"] == event["total"]):
                self.console.print(f"step {event['step']}/{event['total']} {info}")
        elif kind == "epoch":
            means = " ".join(f"{k}={v:.4f}" for k, v in event["means"].items())
            self.console.print(f"epoch {event['epoch']}: {means}")
        elif kind == "evaluated":
            self.console.print(f"epoch {event['epoch']} held-out: forget acc {event['forget_acc']:.1f}%  "
                               f"retain acc {event['retain_acc']:.1f}%  score {event['score']:.1f}")
        elif kind in ("ner-start", "embed-start"):
            what = "NER (spaCy)" if kind == "ner-start" else "embedding"
            self._add(kind[:-6], what, event["total"])
        elif kind in ("ner-step", "embed-step"):
            self.progress.advance(self.tasks[kind[:-5]], event["n"])
        elif kind == "eval-start":
            self._add(f"eval:{event['split']}", f"eval {event['split']}", event["total"])
        elif kind == "eval-step":
            self.progress.advance(self.tasks[f"eval:{event['split']}"], event["n"])
        elif kind == "eval-done":
            m = event["metrics"]
            self.progress.update(self.tasks[f"eval:{event['split']}"],
                                 info=f"acc {m.get('accuracy', 0):.1f}%")
