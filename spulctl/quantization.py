"""Quantized frozen bases (bitsandbytes NF4 / int8): the loading config, and which quantization a loaded model has.

SPUL's prompt and loss stay fp32 whatever the base: only the frozen linear layers are stored in 4 or 8 bits and
computed in the compute dtype. A bundle records its base's quantization (``bundle.json`` ``base_model.quantization``)
because the quantized weights are not the weights the fingerprint was taken of: a prompt trained on an NF4 base is
refused on a full-precision one, and the other way round, unless the user overrides it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spulctl.errors import MissingDependencyError, ModelError

if TYPE_CHECKING:
    import torch
    from torch import nn

QUANTIZATIONS = ("none", "4bit", "8bit")
DESCRIPTION = {"none": "not quantized", "4bit": "4-bit NF4 (bitsandbytes)", "8bit": "8-bit int8 (bitsandbytes)"}


def quantization_name(load_in_4bit: bool = False, load_in_8bit: bool = False) -> str:
    """``none`` | ``4bit`` | ``8bit`` from the command-line flags.

    Raises:
        ModelError: both flags.
    """
    if load_in_4bit and load_in_8bit:
        raise ModelError("--load-in-4bit and --load-in-8bit: choose one")
    return "4bit" if load_in_4bit else "8bit" if load_in_8bit else "none"


def bnb_config(quantization: str, compute_dtype: torch.dtype) -> Any:
    """The ``transformers.BitsAndBytesConfig`` for ``quantization`` (``4bit``: NF4 + double quantization).

    Raises:
        MissingDependencyError: bitsandbytes is not installed (one line with the install hint).
        ModelError: an unknown quantization.
    """
    import importlib.util

    if quantization not in ("4bit", "8bit"):
        raise ModelError(f"quantization {quantization!r}: expected 4bit or 8bit")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise MissingDependencyError("--load-in-4bit/--load-in-8bit need the 'bitsandbytes' package: "
                                     "pip install bitsandbytes")
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype,
                              bnb_4bit_use_double_quant=True)


def keep_input_gradients(model: nn.Module) -> int:
    """Stop bitsandbytes' CPU path from repacking 4-bit weights for inference; returns the layers changed.

    On CPUs with AVX512-BF16, bitsandbytes (0.50) converts a ``Linear4bit``'s weight to a packed layout on its first
    eval-mode forward without gradients, and from then on multiplies with a kernel outside autograd: no gradient
    reaches the layer's input, so a soft prompt behind it would never learn (the loss stays flat). Switching the
    conversion off keeps the autograd matmul (slower on such CPUs, correct everywhere).
    """
    changed = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


def quantization_of(model: nn.Module) -> str:
    """Which quantization a loaded model's weights have: ``none``, ``4bit`` or ``8bit``."""
    if getattr(model, "is_loaded_in_4bit", False):
        return "4bit"
    if getattr(model, "is_loaded_in_8bit", False):
        return "8bit"
    q = getattr(getattr(model, "config", None), "quantization_config", None)
    if q is not None:
        q = q if isinstance(q, dict) else q.to_dict()
        if q.get("load_in_4bit"):
            return "4bit"
        if q.get("load_in_8bit"):
            return "8bit"
    return "none"
