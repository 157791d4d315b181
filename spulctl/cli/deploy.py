"""``spulctl export`` and ``spulctl predict``: ship the bundle as an ONNX scorer (or a PEFT adapter) and classify."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from spulctl.cli.common import (
    IgnoreFingerprintOpt,
    MaxLengthOpt,
    ModelOpt,
    OverwriteOpt,
    TextFieldOpt,
    check_positive,
    console,
    err_console,
    handle_errors,
)
from spulctl.errors import SpulError


@handle_errors
def export(
    out: Annotated[Path, typer.Option("--out", "-o", help="Export directory.")],
    model: ModelOpt = "smollm2-135m",
    bundle: Annotated[Path | None, typer.Option(help="Prompt bundle to compile into the graph.")] = None,
    no_bundle: Annotated[bool, typer.Option("--no-bundle", help="Export the unprompted model (comparison).")] = False,
    ignore_fingerprint: IgnoreFingerprintOpt = False,
    prefix: Annotated[str, typer.Option("--prefix", help="baked (initializers in the graph) | inputs (bound once "
                                        "at run time).")] = "baked",
    dtype: Annotated[str, typer.Option(help="float32 (CPU) | float16 (CUDA execution provider).")] = "float32",
    fmt: Annotated[str, typer.Option("--format", help="onnx (ONNX scorer) | peft (PEFT prompt-tuning adapter: "
                                     "adapter_config.json + adapter_model.safetensors).")] = "onnx",
    max_length: MaxLengthOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Export the bundle: an ONNX scorer (KV prefix + model.onnx + tokenizer + manifest) or a PEFT adapter.

    A ``--method release`` adapter is exported with ``--model ADAPTER --no-bundle``: its base model with the stack
    merged in, as an ONNX scorer that ``predict`` serves.
    """
    from spulctl.pipeline import run_export, run_export_peft
    from spulctl.progress import RichEvents

    exporters = {"onnx": run_export, "peft": run_export_peft}
    if fmt not in exporters:
        raise SpulError(f"--format {fmt}: use one of {', '.join(exporters)}")
    if fmt == "peft" and (no_bundle or prefix != "baked" or dtype != "float32"):
        raise SpulError("--format peft: takes --bundle; --no-bundle, --prefix and --dtype belong to --format onnx")
    onnx_only = {"no_bundle": no_bundle, "prefix_mode": prefix, "dtype": dtype} if fmt == "onnx" else {}
    with RichEvents(console) as events:
        manifest = exporters[fmt](model, out, bundle=bundle, ignore_fingerprint=ignore_fingerprint,
                                  overwrite=overwrite, on_event=events, max_length=max_length, **onnx_only)
    if fmt == "peft":
        console.print(f"PEFT prompt-tuning adapter written to {out} (p={manifest['bundle']['p']}); PEFT vs spulctl: "
                      f"max |score diff| = {manifest['check']['max_abs_score_diff']:.2e}")
        return
    check = manifest["check"]
    said = (f"ONNX Runtime check skipped: {check['skipped']}" if check.get("skipped") else
            f"ONNX Runtime check on {check['provider']}: max |score diff| vs torch = {check['max_abs_score_diff']:.2e}")
    console.print(f"exported to {out} (opset {manifest['opset']}, {manifest['dtype']}, prefix {manifest['prefix']}); "
                  + said)


@handle_errors
def predict(
    onnx_dir: Annotated[Path, typer.Option("--onnx", help="Export directory from `spulctl export`.")],
    input_file: Annotated[Path, typer.Option("--input", "-i", help="Texts: .jsonl/.csv/.tsv/.parquet.")],
    output: Annotated[Path | None, typer.Option("--output", help="Write .jsonl or .csv here (default: stdout).")]
    = None,
    provider: Annotated[str, typer.Option(help="auto | cuda | cpu")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Texts per run.")] = 32,
    text_field: TextFieldOpt = None,
    ids: Annotated[bool, typer.Option("--ids", help="Also give the top-1 token id of each answer.")] = False,
    max_length: Annotated[int | None, typer.Option("--max-length", help="Tokens per text: a longer text is cut at "
                                                   "its end (template kept). Default: the export's max_length.",
                                                   show_default=False)] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Classify texts with an exported model on ONNX Runtime: label, the model's answer and label-word scores.

    One JSON line per text on stdout (``text``, ``label``, ``answer``: the top-1 token's text, ``scores``: log-probs
    of the label words), or a .jsonl/.csv file with ``--output`` (the CSV keeps text, label and scores; ``--ids``
    adds the answer and its token id).
    """
    from spulctl.data.readers import ReadOptions, read_records
    from spulctl.export.runtime import OnnxPredictor
    from spulctl.io import write_jsonl_atomic, write_text_atomic

    check_positive(batch_size=batch_size)
    if output is not None and output.exists() and not overwrite:
        raise SpulError(f"{output}: exists (pass --overwrite to replace it)")
    if output is not None and output.suffix not in (".jsonl", ".csv"):
        raise SpulError(f"--output {output}: use a .jsonl or .csv file")
    texts = [r["text"] for r in read_records(input_file, ReadOptions(text_field=text_field, require_label=False))]
    predictor = OnnxPredictor(onnx_dir, provider=provider, batch_size=batch_size, max_length=max_length)
    rows = [_shown(r, ids) for r in predictor.predict(texts)]
    if output is None:
        for r in rows:
            typer.echo(json.dumps({**r, "scores": {w: round(s, 4) for w, s in r["scores"].items()}},
                                  ensure_ascii=False))
    elif output.suffix == ".jsonl":
        write_jsonl_atomic(output, rows)
    else:
        write_text_atomic(output, _csv(rows))
    cut = f"; {predictor.truncated} cut to {predictor.max_length} tokens" if predictor.truncated else ""
    err_console.print(f"{len(rows)} texts on {predictor.provider}{cut}")


def _shown(row: dict[str, Any], ids: bool) -> dict[str, Any]:
    """The fields a user reads: text, label, answer, scores; the token id only when asked for."""
    shown = {"text": row["text"], "label": row["label"], "answer": row["answer"], "scores": row["scores"],
             "truncated": row["truncated"]}
    if ids:
        shown["top1"] = row["top1"]
    return shown


def _csv(rows: list[dict[str, Any]]) -> str:
    """``text,label,score_<word>...``; with ``--ids`` also ``answer`` and ``top1`` columns after them."""
    import csv
    import io

    buf = io.StringIO()
    words = list(rows[0]["scores"]) if rows else []
    extra = ["answer", "top1"] if rows and "top1" in rows[0] else []
    writer = csv.writer(buf)
    writer.writerow(["text", "label", *[f"score_{w}" for w in words], *extra])
    for r in rows:
        writer.writerow([r["text"], r["label"] or "", *[f"{r['scores'][w]:.6f}" for w in words],
                         *[r[k] for k in extra]])
    return buf.getvalue()
