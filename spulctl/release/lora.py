"""The LoRA module stack of Reveal-and-Release, as tensors and as one PEFT LoRA adapter.

Module k adds ``ΔW_k = s_k · B_k A_k`` to every adapted linear layer (``A_k``: (r_k, in), ``B_k``: (out, r_k),
``s_k = α_k / r_k``). Stacking concatenates A rows and B columns, each module's scaling folded into its B::

    A = [A_1; …; A_K]              (R, in)      R = Σ r_k
    B = [s_1·B_1 | … | s_K·B_K]    (out, R)     so  B·A = Σ_k s_k·B_k·A_k  exactly

and the stack is saved with ``lora_alpha = R`` (scaling 1): a plain PEFT LoRA adapter of rank R that
``peft.PeftModel.from_pretrained(base, dir)`` loads as it is. The orthogonality penalty (O-LoRA, Wang et al. 2023)
keeps a new module's A rows away from the stack's: ``Σ_layers ‖A_stack · A_newᵀ‖₁`` (entrywise L1), which equals
the sum of the penalties against each earlier module, since the stack's rows are theirs.

Here too: :func:`load_adapter_model`, what ``spulctl eval`` uses to score such an adapter as a subject.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spulctl.errors import SpulError

if TYPE_CHECKING:
    import torch
    from torch import nn

MANIFEST = "spulctl-manifest.json"
MANIFEST_KIND = "release-adapter"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
STACK = "default"  # the stack's adapter name: PEFT saves the "default" adapter at the top of the folder
PREFIX = "base_model.model."  # what PEFT puts before a wrapped model's module names

# layer name -> (A (r, in), B (out, r), scaling) for one module; (A (R, in), B (out, R)) at scaling 1 for a stack
Module = dict[str, tuple["torch.Tensor", "torch.Tensor", float]]
Stack = dict[str, tuple["torch.Tensor", "torch.Tensor"]]


def ortho_penalty(prev: dict[str, torch.Tensor], new: dict[str, torch.Tensor]) -> torch.Tensor:
    """``Σ_layers ‖A_prev · A_newᵀ‖₁``: entrywise L1 of the overlap between the stack's and the new module's A rows.

    Args:
        prev: layer -> (R, in) A rows of all earlier modules (frozen).
        new: layer -> (r, in) A rows of the module being trained (layers missing from ``prev`` add nothing).

    Returns:
        Scalar; 0 exactly when every new row is orthogonal to every earlier row.
    """
    import torch

    terms = [(prev[name].to(a.dtype) @ a.T).abs().sum() for name, a in new.items() if name in prev]  # (R, r) each
    return torch.stack(terms).sum() if terms else torch.zeros(())


def stack_modules(stack: Stack | None, module: Module) -> Stack:
    """Append ``module`` to ``stack``: A rows and scaled B columns concatenated (module docstring).

    Returns:
        layer -> (A (R + r, in), B (out, R + r)), detached fp32 copies.
    """
    import torch

    out: Stack = {}
    for name, (a, b, scaling) in module.items():
        a, b = a.detach().float(), b.detach().float() * scaling
        if stack and name in stack:
            a = torch.cat([stack[name][0], a], 0)
            b = torch.cat([stack[name][1], b], 1)
        out[name] = (a.clone(), b.clone())
    return out


def delta_w(a: torch.Tensor, b: torch.Tensor, scaling: float = 1.0) -> torch.Tensor:
    """``scaling · B · A``: (out, in) weight update of one module or of a stack (scaling 1)."""
    return scaling * (b @ a)


def rank(stack: Stack | None) -> int:
    """R, the stack's total rank (0 for none)."""
    return int(next(iter(stack.values()))[0].shape[0]) if stack else 0


def lora_layers(peft_model: nn.Module, adapter: str) -> dict[str, nn.Module]:
    """The LoRA-wrapped linear layers holding ``adapter``, by the base model's module name."""
    from peft.tuners.lora import LoraLayer

    return {name.removeprefix(PREFIX): m for name, m in peft_model.named_modules()
            if isinstance(m, LoraLayer) and adapter in m.lora_A}


