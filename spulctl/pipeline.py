"""One short function per command: glue between the CLI's plain values and the library."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

Event = Callable[[dict[str, Any]], None]
DEMO_SOURCE = "demo"


def load_dataset_records(source: str, text_field: str | None = None, label_field: str | None = None,
                         label_map: str | None = None, note: Callable[[str], None] | None = None) -> list[dict]:
    """Read a dataset given on the command line; ``demo`` is the built-in demo dataset."""
    from spulctl.data.readers import ReadOptions, parse_label_map, read_records

    if source == DEMO_SOURCE and not Path(source).exists():
        from spulctl.data.demo import demo_records

        return demo_records()
    opts = ReadOptions(text_field=text_field, label_field=label_field, label_map=parse_label_map(label_map))
    return read_records(source, opts, note)


def run_split(data: str, out: Path, *, overwrite: bool = False, on_event: Event | None = None,
              text_field: str | None = None, label_field: str | None = None, label_map: str | None = None,
              forget_file: Path | None = None, **settings: Any) -> dict[str, Any]:
    """``spulctl split``: read, split, write; returns the ``split.json`` content."""
    from spulctl.data.readers import ReadOptions, parse_label_map, read_records
    from spulctl.data.split import SplitConfig, split_records, write_splits
    from spulctl.io import check_output_dir, sha256_file

    emit = on_event or (lambda _e: None)
    note = lambda m: emit({"kind": "note", "message": m})  # noqa: E731
    cfg = SplitConfig(forget_file=forget_file, **settings)
    check_output_dir(out, overwrite)
    records = load_dataset_records(data, text_field, label_field, label_map, note)
    forget = None
    if forget_file is not None:
        opts = ReadOptions(text_field=text_field, label_field=label_field, label_map=parse_label_map(label_map))
        forget = read_records(forget_file, opts, note)
    result = split_records(records, cfg, emit, forget)
    source_hash = sha256_file(data) if Path(data).is_file() else data
    write_splits(result, out, {"source": data, "sha256": source_hash, "records": len(records)}, overwrite)
    return result.info


def run_eval(model: str, splits: Path, out: Path | None, *, bundle: Path | None = None,
             compare: list[str] | None = None, limit: int | None = None, batch_size: int = 32,
             gates: dict[str, float | None] | None = None, junit: Path | None = None, overwrite: bool = False,
             ignore_fingerprint: bool = False, mia: bool = False, plots: Path | None = None,
             robustness: bool = False, kernels: str = "auto", dtype: str = "auto", backend: str = "torch",
             on_event: Event | None = None, max_length: int | None = None,
             recipe: dict[str, Any] | None = None, mia_reference: str | None = None,
             quantization: str = "none") -> dict[str, Any]:
    """``spulctl eval``: score the model (and bundle, and comparisons), check gates, write the report.

    ``mia_reference`` (a model spec, e.g. one familiarized with ``--never-seen``) adds the reference attack to
    membership inference (and turns it on); the report's ``mia_reference`` names it, or says it was skipped.

    ``quantization`` (``none|4bit|8bit``) loads the model subjects' frozen weights through bitsandbytes.

    ``recipe`` (the ``--config`` file's path, sha256 and content) is copied into the report.

    ``max_length`` bounds every example (:mod:`spulctl.data.truncate`; None: each subject's context window minus its
    prompt); the report's per-split metrics count the records cut (``truncated``).

    Returns:
        The report dict; ``report["gates"]`` lists each gate with ``passed``.
    """
    from spulctl.evaluate.gates import check_gates, junit_xml
    from spulctl.evaluate.report import (
        Subject,
        build_report,
        evaluate_subjects,
        parse_compare,
        write_report,
    )
    from spulctl.io import check_output_dir, write_text_atomic

    emit = on_event or (lambda _e: None)
    from spulctl.data.ner import is_ner_splits

    if is_ner_splits(splits):  # the generative NER task: per-type P/R/F1 (spulctl.evaluate.ner_report)
        from spulctl.evaluate.ner_report import check_ner_eval_options, run_ner_eval

        others = check_ner_eval_options(bundle, compare or [], mia=mia or mia_reference, plots=plots,
                                        robustness=robustness, junit=junit, backend=backend != "torch",
                                        **{k: v is not None for k, v in (gates or {}).items()})
        report = run_ner_eval([("model", model), *others], splits, out, limit=limit, batch_size=batch_size,
                              overwrite=overwrite, dtype=dtype, max_length=max_length, on_event=emit, recipe=recipe,
                              ignore_fingerprint=ignore_fingerprint)
        return report
    if out is not None:
        check_output_dir(out, overwrite)
    subjects = [Subject("model", model)]
    if bundle is not None:
        subjects.append(Subject("bundle", model, bundle))
    for s in parse_compare(compare or []):
        subjects.append(Subject(s.name, s.model or model, s.bundle))
    names = [s.name for s in subjects]
    if len(set(names)) != len(names):
        from spulctl.errors import SpulError

        raise SpulError(f"--compare: subject names must be unique, got {names}")
    gates = dict(gates or {})
    mia = mia or gates.get("max_mia_auc") is not None or mia_reference is not None
    results, mia_results = evaluate_subjects(subjects, splits, limit, batch_size, emit, ignore_fingerprint, mia,
                                             robustness, kernels, dtype, backend, max_length, mia_reference,
                                             quantization=quantization)
    primary = "bundle" if bundle is not None else "model"
    checked = check_gates(results[primary], results["model"], mia=mia_results.get(primary), **gates)
    report = build_report(results, "model", subjects, splits, limit, checked, mia_results)
    report["primary"] = primary
    report["backend"] = backend
    if mia:
        from spulctl.evaluate.mia import reference_info

        report["mia_reference"] = reference_info(mia_reference)
    if recipe is not None:
        report["recipe"] = recipe
    from spulctl.data.truncate import POLICY

    report["truncation"] = {"max_length": max_length or "context window minus p", "policy": POLICY,
                            "truncated": {name: {s: m.get("truncated", 0) for s, m in per.items()}
                                          for name, per in results.items()}}
    extra: dict[str, Path] = {}
    if plots is not None:
        inside = out is not None and plots.resolve().is_relative_to(out.resolve())
        if inside:  # the report directory is published whole: draw into a scratch dir, ship the files with it
            import tempfile

            scratch = Path(tempfile.mkdtemp(prefix="spulctl-plots-"))
            made = _eval_plots(model, bundle, splits, results, scratch, limit, max_length)
            rel = plots.resolve().relative_to(out.resolve())
            extra = {str(rel / p.name): p for p in made}
            report["plots"] = [str(plots / p.name) for p in made]
        else:
            report["plots"] = [str(p) for p in _eval_plots(model, bundle, splits, results, plots, limit,
                                                           max_length)]
    if out is not None:
        write_report(report, out, overwrite, extra)
    if junit is not None:
        write_text_atomic(junit, junit_xml(checked))
    return report


def _eval_plots(model: str, bundle: Path | None, splits: Path, results: dict, folder: Path,
                limit: int | None, max_length: int | None = None) -> list[Path]:
    """Trade-off scatter of all subjects; t-SNE of answer states before/after the bundle on test records."""
    import random

    from spulctl.bundle import load_bundle
    from spulctl.data.readers import load_split
    from spulctl.data.task import TaskSpec
    from spulctl.evaluate.plots import answer_states, tradeoff_plot, tsne_plot
    from spulctl.models import load_model

    made = [tradeoff_plot(results, folder / "tradeoff.png")]
    n = min(limit or 300, 300)
    rng = random.Random(0)
    rows, kinds = [], []
    for kind in ("forget", "retain"):
        split = load_split(splits, f"test_{kind}")
        picked = rng.sample(split, min(n, len(split)))
        rows += picked
        kinds += [kind] * len(picked)
    m, tok = load_model(model)
    task, states = TaskSpec(), {"model": answer_states(m, tok, TaskSpec(), rows, None, max_length=max_length)}
    if bundle is not None:
        b = load_bundle(bundle)
        task = b.task()
        states = {"before (model)": states["model"],
                  "after (model + bundle)": answer_states(m, tok, task, rows, b.prompt, max_length=max_length)}
    made.append(tsne_plot(states, kinds, [r["label"] for r in rows], folder / "tsne.png"))
    return made


def run_export(model: str, out: Path, *, bundle: Path | None = None, no_bundle: bool = False,
               ignore_fingerprint: bool = False, overwrite: bool = False, prefix_mode: str = "baked",
               dtype: str = "float32", on_event: Event | None = None,
               max_length: int | None = None) -> dict[str, Any]:
    """``spulctl export``: see :func:`spulctl.export.build.export_scorer`; returns the export's manifest."""
    from spulctl.export.build import export_scorer

    return export_scorer(model, out, bundle=bundle, no_bundle=no_bundle, ignore_fingerprint=ignore_fingerprint,
                         overwrite=overwrite, prefix_mode=prefix_mode, dtype=dtype, on_event=on_event,
                         max_length=max_length)


def run_export_peft(model: str, out: Path, *, bundle: Path | None = None, ignore_fingerprint: bool = False,
                    overwrite: bool = False, on_event: Event | None = None,
                    max_length: int | None = None) -> dict[str, Any]:
    """``spulctl export --format peft``: see :func:`spulctl.export.peft_adapter.export_peft_adapter`."""
    from spulctl.export.peft_adapter import export_peft_adapter

    return export_peft_adapter(model, out, bundle=bundle, ignore_fingerprint=ignore_fingerprint, overwrite=overwrite,
                               on_event=on_event, max_length=max_length)


def run_bundle_import_peft(adapter: Path, model: str, out: Path, *, overwrite: bool = False,
                           on_event: Event | None = None) -> dict[str, Any]:
    """``spulctl bundle import-peft``: a PEFT prompt-tuning adapter -> a verified prompt bundle for ``model``."""
    from spulctl.bundle_peft import import_peft_adapter
    from spulctl.io import check_output_dir
    from spulctl.models import load_model

    check_output_dir(out, overwrite)
    m, _ = load_model(model, device="cpu", dtype="float32")
    return import_peft_adapter(adapter, m, model, out, overwrite=overwrite, on_event=on_event)
