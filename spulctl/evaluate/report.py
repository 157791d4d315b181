"""``spulctl eval``: score subjects (model, model + bundle, baselines) on the four splits; write the report.

The report has the shape of the paper's Table 1: per subject, accuracy and weighted F1 on train retain (↑),
train forget (↓), test retain (↑) and test forget (↓), with deltas against the reference model (the ``--model``
without a bundle), plus the restricted accuracy and the share of generic / off-label answers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spulctl.data.readers import SPLIT_NAMES
from spulctl.errors import SpulError

SCHEMA_VERSION = 1
BACKENDS = ("torch", "onnx")
ARROWS = {"train_retain": "↑", "train_forget": "↓", "test_retain": "↑", "test_forget": "↓"}
Event = Callable[[dict[str, Any]], None]


@dataclass
class Subject:
    """Something to evaluate.

    Attributes:
        name: column name in the report.
        model: model spec.
        bundle: prompt bundle directory, or None.
    """

    name: str
    model: str
    bundle: Path | None = None


def parse_compare(items: list[str]) -> list[Subject]:
    """``name=spec`` items; a spec that is a bundle directory is evaluated on the main model, later.

    Raises:
        SpulError: an item without ``=``.
    """
    out = []
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            raise SpulError(f"--compare {item}: expected name=model-or-bundle (e.g. vanilla=smollm2-135m)")
        path = Path(spec)
        is_bundle = path.is_dir() and (path / "bundle.json").is_file()
        out.append(Subject(name, "" if is_bundle else spec, path if is_bundle else None))
    return out


Results = dict[str, dict[str, dict]]


def evaluate_subjects(subjects: list[Subject], splits: Path, limit: int | None, batch_size: int, emit: Event,
                      ignore_fingerprint: bool = False, mia: bool = False,
                      robustness: bool = False, kernels: str = "auto",
                      dtype: str = "auto", backend: str = "torch",
                      max_length: int | None = None,
                      mia_reference: str | None = None,
                      quantization: str = "none") -> tuple[Results, dict[str, dict]]:
    """Score every subject on every split present (and, with ``robustness``, on rewritten forget queries,
    stored as ``probe:<name>`` entries).

    ``kernels`` (``auto|triton|torch``) picks how the membership-inference attacks score every token position:
    the fused Triton head (forward only, logits never materialised) or chunked torch logits. ``backend``
    ``onnx`` scores the splits (and probes) through each subject's ONNX Runtime export instead of torch
    (:mod:`spulctl.evaluate.onnx_backend`); membership inference still runs in torch. ``max_length`` bounds every
    example (:mod:`spulctl.data.truncate`; None: each subject's context window minus its prompt); each split's
    metrics count the records cut (``truncated``). ``mia_reference`` (a model spec) adds the reference attack to
    membership inference: it is scored first, alone in memory (:func:`spulctl.evaluate.mia.reference_logliks`).
    ``quantization`` (``none|4bit|8bit``) loads the subjects' frozen base through bitsandbytes.

    Returns:
        subject -> split -> metrics, and (with ``mia``) subject -> membership-inference results.
    """
    from spulctl.bundle import check_fingerprint, load_bundle
    from spulctl.data.readers import load_split
    from spulctl.data.task import TaskSpec, label_vocab
    from spulctl.data.truncate import resolve_max_length
    from spulctl.evaluate.metrics import score_records
    from spulctl.evaluate.mia import membership_inference, reference_key, reference_logliks
    from spulctl.loss import resolve_kernels
    from spulctl.step import prompted_logits

    records = {}
    for name in SPLIT_NAMES:
        try:
            rows = load_split(splits, name)
        except SpulError:
            continue
        records[name] = rows[:limit] if limit else rows
    if not records:
        raise SpulError(f"{splits}: no split files to evaluate")
    probes = {}
    if robustness and "test_forget" in records:
        from spulctl.evaluate.robustness import probe_records, rewrites

        probes = {name: rows for name, fn in rewrites(splits, [s.bundle for s in subjects if s.bundle]).items()
                  if (rows := probe_records(records["test_forget"], fn))}
    loaded: dict[str, Any] = {}
    results: dict[str, dict[str, dict]] = {}
    mia_results: dict[str, dict] = {}
    if backend not in BACKENDS:
        raise SpulError(f"--backend {backend}: expected one of {', '.join(BACKENDS)}")
    if quantization != "none" and backend != "torch":
        raise SpulError(f"--load-in-{quantization}: only with --backend torch (the ONNX export is full precision)")
    reference = (reference_logliks(mia_reference, _reference_needs(subjects), records, emit, dtype, max_length)
                 if mia and mia_reference else {})
    for subj in subjects:
        if backend == "onnx":
            from spulctl.evaluate.onnx_backend import OnnxSubject

            with OnnxSubject(subj.model, subj.bundle, batch_size, emit, ignore_fingerprint,
                             max_length=max_length) as onnx:
                results[subj.name] = _score_all(onnx.score, subj.name, records, probes)
            if not mia:
                continue
        if subj.model not in loaded:
            loaded.clear()  # one model in memory at a time
            loaded[subj.model] = load_subject_model(subj.model, dtype, ignore_fingerprint, quantization)
        model, tok = loaded[subj.model]
        which = resolve_kernels(kernels, next(model.parameters()).device)
        task, scorer, phi = TaskSpec(), None, None
        if subj.bundle is not None:
            bundle = load_bundle(subj.bundle)
            check_fingerprint(bundle, model, ignore_fingerprint)
            task = bundle.task()
            phi = bundle.prompt.to(next(model.parameters()).device)
            scorer = lambda m, b, phi=phi: prompted_logits(m, b, phi)  # noqa: E731
        vocab = label_vocab(task, tok)
        limit_len = resolve_max_length(model.config, 0 if phi is None else int(phi.shape[0]), max_length)
        if backend == "torch":
            def score(rows: list[dict], tag: str, m=model, t=tok, task=task, vocab=vocab, fn=scorer,
                      ml=limit_len) -> dict:
                return score_records(m, t, task, vocab, rows, batch_size, emit, tag, fn, ml)

            results[subj.name] = _score_all(score, subj.name, records, probes)
        if mia:
            ref = reference.get(reference_key(task, 0 if phi is None else int(phi.shape[0])))
            mia_results[subj.name] = membership_inference(model, tok, task, records, phi, emit, subj.name, which,
                                                          limit_len, reference=ref)
    return results, mia_results


def load_subject_model(spec: str, dtype: str, ignore_fingerprint: bool, quantization: str = "none") -> tuple[Any, Any]:
    """A model spec, or a ``--method release`` LoRA adapter folder (its base model + the adapter, as PEFT loads it)."""
    from spulctl.models import load_model
    from spulctl.release.lora import is_lora_adapter, load_adapter_model

    if is_lora_adapter(Path(spec)):
        return load_adapter_model(Path(spec), dtype, ignore_fingerprint)
    return load_model(spec, dtype=dtype, quantization=quantization)


def _reference_needs(subjects: list[Subject]) -> dict[str, tuple[Any, int]]:
    """Each distinct (task, soft-prompt length) among the subjects: what the reference model is scored under."""
    from spulctl.bundle import load_bundle
    from spulctl.data.task import TaskSpec
    from spulctl.evaluate.mia import reference_key

    needs: dict[str, tuple[Any, int]] = {}
    for subj in subjects:
        task, p = TaskSpec(), 0
        if subj.bundle is not None:
            bundle = load_bundle(subj.bundle)
            task, p = bundle.task(), int(bundle.prompt.shape[0])
        needs[reference_key(task, p)] = (task, p)
    return needs


def _score_all(score: Callable[[list[dict], str], dict], name: str, records: dict[str, list[dict]],
               probes: dict[str, list[dict]]) -> dict[str, dict]:
    """One subject's metrics: every split, then every robustness probe (``probe:<name>``)."""
    out = {split: score(rows, f"{name} {split}") for split, rows in records.items()}
    out.update({f"probe:{probe}": score(rows, f"{name} probe {probe}") for probe, rows in probes.items()})
    return out


def split_score(after: dict[str, dict], before: dict[str, dict]) -> float | None:
    """The aggregate score (:func:`spulctl.selection.aggregate_score`) on the test splits, or None without them."""
    from spulctl.selection import aggregate_score

    need = ("test_retain", "test_forget")
    if not all(k in after and k in before for k in need):
        return None
    return aggregate_score(after["test_retain"]["accuracy"], before["test_retain"]["accuracy"],
                           after["test_forget"]["accuracy"], before["test_forget"]["accuracy"])


def build_report(results: dict[str, dict[str, dict]], reference: str, subjects: list[Subject], splits: Path,
                 limit: int | None, gates: list | None = None, mia: dict[str, dict] | None = None) -> dict[str, Any]:
    """The machine-readable report (``report.json``); a subject's ``never_seen`` says whether its model was
    familiarized without train_forget (``familiarize --never-seen``; None: not a familiarized model)."""
    from spulctl import __version__
    from spulctl.evaluate.mia import never_seen

    deltas = {}
    for name, per_split in results.items():
        deltas[name] = {s: {"accuracy": m["accuracy"] - results[reference][s]["accuracy"]}
                        for s, m in per_split.items() if s in results.get(reference, {})}
    return {
        "schema_version": SCHEMA_VERSION, "spulctl_version": __version__, "splits": str(splits), "limit": limit,
        "reference": reference,
        "subjects": [{"name": s.name, "model": s.model, "bundle": str(s.bundle) if s.bundle else None,
                      "never_seen": never_seen(s.model)} for s in subjects],
        "results": results, "deltas": deltas, "mia": mia or {},
        "aggregate": {name: split_score(per_split, results.get(reference, {})) for name, per_split in results.items()},
        "gates": [g.__dict__ for g in gates or []],
    }


def render_markdown(report: dict[str, Any]) -> str:
    """The paper's Table 1 layout: one row per subject, accuracy and F1 per split, Δ vs the reference."""
    splits = [s for s in SPLIT_NAMES if any(s in r for r in report["results"].values())]
    head = "| subject | " + " | ".join(f"{s} {ARROWS[s]} acc (Δ) | F1" for s in splits) + " |"
    lines = [f"# spulctl eval report\n\nsplits: `{report['splits']}`, limit per split: {report['limit']}, "
             f"Δ = accuracy points vs `{report['reference']}`.\n", head,
             "| --- | " + " | ".join("---: | ---:" for _ in splits) + " |"]
    for name, per_split in report["results"].items():
        cells = []
        for s in splits:
            m, d = per_split.get(s), report["deltas"].get(name, {}).get(s, {}).get("accuracy")
            cells.append("–" if m is None else f"{m['accuracy']:.1f} ({d:+.1f})" if d is not None
                         else f"{m['accuracy']:.1f}")
            cells.append("–" if m is None else f"{m['f1_weighted']:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    unseen = [s["name"] for s in report.get("subjects", []) if s.get("never_seen")]
    if unseen:
        lines += ["", "Never-seen reference: " + ", ".join(f"`{n}`" for n in unseen) + " familiarized with "
                  "`--never-seen` (train_retain only): its forget accuracy is that of a model that never saw "
                  "train_forget."]
    scores = {k: v for k, v in (report.get("aggregate") or {}).items() if v is not None and k != report["reference"]}
    if scores:
        lines += ["", f"Aggregate score vs `{report['reference']}` (harmonic mean of test_retain kept and test_forget "
                  "removed, 0–100, higher is better):", "", "| subject | aggregate ↑ |", "| --- | ---: |"]
        lines += [f"| {k} | {v:.1f} |" for k, v in sorted(scores.items(), key=lambda kv: -kv[1])]
    lines += ["", "Restricted accuracy (argmax over label words) and generic/off-label answer shares:", "",
              "| subject | split | restricted % | generic % | off-label % |", "| --- | --- | ---: | ---: | ---: |"]
    for name, per_split in report["results"].items():
        for s in splits:
            if s in per_split:
                m = per_split[s]
                lines.append(f"| {name} | {s} | {m['restricted_accuracy']:.1f} | {m['generic_share']:.1f} | "
                             f"{m['off_label_share']:.1f} |")
    probe_names = sorted({k for per in report["results"].values() for k in per if k.startswith("probe:")})
    if probe_names:
        lines += ["", "Robustness: test_forget queries rewritten (accuracy %, lower = still forgotten):", "",
                  "| subject | " + " | ".join(p.removeprefix("probe:") for p in probe_names) + " |",
                  "| --- | " + " | ".join("---:" for _ in probe_names) + " |"]
        for name, per in report["results"].items():
            lines.append(f"| {name} | " + " | ".join(f"{per[p]['accuracy']:.1f} (n={per[p]['n']})" if p in per
                                                     else "–" for p in probe_names) + " |")
    if report.get("mia"):
        lines += _mia_markdown(report)
    if report["gates"]:
        lines += ["", "Gates:", ""] + [f"- {'PASS' if g['passed'] else 'FAIL'} {g['detail']}" for g in report["gates"]]
    return "\n".join(lines) + "\n"


def _mia_markdown(report: dict[str, Any]) -> list[str]:
    """The membership-inference table (one AUC and TPR column pair per attack run) and the reference model."""
    from spulctl.evaluate.mia import ATTACK_NAMES, ATTACKS

    rows = [(name, side, att) for name, sides in report["mia"].items() for side, att in sides.items()]
    attacks = [a for a in ATTACKS if any(a in att for _, _, att in rows)]
    lines = ["", "Membership inference (members = train split, non-members = test split; higher score = more "
             "member-like; AUC 0.5 = cannot tell):", "",
             "| subject | side | " + " | ".join(f"{ATTACK_NAMES[a]} AUC | {ATTACK_NAMES[a]} TPR@1%FPR"
                                                 for a in attacks) + " |",
             "| --- | --- | " + " | ".join("---: | ---:" for _ in attacks) + " |"]
    for name, side, att in rows:
        cells = [f"{att[a]['auc']:.3f} | {att[a]['tpr@0.01fpr']:.3f}" if a in att else "– | –" for a in attacks]
        lines.append(f"| {name} | {side} | " + " | ".join(cells) + " |")
    ref = report.get("mia_reference") or {}
    if ref.get("model") is None:
        lines += ["", f"Reference attack skipped: {ref.get('skipped', 'no --mia-reference given')}."]
    else:
        what = {True: "familiarized with `--never-seen`: it never saw train_forget",
                False: "familiarized on train_forget too: not a never-seen reference"}.get(ref.get("never_seen"),
                                                                                           "not a familiarized model")
        lines += ["", f"Reference model: `{ref['model']}` ({what}); score = target − reference label-word "
                  "log-likelihood."]
    return lines


def write_report(report: dict[str, Any], out: Path, overwrite: bool,
                 extra_files: dict[str, Path] | None = None) -> None:
    """Write ``report.json`` and ``report.md`` into ``out`` (staged), plus ``extra_files`` (name in ``out`` ->
    source file, e.g. plots asked for inside ``out``), so that publishing the directory keeps them."""
    import shutil

    from spulctl.io import staged_dir, write_json_atomic, write_text_atomic

    with staged_dir(out, overwrite=overwrite) as stage:
        write_json_atomic(stage / "report.json", report)
        write_text_atomic(stage / "report.md", render_markdown(report))
        for name, src in (extra_files or {}).items():
            (stage / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, stage / name)


def load_report(path: Path) -> dict[str, Any]:
    """Read a report.json (for tooling)."""
    return json.loads(Path(path).read_text())
