"""``spulctl bundle info | verify | compile | import-peft``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from spulctl.cli.common import (
    IgnoreFingerprintOpt,
    LoadIn4bitOpt,
    LoadIn8bitOpt,
    ModelOpt,
    OverwriteOpt,
    console,
    handle_errors,
)

bundle_app = typer.Typer(help="Inspect and verify prompt bundles.", no_args_is_help=True)
BundleArg = Annotated[Path, typer.Argument(help="Bundle directory.")]


@bundle_app.command("info")
@handle_errors
def bundle_info(path: BundleArg) -> None:
    """Show a bundle's method, base model, prompt shape and metrics (verifies hashes first)."""
    from spulctl.bundle import verify_bundle

    meta = verify_bundle(path)
    console.print_json(json.dumps(meta))


@bundle_app.command("verify")
@handle_errors
def bundle_verify(
    path: BundleArg,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Also check it fits this model.")] = None,
    ignore_fingerprint: IgnoreFingerprintOpt = False,
    load_in_4bit: LoadIn4bitOpt = False,
    load_in_8bit: LoadIn8bitOpt = False,
) -> None:
    """Check files, hashes and shapes; with --model also the base-model fingerprint and quantization. Exit 2 on any
    mismatch."""
    from spulctl.bundle import check_fingerprint, load_bundle

    bundle = load_bundle(path)
    if model is not None:
        from spulctl.models import load_model
        from spulctl.quantization import quantization_name

        m, _ = load_model(model, quantization=quantization_name(load_in_4bit, load_in_8bit))
        check_fingerprint(bundle, m, ignore_fingerprint)
    console.print(f"[green]ok[/green] {path}: p={bundle.prompt.shape[0]} d={bundle.prompt.shape[1]} "
                  f"method={bundle.meta.get('method')} base={bundle.fingerprint[:19]}…")


@bundle_app.command("compile")
@handle_errors
def bundle_compile(
    path: BundleArg,
    model: ModelOpt = "smollm2-135m",
    ignore_fingerprint: IgnoreFingerprintOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Store the prompt's per-layer KV prefix for MODEL in the bundle (compiled_prefix); export reuses it."""
    from spulctl.bundle import compile_into_bundle
    from spulctl.models import load_model

    m, _ = load_model(model, device="cpu", dtype="float32")
    entry = compile_into_bundle(path, m, ignore_fingerprint=ignore_fingerprint, overwrite=overwrite)
    console.print(f"[green]ok[/green] {path}/{entry['file']}: {entry['layers']} layers × (key, value) "
                  f"{tuple(entry['shape'])} for base {entry['fingerprint'][:19]}…")


@bundle_app.command("import-peft")
@handle_errors
def bundle_import_peft(
    adapter: Annotated[Path, typer.Argument(help="PEFT prompt-tuning adapter directory (adapter_config.json + "
                                                 "adapter_model.safetensors).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output bundle directory.")],
    model: ModelOpt = "smollm2-135m",
    overwrite: OverwriteOpt = False,
) -> None:
    """Make a verified prompt bundle for MODEL from a PEFT prompt-tuning adapter (other adapter types refused)."""
    from spulctl.pipeline import run_bundle_import_peft
    from spulctl.progress import RichEvents

    with RichEvents(console) as events:
        meta = run_bundle_import_peft(adapter, model, out, overwrite=overwrite, on_event=events)
    console.print(f"[green]ok[/green] {out}: p={meta['prompt']['tokens']} d={meta['prompt']['dim']} from "
                  f"{meta['settings']['peft_type']} adapter, base {meta['base_model']['fingerprint'][:19]}…")