def read_module(peft_model: nn.Module, adapter: str) -> Module:
    """``adapter``'s (A, B, scaling) per layer, as live parameters (the caller detaches or not)."""
    return {name: (m.lora_A[adapter].weight, m.lora_B[adapter].weight, float(m.scaling[adapter]))
            for name, m in lora_layers(peft_model, adapter).items()}


def stack_config(stack: Stack) -> Any:
    """The ``peft.LoraConfig`` of a stack: rank R, ``lora_alpha = R`` (scaling 1), no dropout, its layers."""
    from peft import LoraConfig

    r = rank(stack)
    leaves = sorted({name.rsplit(".", 1)[-1] for name in stack})
    return LoraConfig(r=r, lora_alpha=r, lora_dropout=0.0, target_modules=leaves, task_type="CAUSAL_LM", bias="none")


def write_stack(peft_model: nn.Module, stack: Stack, adapter: str = STACK) -> None:
    """Copy the stack's tensors into ``adapter`` (made with :func:`stack_config`) of a live PEFT model.

    Raises:
        SpulError: the adapter's layers do not match the stack's (another base model).
    """
    import torch

    layers = lora_layers(peft_model, adapter)
    if set(layers) != set(stack):
        raise SpulError(f"release: the adapter's layers ({len(layers)}) do not match the stack's ({len(stack)})")
    with torch.no_grad():
        for name, (a, b) in stack.items():
            layers[name].lora_A[adapter].weight.copy_(a)
            layers[name].lora_B[adapter].weight.copy_(b)


def stacked_model(base: nn.Module, stack: Stack) -> nn.Module:
    """``base`` wrapped by PEFT with the stack as its only adapter (``default``), frozen, in eval mode."""
    from peft import get_peft_model

    model = get_peft_model(base, stack_config(stack), adapter_name=STACK)
    write_stack(model, stack)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def is_lora_adapter(path: Path) -> bool:
    """A folder with a PEFT LoRA ``adapter_config.json`` and spulctl's manifest (what ``--method release`` writes)."""
    cfg, manifest = Path(path) / CONFIG_FILE, Path(path) / MANIFEST
    if not (cfg.is_file() and manifest.is_file()):
        return False
    try:
        return json.loads(cfg.read_text()).get("peft_type") == "LORA"
    except (OSError, ValueError):
        return False


def read_manifest(path: Path) -> dict[str, Any]:
    """The adapter's ``spulctl-manifest.json``.

    Raises:
        SpulError: missing, unreadable, or not a Release adapter's.
    """
    try:
        meta = json.loads((Path(path) / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise SpulError(f"{path}: no readable {MANIFEST} ({type(exc).__name__})") from None
    if meta.get("kind") != MANIFEST_KIND or "fingerprint" not in meta.get("base_model", {}):
        raise SpulError(f"{path}: {MANIFEST} is not a Release adapter's (kind {meta.get('kind')!r})")
    return meta


def load_adapter_model(path: Path, dtype: str = "auto", ignore_fingerprint: bool = False,
                       merge: bool = False) -> tuple[nn.Module, Any]:
    """Load the base model named in the adapter's manifest and apply the adapter.

    Unmerged by default, so scores are exactly PEFT's (merging rounds W + B·A once, ~1e-5 on the logits).

    Raises:
        SpulError: not a Release adapter, or its base model's fingerprint differs (unless ``ignore_fingerprint``).
    """
    from peft import PeftModel

    from spulctl.models import fingerprint_matches, load_model

    meta = read_manifest(path)
    model, tok = load_model(meta["base_model"]["spec"], dtype=dtype)
    ok, have = fingerprint_matches(meta["base_model"]["fingerprint"], model)
    if not ok and not ignore_fingerprint:
        raise SpulError(f"{path}: adapter made for another base model ({meta['base_model']['spec']} now has "
                        f"fingerprint {have[:20]}…, the adapter's is {meta['base_model']['fingerprint'][:20]}…); "
                        "pass --ignore-fingerprint to score it anyway")
    peft_model = PeftModel.from_pretrained(model, str(path), is_trainable=False).eval()
    return (peft_model.merge_and_unload() if merge else peft_model), tok
