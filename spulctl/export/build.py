"""Build an export directory: compiled prefix + ONNX scorer + tokenizer + manifest, checked on ONNX Runtime.

Used by ``spulctl export`` (through :func:`spulctl.pipeline.run_export`) and by ``spulctl eval --backend onnx``
(:mod:`spulctl.evaluate.onnx_backend`), which scores what ``export`` would ship.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

Event = Callable[[dict[str, Any]], None]


def export_scorer(model: str, out: Path, *, bundle: Path | None = None, no_bundle: bool = False,
               ignore_fingerprint: bool = False, overwrite: bool = False, prefix_mode: str = "baked",
               dtype: str = "float32", on_event: Event | None = None, max_length: int | None = None) -> dict[str, Any]:
    """Compiled prefix + ONNX scorer + tokenizer + manifest in ``out``, checked on ONNX Runtime.

    ``max_length`` (default: the model's context window minus the prompt's p) is stored in the manifest: the
    predictor cuts longer texts to it (:mod:`spulctl.data.truncate`).

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
        export_onnx,
    )
    from spulctl.io import check_output_dir, sha256_file, staged_dir, write_json_atomic
    from spulctl.models import fingerprint, load_model
    from spulctl.step import compile_prefix, prompted_logits

    emit = on_event or (lambda _e: None)
    if (bundle is None) != no_bundle:
        raise SpulError("export: give --bundle DIR, or --no-bundle to export the unprompted model")
    if prefix_mode not in PREFIX_MODES:
        raise SpulError(f"--prefix {prefix_mode}: use one of {', '.join(PREFIX_MODES)}")
    if dtype not in DTYPES:
        raise SpulError(f"--dtype {dtype}: use one of {', '.join(DTYPES)}")
    check_output_dir(out, overwrite)
    adapter = _adapter_task(model, bundle is not None)
    b = load_bundle(bundle) if bundle is not None else None
    emit({"kind": "note", "message": f"loading {model}"})
    if adapter is not None:  # a `--method release` adapter: its base model with the stack merged in
        from spulctl.release.lora import load_adapter_model

        m, tok = load_adapter_model(Path(model), "float32", ignore_fingerprint, merge=True)
    else:
        m, tok = load_model(model, device="cpu", dtype="float32")
    base_fp = fingerprint(m)
    task, prefix, bundle_meta = adapter or TaskSpec(), None, None
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
    from spulctl.data.truncate import POLICY, context_window, resolve_max_length

    p = 0 if b is None else int(b.prompt.shape[0])
    limit_len = resolve_max_length(m.config, p, max_length)
    texts = ["A fine film.", "The plot is a mess and the acting is worse."]
    if b is not None:  # fp32 torch reference, before the model is cast for an fp16 export
        ref = PromptedClassifier(m, b, tok, ignore_fingerprint=True, max_length=limit_len).predict(texts)
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
            "max_length": limit_len, "context_window": context_window(m.config), "truncation_policy": POLICY,
            "files": files,
        }
        write_json_atomic(stage / MANIFEST_FILE, manifest)
        manifest["check"], manifest["providers_tested"] = _ort_check(stage, texts, ref, dtype)
        write_json_atomic(stage / MANIFEST_FILE, manifest)
    return manifest


def _adapter_task(model: str, with_bundle: bool) -> Any:
    """The sentiment task a ``--method release`` adapter was trained for, or None when ``model`` is not one.

    Raises:
        SpulError: the adapter is given with a bundle, or it was trained for the generative NER task (the ONNX
            graph scores label words; NER answers are generated text).
    """
    from spulctl.data.task import TaskSpec
    from spulctl.errors import SpulError
    from spulctl.release.lora import is_lora_adapter, read_manifest

    if not is_lora_adapter(Path(model)):
        return None
    if with_bundle:
        raise SpulError(f"--model {model}: a Release adapter is exported on its own; pass --no-bundle, not --bundle")
    t = read_manifest(Path(model)).get("task") or {}
    if t.get("kind") == "ner":
        raise SpulError(f"--model {model}: an adapter for the NER task generates its answer; the ONNX scorer "
                        "exports label-word classifiers only (use --merge's merged/ with transformers)")
    if "label_words" not in t:
        return TaskSpec()
    return TaskSpec.from_dict(t)


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
