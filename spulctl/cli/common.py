"""What every command module of the CLI shares: consoles, error handling, options declared once, recipe files.

Adding an option to a command that builds a library config (``familiarize``, ``unlearn``): declare the parameter in
the command's signature (reuse an ``...Opt`` alias from here when the flag exists elsewhere) and give the config
dataclass (``UnlearnConfig``, ``TrainConfig``, ...) a field of the same name: :func:`fill` copies values to fields by
name, so nothing else needs wiring, and ``--config recipe.toml`` accepts the new key automatically.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from spulctl.errors import SpulError

console = Console()
err_console = Console(stderr=True)
T = TypeVar("T")


def print_error(message: str) -> None:
    """One red line on stderr."""
    err_console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True, highlight=False)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn SpulError into a one-line message and its exit code (2); Ctrl-C into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SpulError as exc:
            print_error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/yellow] (re-run with --resume to continue)")
            raise typer.Exit(130) from None

    return wrapper


def check_positive(**values: int | None) -> None:
    """Refuse counts below 1 (``None`` means "not given").

    Raises:
        SpulError: naming the flag and the value.
    """
    for name, v in values.items():
        if v is not None and v < 1:
            raise SpulError(f"--{name.replace('_', '-')}: must be >= 1, got {v}")


def fill(cls: type[T], values: dict[str, Any], **fixed: Any) -> T:
    """Build the dataclass ``cls`` from the command's values whose names are its fields.

    Args:
        cls: a config dataclass.
        values: the command's parameters (``dict(locals())`` at the top of the command).
        **fixed: fields set explicitly (nested configs, flags whose meaning is inverted, parsed lists).
    """
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs = {k: v for k, v in values.items() if k in names}
    return cls(**{**kwargs, **fixed})


def _option_names(command: Any) -> dict[str, Any]:
    """Every key a recipe may use for ``command``: parameter names and long flags, dashes as underscores."""
    names: dict[str, Any] = {}
    for param in command.params:
        if param.name in (None, "config", "help"):
            continue
        names[param.name] = param
        for opt in getattr(param, "opts", []) + getattr(param, "secondary_opts", []):
            if opt.startswith("--"):
                names[opt[2:].replace("-", "_")] = param
    return names


def read_recipe(path: Path, ctx: typer.Context) -> tuple[dict[str, Any], dict[str, Any]]:
    """Parse a TOML recipe for the command of ``ctx``.

    Returns:
        ``(default_map, record)``: values by parameter name (already type-checked), and the record kept in the
        artifact's manifest (``path``, ``sha256``, ``content``).

    Raises:
        SpulError: unreadable file, invalid TOML, a key that is not an option of the command, or a bad value.
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    try:
        raw = path.read_bytes()
        content = tomllib.loads(raw.decode("utf-8"))
    except OSError as exc:
        raise SpulError(f"--config {path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SpulError(f"{path}: not valid TOML ({exc})") from None
    known = _option_names(ctx.command)
    defaults: dict[str, Any] = {}
    for key, value in content.items():
        param = known.get(key.replace("-", "_"))
        if param is None or param.name is None:
            raise SpulError(f"{path}: unknown key '{key}' (not an option of `spulctl {ctx.info_name}`)")
        try:
            _check_value(param, value, ctx)
        except Exception as exc:  # the parser's own BadParameter, or a conversion error
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            raise SpulError(f"{path}: key '{key}' = {value!r}: {message}") from None
        defaults[param.name] = value
    record = {"path": str(path), "sha256": hashlib.sha256(raw).hexdigest(),
              "content": json.loads(json.dumps(content, default=str))}
    return defaults, record


def _check_value(param: Any, value: Any, ctx: typer.Context) -> None:
    """Convert ``value`` as the command line's parser would (raises its error when it does not fit)."""
    many = getattr(param, "multiple", False) or param.nargs != 1
    for item in (value if many and isinstance(value, list) else [value]):
        if isinstance(item, bool) and not getattr(param, "is_flag", False):
            raise ValueError("expected a value, not true/false")
        if isinstance(item, (list, dict)):
            raise ValueError("expected a single value")
        if hasattr(param, "get_runtime_param"):
            param.get_runtime_param().coerce(str(item) if isinstance(item, (int, float)) and not isinstance(item, bool)
                                             else item, param=param, ctx=ctx)
        else:
            param.type.convert(item, param, ctx)


def _recipe_callback(ctx: typer.Context, value: Path | None) -> dict[str, Any] | None:
    """Eager ``--config``: its values become the command's defaults, so flags on the command line win.

    Returns:
        The recipe's record (path, sha256, content): the command receives it as its ``config`` value.
    """
    if value is None or ctx.resilient_parsing:
        return None
    try:
        defaults, record = read_recipe(Path(value), ctx)
    except SpulError as exc:
        print_error(str(exc))
        raise typer.Exit(exc.exit_code) from None
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return record


# ---- options shared by several commands (declared once; each command sets its own default) ----
ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", help="Recipe: a TOML file whose keys are this command's options (flags given here win).",
    is_eager=True, callback=_recipe_callback, show_default=False)]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Alias, HF directory, .gguf file or hub id.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint.")]
IgnoreFingerprintOpt = Annotated[bool, typer.Option("--ignore-fingerprint",
                                                    help="Use a bundle on a model whose fingerprint differs.")]
LoadIn4bitOpt = Annotated[bool, typer.Option("--load-in-4bit", help="Frozen base in 4-bit NF4 (bitsandbytes); the "
                                             "prompt and the loss stay fp32.")]
LoadIn8bitOpt = Annotated[bool, typer.Option("--load-in-8bit", help="Frozen base in 8-bit int8 (bitsandbytes).")]
MicroBatchOpt = Annotated[int, typer.Option(help="Examples per forward/backward slice of a step (gradients added up; "
                                                 "less memory, same step). 0: the whole batch.")]
DtypeOpt = Annotated[str, typer.Option(help="Model weights/activations: auto (bf16 on CUDA, fp32 on CPU) | float32 | "
                                            "bfloat16 | float16.")]
SeedOpt = Annotated[int, typer.Option(help="Seed.")]
EpochsOpt = Annotated[int, typer.Option(help="Passes over the data.")]
LrOpt = Annotated[float, typer.Option(help="Peak learning rate.")]
BatchSizeOpt = Annotated[int, typer.Option(help="Examples per step.")]
RetainLimitOpt = Annotated[int | None, typer.Option(help="Random subset of the retain set of this size.")]
MaxStepsOpt = Annotated[int | None, typer.Option(help="Stop after this many steps.")]
CheckpointEveryOpt = Annotated[int, typer.Option(help="Steps between checkpoints.")]
KernelsOpt = Annotated[str, typer.Option(help="auto | triton | torch (fused answer-head loss).")]
TextFieldOpt = Annotated[str | None, typer.Option(help="Text column (auto-detected).")]
MaxLengthOpt = Annotated[int | None, typer.Option(
    "--max-length", help="Tokens per example (template + text + answer): a longer text is cut at its end, the "
    "template and answer position kept, and counted. Default: the model's context window minus the prompt's p.",
    show_default=False)]
