"""``spulctl eval`` on NER splits: per-type precision / recall / F1 of each subject, laid out as Table 1.

Table 1 of the SPUL paper has one row per subject and one column per split; here each split is a row of its subject
and each entity type a column group (P, R, F1), with the F1 change against the first subject (the ``--model``), so
"PERSON falls, ORG and GPE stay" reads off one table. Soft-prompt bundles, gates, MIA, plots and rewritten-query probes
are sentiment-task features and are refused on NER splits with one line.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from spulctl.data.ner import NerTaskSpec
from spulctl.errors import SpulError

SPLITS = ("train_retain", "train_forget", "test_retain", "test_forget")


def run_ner_eval(subjects: list[tuple[str, str]], splits: Path, out: Path | None, *, limit: int | None = None,
                 batch_size: int = 32, overwrite: bool = False, dtype: str = "auto", max_length: int | None = None,
                 on_event: Callable[[dict], None] | None = None, spec: NerTaskSpec | None = None,
                 recipe: dict[str, Any] | None = None, ignore_fingerprint: bool = False) -> dict[str, Any]:
    """Score each ``(name, model spec)`` on the NER splits present, write ``report.json`` / ``report.md``.

    A spec may be a ``--method release`` adapter folder (scored on the base model its manifest names; an adapter
    made for another base is refused unless ``ignore_fingerprint``).

    ``recipe`` (the ``--config`` file's path, sha256 and content) is copied into the report.

    Raises:
        SpulError: two subjects share a name, or ``splits`` holds no split file.

    Returns:
        The report: ``task: "ner"``, ``results[subject][split]`` (:func:`~spulctl.evaluate.ner_metrics.prf` dicts),
        ``deltas[subject][split][type]`` (F1 points vs the first subject), ``gates: []``.
    """
    from spulctl.evaluate.ner_metrics import evaluate_ner_splits
    from spulctl.evaluate.report import load_subject_model
    from spulctl.io import check_output_dir

    emit = on_event or (lambda _e: None)
    spec = spec or NerTaskSpec()
    names = [n for n, _ in subjects]
    if len(set(names)) != len(names):
        raise SpulError(f"--compare: subject names must be unique, got {names}")
    if out is not None:
        check_output_dir(out, overwrite)
    results: dict[str, dict] = {}
    for name, model_spec in subjects:
        model, tok = load_subject_model(model_spec, dtype, ignore_fingerprint)
        model.eval()
        results[name] = evaluate_ner_splits(model, tok, spec, splits, limit, batch_size, emit, SPLITS, name,
                                            max_length)
        del model
    if not any(results.values()):
        raise SpulError(f"{splits}: no NER split files (train_/test_ forget/retain .jsonl)")
    base = results[subjects[0][0]]
    report = {"task": "ner", "entity_types": list(spec.entity_types), "splits": str(splits), "limit": limit,
              "subjects": [{"name": n, "model": m} for n, m in subjects], "primary": subjects[0][0],
              "task_spec": spec.to_dict(), "results": results, "gates": [],
              "deltas": {n: {s: {t: _delta(m[t]["f1"], base.get(s, {}).get(t, {}).get("f1")) for t in spec.entity_types}
                             for s, m in per.items()} for n, per in results.items()}}
    if recipe is not None:
        report["recipe"] = recipe
    if out is not None:
        write_ner_report(report, out, overwrite)
    return report


def _delta(value: float | None, ref: float | None) -> float | None:
    return None if value is None or ref is None else value - ref


def check_ner_eval_options(bundle: Path | None, compare: list[str], **refused: Any) -> list[tuple[str, str]]:
    """The subjects ``(name, model spec)`` for an NER eval; one-line error for what NER does not support.

    Args:
        bundle: ``--bundle`` (refused: a soft prompt is a sentiment-task artifact).
        compare: ``--compare name=model`` items (bundles among them refused).
        refused: other options by flag name, refused when truthy (gates, ``mia``, ``plots``, ...).

    Raises:
        SpulError: a refused option is set.
    """
    from spulctl.evaluate.report import parse_compare

    if bundle is not None:
        raise SpulError("eval: --bundle is not supported on NER splits (soft-prompt bundles are sentiment-task "
                        "artifacts); pass the model with --model / --compare")
    for flag, value in refused.items():
        if value:
            raise SpulError(f"eval: --{flag.replace('_', '-')} is not supported on NER splits (per-type P/R/F1 only)")
    subjects = []
    for s in parse_compare(compare):
        if s.bundle is not None:
            raise SpulError(f"--compare {s.name}: bundles are not supported on NER splits; give a model")
        subjects.append((s.name, s.model))
    return subjects


def _cell(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}"


def ner_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the Table-1-style layout: subject, split, n, then P / R / F1 (ΔF1) per type, exact match."""
    types = report["entity_types"]
    head = ["subject", "split", "n", *[f"{t} {c}" for t in types for c in ("P", "R", "F1 (Δ)")], "exact %"]
    rows = []
    for name, per in report["results"].items():
        for split in SPLITS:
            if split not in per:
                continue
            m, d = per[split], report["deltas"][name][split]
            cells = []
            for t in types:
                delta = "" if d[t] is None or name == report["primary"] else f" ({d[t]:+.1f})"
                cells += [_cell(m[t]["precision"]), _cell(m[t]["recall"]), _cell(m[t]["f1"]) + delta]
            rows.append([name, split, str(m["n"]), *cells, _cell(m["exact_match"])])
    return head, rows


def render_ner_markdown(report: dict[str, Any]) -> str:
    """``report.md`` for an NER eval."""
    head, rows = ner_rows(report)
    lines = ["# spulctl eval (NER)", "",
             f"Splits `{report['splits']}`" + (f", first {report['limit']} records per split" if report["limit"]
                                                 else "") + ". Micro P / R / F1 over records, % (– = undefined); "
             "Δ = F1 points vs " + f"`{report['primary']}`.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "| subject | model |", "|---|---|"] + [f"| {s['name']} | `{s['model']}` |"
                                                       for s in report["subjects"]]
    return "\n".join(lines) + "\n"


def write_ner_report(report: dict[str, Any], out: Path, overwrite: bool) -> None:
    """Write ``report.json`` and ``report.md`` into ``out`` (staged, then renamed)."""
    from spulctl.io import staged_dir, write_json_atomic, write_text_atomic

    with staged_dir(out, overwrite=overwrite) as stage:
        write_json_atomic(stage / "report.json", report)
        write_text_atomic(stage / "report.md", render_ner_markdown(report))
