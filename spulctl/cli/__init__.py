"""The ``spulctl`` command line (Typer + rich): parse, validate, call the library, print.

One module per command group; this one builds the app and registers their commands:

* :mod:`spulctl.cli.common` — consoles, error handling, options declared once, ``--config`` recipe files
* :mod:`spulctl.cli.models` — ``models list | pull | info``
* :mod:`spulctl.cli.data` — ``split``, ``data ner``
* :mod:`spulctl.cli.train` — ``familiarize``, ``unlearn``
* :mod:`spulctl.cli.evaluate` — ``eval``, ``sweep``
* :mod:`spulctl.cli.deploy` — ``export``, ``predict``
* :mod:`spulctl.cli.bundle` — ``bundle info | verify | compile``
* :mod:`spulctl.cli.reveal` — ``reveal``
* :mod:`spulctl.cli.plan` — ``plan`` (memory a run needs, from the config alone)

Nothing here imports torch at import time: ``spulctl --help`` stays instant. Library errors
(:class:`~spulctl.errors.SpulError`) become one red line on stderr and exit code 2.
"""

from __future__ import annotations

from typing import Annotated

import typer

from spulctl.cli import bundle, data, deploy, evaluate, models, plan, reveal, train
from spulctl.cli.common import console, handle_errors

__all__ = ["app", "handle_errors", "main"]

app = typer.Typer(name="spulctl",
                  help="Unlearning with soft prompts (SPUL): split, familiarize, unlearn, eval, export.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def version() -> str:
    """The installed distribution's version (``spulctl.__version__`` in a bare checkout)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("spulctl")
    except PackageNotFoundError:
        from spulctl import __version__

        return __version__


def _show_version(value: bool) -> None:
    if value:
        console.print(f"spulctl {version()}", highlight=False)
        raise typer.Exit(0)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show library logs, warnings and bars.")]
          = False,
          _version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True,
                                                 callback=_show_version)] = False) -> None:
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


app.add_typer(models.models_app, name="models")
app.command()(train.familiarize)
app.command()(data.split)
app.add_typer(data.data_app, name="data")
app.command("eval")(evaluate.eval_)
app.command()(evaluate.sweep)
app.command()(deploy.export)
app.command()(deploy.predict)
app.add_typer(bundle.bundle_app, name="bundle")
app.command()(train.unlearn)
app.command()(reveal.reveal)
app.command()(plan.plan)


def main() -> None:
    """Run the app (``python -m spulctl``)."""
    app()
