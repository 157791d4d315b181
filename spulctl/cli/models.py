"""``spulctl models list | pull | info``."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from spulctl.cli.common import OverwriteOpt, console, handle_errors

models_app = typer.Typer(help="List, pull and inspect models.", no_args_is_help=True)


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
