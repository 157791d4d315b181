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
             on_event: Event | None = None) -> dict[str, Any]:
    """``spulctl eval``: score the model (and bundle, and comparisons), check gates, write the report.

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
    mia = mia or gates.get("max_mia_auc") is not None
    results, mia_results = evaluate_subjects(subjects, splits, limit, batch_size, emit, ignore_fingerprint, mia,
                                             robustness, kernels, dtype, backend)
    primary = "bundle" if bundle is not None else "model"
    checked = check_gates(results[primary], results["model"], mia=mia_results.get(primary), **gates)
    report = build_report(results, "model", subjects, splits, limit, checked, mia_results)
    report["primary"] = primary
    report["backend"] = backend
    extra: dict[str, Path] = {}
    if plots is not None:
        inside = out is not None and plots.resolve().is_relative_to(out.resolve())
        if inside:  # the report directory is published whole: draw into a scratch dir, ship the files with it
            import tempfile

            scratch = Path(tempfile.mkdtemp(prefix="spulctl-plots-"))
            made = _eval_plots(model, bundle, splits, results, scratch, limit)
            rel = plots.resolve().relative_to(out.resolve())
            extra = {str(rel / p.name): p for p in made}
            report["plots"] = [str(plots / p.name) for p in made]
        else:
            report["plots"] = [str(p) for p in _eval_plots(model, bundle, splits, results, plots, limit)]
    if out is not None:
        write_report(report, out, overwrite, extra)
    if junit is not None:
        write_text_atomic(junit, junit_xml(checked))
    return report


def _eval_plots(model: str, bundle: Path | None, splits: Path, results: dict, folder: Path,
                limit: int | None) -> list[Path]:
    """Trade-off scatter of all subjects; t-SNE of answer states before/after the bundle on test records."""
    import random

    from spulctl.bundle import load_bundle
    from spulctl.data.task import TaskSpec
    from spulctl.evaluate.plots import answer_states, tradeoff_plot, tsne_plot
    from spulctl.familiarize import load_split
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
    task, states = TaskSpec(), {"model": answer_states(m, tok, TaskSpec(), rows, None)}
    if bundle is not None:
        b = load_bundle(bundle)
        task = b.task()
        states = {"before (model)": states["model"], "after (model + bundle)": answer_states(m, tok, task, rows,
                                                                                            b.prompt)}
    made.append(tsne_plot(states, kinds, [r["label"] for r in rows], folder / "tsne.png"))
    return made


def run_export(model: str, out: Path, *, bundle: Path | None = None, no_bundle: bool = False,
               ignore_fingerprint: bool = False, overwrite: bool = False, prefix_mode: str = "baked",
               dtype: str = "float32", on_event: Event | None = None) -> dict[str, Any]:
    """``spulctl export``: compiled prefix + ONNX scorer + tokenizer + manifest, checked on ONNX Runtime.

    The check runs the exported graph on ONNX Runtime against the fp32 torch classifier on two sentences before the
    directory is published: CPU for fp32; CUDA for fp16 (fp16 graphs are for the CUDA execution provider; where
    neither CUDA nor CPU kernels exist for them the check is recorded as skipped, with the reason).
    """
    from safetensors.torch import save_file

    from spulctl import __version__
    from spulctl.bundle import PromptedClassifier, check_fingerprint, load_bundle, load_compiled_prefix
    from spulctl.data.task import TaskSpec, label_vocab
    from spulctl.errors import SpulError
    from spulctl.export.onnx_export import (
        DTYPES,
        MANIFEST_FILE,
        MODEL_FILE,
        OPSET,
        PREFIX_FILE,
        PREFIX_MODES,
        compile_prefix,
        export_onnx,
    )
    from spulctl.io import check_output_dir, sha256_file, staged_dir, write_json_atomic
    from spulctl.models import fingerprint, load_model
    from spulctl.step import prompted_logits

    emit = on_event or (lambda _e: None)
    if (bundle is None) != no_bundle:
        raise SpulError("export: give --bundle DIR, or --no-bundle to export the unprompted model")
    if prefix_mode not in PREFIX_MODES:
        raise SpulError(f"--prefix {prefix_mode}: use one of {', '.join(PREFIX_MODES)}")
    if dtype not in DTYPES:
        raise SpulError(f"--dtype {dtype}: use one of {', '.join(DTYPES)}")
    check_output_dir(out, overwrite)
    b = load_bundle(bundle) if bundle is not None else None
    emit({"kind": "note", "message": f"loading {model}"})
    m, tok = load_model(model, device="cpu", dtype="float32")
    base_fp = fingerprint(m)
    task, prefix, bundle_meta = TaskSpec(), None, None
    if b is not None:
        check_fingerprint(b, m, ignore_fingerprint)
        task, bundle_meta = b.task(), {"path": str(bundle), "prompt_sha256": b.meta["prompt"]["sha256"],
                                       "method": b.meta.get("method"), "p": int(b.prompt.shape[0])}
        prefix = load_compiled_prefix(b, base_fp)
        if prefix is not None:
            emit({"kind": "note", "message": "using the bundle's compiled prefix (same base model)"})
        else:
            emit({"kind": "note", "message": "compiling the soft prompt into its per-layer KV prefix"})
            prefix = compile_prefix(m, b.prompt)
    vocab = label_vocab(task, tok)
    texts = ["A fine film.", "The plot is a mess and the acting is worse."]
    if b is not None:  # fp32 torch reference, before the model is cast for an fp16 export
        ref = PromptedClassifier(m, b, tok, ignore_fingerprint=True).predict(texts)
    else:
        ref = _unprompted_scores(m, tok, task, texts, prompted_logits)
    ids = [tok(task.prompt(t), add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, ids))
    import torch

    input_ids = torch.full((2, width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((2, width), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, : len(x)], mask[i, : len(x)] = torch.tensor(x), 1
    sample = (input_ids, mask, torch.tensor([len(x) - 1 for x in ids]))
    graph_prefix = prefix
    if dtype == "float16":
        m = m.to(torch.float16)
        graph_prefix = None if prefix is None else [(k.half(), v.half()) for k, v in prefix]
    with staged_dir(out, overwrite=overwrite) as stage:
        emit({"kind": "note", "message": f"exporting ONNX (opset {OPSET}, {dtype}, prefix {prefix_mode})"})
        export_onnx(m, graph_prefix, vocab.first_label_ids, stage / MODEL_FILE, sample, prefix_mode)
        files = {MODEL_FILE: sha256_file(stage / MODEL_FILE)}
        if prefix is not None:
            save_file({f"layer.{i}.{kind}": t.contiguous() for i, kv in enumerate(graph_prefix)
                       for kind, t in zip(("key", "value"), kv, strict=True)}, str(stage / PREFIX_FILE))
            files[PREFIX_FILE] = sha256_file(stage / PREFIX_FILE)
        tok.save_pretrained(stage)
        manifest = {
            "spulctl_version": __version__, "format": "spulctl-onnx", "opset": OPSET, "dtype": dtype,
            "prefix": None if prefix is None else prefix_mode, "bundle": bundle_meta,
            "base_model": {"spec": model, "fingerprint": base_fp}, "task": task.to_dict(),
            "label_first_ids": vocab.first_label_ids, "generic_first_ids": [g[0] for g in vocab.generic_ids],
            "files": files,
        }
        write_json_atomic(stage / MANIFEST_FILE, manifest)
        manifest["check"], manifest["providers_tested"] = _ort_check(stage, texts, ref, dtype)
        write_json_atomic(stage / MANIFEST_FILE, manifest)
    return manifest


def _ort_check(stage: Path, texts: list[str], ref: list[dict], dtype: str) -> tuple[dict, list]:
    """Run the staged export on ONNX Runtime and compare label-word scores with the torch reference."""
    import numpy as np
    import onnxruntime as ort

    from spulctl.errors import SpulError
    from spulctl.export.runtime import OnnxPredictor

    available = ort.get_available_providers()
    if dtype == "float16" and "CUDAExecutionProvider" in available:
        provider, tolerance = "cuda", 1e-2
    else:
        provider, tolerance = "cpu", 1e-2 if dtype == "float16" else 1e-3
    try:
        got = OnnxPredictor(stage, provider=provider).predict(texts)
    except Exception as exc:  # onnxruntime raises its own types for a missing fp16 kernel
        if dtype != "float16":
            raise
        reason = (f"no CUDA execution provider here and the CPU provider cannot run this fp16 graph "
                  f"({type(exc).__name__})")
        return {"provider": None, "max_abs_score_diff": None, "skipped": reason}, []
    diff = max(abs(g["scores"][w] - r["scores"][w]) for g, r in zip(got, ref, strict=True) for w in g["scores"])
    name = "CUDAExecutionProvider" if provider == "cuda" else "CPUExecutionProvider"
    if diff > tolerance:
        raise SpulError(f"export check failed: ONNX Runtime ({name}) scores differ from torch by {diff:.2e} "
                        f"(> {tolerance:g}); nothing was written")
    return {"provider": name, "max_abs_score_diff": float(np.float32(diff)), "tolerance": tolerance}, [name]


def _unprompted_scores(m, tok, task, texts, prompted_logits) -> list[dict[str, Any]]:
    import torch

    from spulctl.data.task import encode, label_vocab
    from spulctl.step import collate

    vocab = label_vocab(task, tok)
    ex = encode([{"text": t, "label": task.label_words[0]} for t in texts], task, tok, vocab)
    with torch.inference_mode():
        logp = prompted_logits(m, collate(ex, tok.pad_token_id), None)[:, 0].log_softmax(-1)
    return [{"scores": {w: float(logp[i, f]) for w, f in zip(task.label_words, vocab.first_label_ids, strict=True)}}
            for i in range(len(texts))]
