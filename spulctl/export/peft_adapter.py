"""``spulctl export --format peft``: a prompt bundle as a PEFT prompt-tuning adapter.

The directory holds what ``PeftModel.from_pretrained(base, dir)`` reads — ``adapter_config.json`` (a
``PromptTuningConfig``: ``task_type`` CAUSAL_LM, ``num_virtual_tokens`` = p, ``token_dim`` = d) and
``adapter_model.safetensors`` (the p×d prompt, fp32, under PEFT's key for prompt learning, ``prompt_embeddings``) —
plus ``spulctl-task.json`` (template, label words, truncation bound, source bundle), which PEFT ignores and
``spulctl bundle import-peft`` reads back.

Same predictions, by construction: PEFT concatenates the virtual tokens in front of the input embeddings and numbers
positions from 0, which is exactly where spulctl's prompted forward puts the prompt. spulctl never adds special
tokens, so a PEFT caller must tokenise ``template.format(text)`` with ``add_special_tokens=False`` (a tokenizer that
adds a BOS token would put it between the prompt and the text). The export is checked before it is published: the
staged adapter is loaded with PEFT and its answer-position scores compared with spulctl's classifier.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from spulctl.bundle_peft import CONFIG_FILE, PROMPT_KEY, TASK_FILE, WEIGHTS_FILE  # the files PEFT reads and writes
from spulctl.errors import MissingDependencyError, SpulError

if TYPE_CHECKING:
    import torch
    from torch import nn

CHECK_TEXTS = ("A fine film.", "The plot is a mess and the acting is worse.")
TOLERANCE = 1e-4


def require_peft() -> None:
    """Raise the install hint when peft is missing."""
    try:
        import peft  # noqa: F401
    except ImportError:
        raise MissingDependencyError("PEFT interop needs peft: pip install peft") from None


def prompt_tuning_config(model: nn.Module, p: int, base_spec: str) -> Any:
    """The ``peft.PromptTuningConfig`` of a p-token prompt for ``model`` (inference mode, CAUSAL_LM)."""
    from peft import PromptTuningConfig

    cfg = model.config
    return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=p, token_dim=cfg.hidden_size,
                              num_transformer_submodules=1, num_attention_heads=cfg.num_attention_heads,
                              num_layers=cfg.num_hidden_layers, base_model_name_or_path=base_spec,
                              inference_mode=True)


def write_peft_adapter(folder: Path, prompt: torch.Tensor, model: nn.Module, base_spec: str) -> None:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` into ``folder`` (the caller stages it).

    Args:
        prompt: (p, d) soft prompt, stored fp32 under ``prompt_embeddings``.
        model: the base model (its config fills the PEFT config).
        base_spec: recorded as the config's ``base_model_name_or_path``.
    """
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    prompt_tuning_config(model, int(prompt.shape[0]), base_spec).save_pretrained(str(folder))
    tmp = folder / f".{WEIGHTS_FILE}.tmp"
    save_file({PROMPT_KEY: prompt.detach().float().cpu().contiguous()}, str(tmp), metadata={"format": "pt"})
    tmp.replace(folder / WEIGHTS_FILE)


def peft_scores(model: nn.Module, folder: Path, tokenizer: Any, task: Any, texts: list[str],
                max_length: int) -> list[dict[str, float]]:
    """Label-word log-probabilities at the answer position, computed by PEFT from the adapter in ``folder``.

    Texts are encoded as spulctl encodes them (template, no special tokens, cut by :mod:`spulctl.data.truncate`), then
    run one at a time through ``PeftModel.from_pretrained(model, folder)`` (no padding to get wrong).

    Returns:
        Per text, label word -> log-probability of its first token (full-vocabulary softmax).
    """
    import torch
    from peft import PeftModel

    from spulctl.data.task import encode, label_vocab

    vocab = label_vocab(task, tokenizer)
    examples = encode([{"text": t, "label": task.label_words[0]} for t in texts], task, tokenizer, vocab,
                      max_length=max_length)
    peft_model = PeftModel.from_pretrained(model, str(folder), is_trainable=False).eval()
    out = []
    with torch.inference_mode():
        for e in examples:
            ids = torch.tensor([e.input_ids[: e.answer_pos + 1]], device=next(model.parameters()).device)  # (1, t)
            logits = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits  # (1, p + t, V)
            logp = logits[0, -1].float().log_softmax(-1)  # (V,) at the answer position
            out.append({w: float(logp[i]) for w, i in zip(task.label_words, vocab.first_label_ids, strict=True)})
    return out


