"""``spulctl bundle import-peft``: a PEFT prompt-tuning adapter -> a verified prompt bundle.

Only adapters whose whole content is a (p, d) prompt are accepted: ``PROMPT_TUNING``, and ``P_TUNING`` whose file
holds the compiled ``prompt_embeddings`` only (PEFT saves the encoder's output). Anything else — LoRA, prefix tuning
(per-layer keys/values, not a prompt), a P-tuning encoder that is not compiled, a pickled ``adapter_model.bin`` — is
refused with one line. The adapter's files are read as JSON and safetensors, never executed or unpickled.

The template and label words come from ``spulctl-task.json`` when the adapter was written by ``spulctl export
--format peft``, else they are spulctl's defaults (say so with a note). The bundle records the base model's
fingerprint and the adapter files' sha256, and is verified after it is written.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spulctl.bundle import BundleError, save_bundle, verify_bundle
from spulctl.io import sha256_file, staged_dir

if TYPE_CHECKING:
    import torch
    from torch import nn

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
TASK_FILE = "spulctl-task.json"
PROMPT_KEY = "prompt_embeddings"  # PEFT's state-dict key for a prompt-learning adapter's (p, d) embeddings
ACCEPTED = ("PROMPT_TUNING", "P_TUNING")


def read_peft_prompt(folder: str | Path, hidden_size: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """The (p, d) fp32 prompt of a PEFT prompt-tuning adapter, and its ``adapter_config.json``.

    Raises:
        BundleError: missing or unreadable files, another adapter type or task, or a tensor of the wrong shape.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_path, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not cfg_path.is_file():
        raise BundleError(f"{cfg_path}: missing (not a PEFT adapter directory)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{cfg_path}: invalid JSON ({exc.msg})") from None
    kind = str(cfg.get("peft_type"))
    if kind not in ACCEPTED:
        raise BundleError(f"{cfg_path}: peft_type {kind} is not a prompt-tuning adapter (only a p×d soft prompt "
                          "can become a bundle; LoRA and prefix tuning change the model itself)")
    if cfg.get("task_type") not in (None, "CAUSAL_LM"):
        raise BundleError(f"{cfg_path}: task_type {cfg.get('task_type')} is not CAUSAL_LM")
    if int(cfg.get("num_transformer_submodules") or 1) != 1:
        raise BundleError(f"{cfg_path}: num_transformer_submodules {cfg['num_transformer_submodules']} (encoder-"
                          "decoder prompts) is not supported")
    if not weights.is_file():
        pickled = (folder / "adapter_model.bin").is_file()
        raise BundleError(f"{weights}: missing" + (" (adapter_model.bin is a pickle, which spulctl never loads; "
                                                    "re-save the adapter with safe_serialization=True)" if pickled
                                                   else ""))
    try:
        tensors = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error type for a damaged file
        raise BundleError(f"{weights}: not a readable safetensors file ({exc})") from None
    if set(tensors) != {PROMPT_KEY}:
        extra = sorted(set(tensors) - {PROMPT_KEY})[:3]
        raise BundleError(f"{weights}: holds {extra or 'no ' + PROMPT_KEY} — a {kind} adapter whose prompt "
                          "encoder is not compiled to plain vectors; only the prompt_embeddings tensor is accepted")
    prompt = tensors[PROMPT_KEY].float()
    p = int(cfg.get("num_virtual_tokens") or 0)
    if prompt.ndim != 2 or tuple(prompt.shape) != (p, hidden_size):
        raise BundleError(f"{weights}: prompt_embeddings shape {tuple(prompt.shape)} is not (num_virtual_tokens "
                          f"{p}, model hidden size {hidden_size})")
    return prompt, cfg


def adapter_task(folder: Path, note: Callable[[str], None]) -> Any:
    """The :class:`~spulctl.data.task.TaskSpec` recorded by ``spulctl export --format peft``, else the default."""
    from spulctl.data.task import TaskSpec

    path = folder / TASK_FILE
    if not path.is_file():
        note(f"{folder}: no {TASK_FILE}; using spulctl's default template and label words")
        return TaskSpec()
    try:
        t = json.loads(path.read_text())["task"]
        return TaskSpec.from_dict(t)
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise BundleError(f"{path}: unreadable task ({type(exc).__name__}: {exc})") from None


def import_peft_adapter(folder: str | Path, model: nn.Module, base_spec: str, out: Path, overwrite: bool = False,
                        on_event: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Write a verified prompt bundle for ``model`` from the PEFT prompt-tuning adapter in ``folder``.

    Args:
        model: the base model the adapter was trained on (its fingerprint goes into ``bundle.json``).
        base_spec: how the model was named (recorded).
        out: the bundle directory (staged; refused if it exists, unless ``overwrite``).

    Returns:
        The verified ``bundle.json`` content.

    Raises:
        BundleError: see :func:`read_peft_prompt`.
    """
    from spulctl.models import fingerprint

    emit = on_event or (lambda _e: None)
    folder = Path(folder)
    prompt, cfg = read_peft_prompt(folder, model.config.hidden_size)
    task = adapter_task(folder, lambda m: emit({"kind": "note", "message": m}))
    meta = {
        "method": "peft-import",
        "settings": {"peft_type": str(cfg.get("peft_type")), "num_virtual_tokens": int(prompt.shape[0]),
                     "peft_base_model": cfg.get("base_model_name_or_path"), "peft_version": cfg.get("peft_version")},
        "task": task.to_dict(),
        "base_model": {"spec": base_spec, "fingerprint": fingerprint(model)},
        "data": {"sha256": {"adapter_config": sha256_file(folder / CONFIG_FILE),
                            "adapter_model": sha256_file(folder / WEIGHTS_FILE)}, "source": str(folder)},
        "metrics": {},
    }
    with staged_dir(out, overwrite=overwrite) as stage:
        save_bundle(stage, prompt, meta)
        verify_bundle(stage)
    emit({"kind": "note", "message": f"imported a {prompt.shape[0]}-token prompt from {folder}"})
    return verify_bundle(out)