def check_against(reference: list[dict[str, Any]], got: list[dict[str, float]], where: Path) -> float:
    """Largest label-score difference between spulctl's classifier and PEFT; refuses a difference over TOLERANCE.

    Raises:
        SpulError: the scores differ by more than ``TOLERANCE`` (nothing is published).
    """
    diff = max(abs(r["scores"][w] - g[w]) for r, g in zip(reference, got, strict=True) for w in g)
    if diff > TOLERANCE:
        raise SpulError(f"{where}: PEFT's scores differ from spulctl's by {diff:.2e} (> {TOLERANCE:g}); nothing was "
                        "written")
    return diff


def export_peft_adapter(model: str, out: Path, *, bundle: Path | None = None, ignore_fingerprint: bool = False,
                        overwrite: bool = False, on_event: Any = None, max_length: int | None = None) -> dict[str, Any]:
    """``spulctl export --format peft``: the bundle as a PEFT prompt-tuning adapter, checked against spulctl.

    Args:
        model: the base model spec the bundle was trained for (fingerprint checked).
        out: the adapter directory (staged; refused if it exists, unless ``overwrite``).
        max_length: recorded as the bound callers should cut texts to (default: context window minus p).

    Returns:
        The ``spulctl-task.json`` written beside the adapter (task, bound, source bundle, check, file hashes).

    Raises:
        SpulError: no bundle, wrong base model, existing output, or PEFT disagreeing with spulctl.
    """
    from spulctl import __version__
    from spulctl.bundle import PromptedClassifier, check_fingerprint, load_bundle
    from spulctl.data.truncate import POLICY, context_window, resolve_max_length
    from spulctl.io import check_output_dir, sha256_file, staged_dir, write_json_atomic
    from spulctl.models import fingerprint, load_model

    emit = on_event or (lambda _e: None)
    if bundle is None:
        raise SpulError("export --format peft: give --bundle DIR (the adapter is the bundle's prompt)")
    require_peft()
    check_output_dir(out, overwrite)
    b = load_bundle(bundle)
    emit({"kind": "note", "message": f"loading {model}"})
    m, tok = load_model(model, device="cpu", dtype="float32")
    check_fingerprint(b, m, ignore_fingerprint)
    p, task = int(b.prompt.shape[0]), b.task()
    limit_len = resolve_max_length(m.config, p, max_length)
    ref = PromptedClassifier(m, b, tok, ignore_fingerprint=True, max_length=limit_len).predict(list(CHECK_TEXTS))
    info: dict[str, Any] = {
        "spulctl_version": __version__, "format": "spulctl-peft", "task": task.to_dict(), "add_special_tokens": False,
        "max_length": limit_len, "context_window": context_window(m.config), "truncation_policy": POLICY,
        "base_model": {"spec": model, "fingerprint": fingerprint(m)},
        "bundle": {"path": str(bundle), "prompt_sha256": b.meta["prompt"]["sha256"], "method": b.meta.get("method"),
                   "p": p}}
    with staged_dir(out, overwrite=overwrite) as stage:
        emit({"kind": "note", "message": f"writing a PEFT prompt-tuning adapter (p={p})"})
        write_peft_adapter(stage, b.prompt, m, model)
        diff = check_against(ref, peft_scores(m, stage, tok, task, list(CHECK_TEXTS), limit_len), out)
        info["check"] = {"max_abs_score_diff": diff, "tolerance": TOLERANCE}
        info["files"] = {n: sha256_file(stage / n) for n in (CONFIG_FILE, WEIGHTS_FILE)}
        write_json_atomic(stage / TASK_FILE, info)
    return info
