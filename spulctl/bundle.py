"""Prompt bundles: ``prompt.safetensors`` (the p×d prompt, fp32) + ``bundle.json`` (everything to trust it).

A bundle records the base model's fingerprint; loading it onto a different model is an error unless the caller
says ``ignore_fingerprint``. Loading reads safetensors and JSON only, never code or pickles.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spulctl.errors import SpulError
from spulctl.io import sha256_file, write_json_atomic

if TYPE_CHECKING:
    import torch
    from torch import nn

FORMAT_VERSION = 1
PROMPT_FILE = "prompt.safetensors"
META_FILE = "bundle.json"
COMPILED_FILE = "compiled_prefix.safetensors"


class BundleError(SpulError):
    """A bundle is missing, corrupted, or meant for another model."""


@dataclass
class Bundle:
    """A loaded prompt bundle.

    Attributes:
        prompt: (p, d) fp32 soft prompt.
        meta: the ``bundle.json`` content.
        path: where it was loaded from.
    """

    prompt: torch.Tensor
    meta: dict[str, Any]
    path: Path

    @property
    def fingerprint(self) -> str:
        return self.meta["base_model"]["fingerprint"]

    def task(self) -> Any:
        """The :class:`~spulctl.data.task.TaskSpec` the prompt was trained with."""
        from spulctl.data.task import TaskSpec

        t = self.meta["task"]
        return TaskSpec.from_dict(t)


def save_bundle(folder: Path, prompt: torch.Tensor, meta: dict[str, Any]) -> None:
    """Write a bundle into ``folder`` (the caller stages the directory; files are written atomically)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{PROMPT_FILE}.tmp"
    save_file({"prompt": prompt.detach().float().cpu().contiguous()}, str(tmp), metadata={"format": "spulctl"})
    tmp.replace(folder / PROMPT_FILE)
    from spulctl import __version__

    full = {"format_version": FORMAT_VERSION, "spulctl_version": __version__, **meta,
            "prompt": {"tokens": int(prompt.shape[0]), "dim": int(prompt.shape[1]),
                       "sha256": sha256_file(folder / PROMPT_FILE)}}
    write_json_atomic(folder / META_FILE, full)


def verify_bundle(folder: str | Path) -> dict[str, Any]:
    """Check a bundle's files and hashes without loading a model.

    Returns:
        The bundle metadata.

    Raises:
        BundleError: missing file, bad JSON, unknown format, hash or shape mismatch.
    """
    folder = Path(folder)
    meta_path, prompt_path = folder / META_FILE, folder / PROMPT_FILE
    for path in (meta_path, prompt_path):
        if not path.is_file():
            raise BundleError(f"{path}: missing (not a prompt bundle directory)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{meta_path}: invalid JSON ({exc.msg})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{meta_path}: format_version {meta.get('format_version')!r} is not {FORMAT_VERSION}")
    for key in ("prompt", "base_model", "task"):
        if key not in meta:
            raise BundleError(f"{meta_path}: field '{key}' missing")
    digest = sha256_file(prompt_path)
    if digest != meta["prompt"].get("sha256"):
        raise BundleError(f"{prompt_path}: sha256 {digest[:12]}… does not match bundle.json "
                          f"({str(meta['prompt'].get('sha256'))[:12]}…): the file is corrupted or was replaced")
    data = meta.get("data") or {}
    generated = list(data.get("generated") or []) or ([data["retain_file"]] if data.get("retain_file") else [])
    for entry in generated:  # records the model wrote or labelled itself, which the prompt was trained on
        path = folder / entry["name"]
        if not path.is_file() or sha256_file(path) != entry.get("sha256"):
            raise BundleError(f"{path}: missing or its sha256 does not match bundle.json (model-generated records "
                              "the prompt was trained on)")
    compiled = meta.get("compiled_prefix")
    if compiled is not None:
        path = folder / COMPILED_FILE
        if not path.is_file():
            raise BundleError(f"{path}: missing (bundle.json lists a compiled prefix)")
        if sha256_file(path) != compiled.get("sha256"):
            raise BundleError(f"{path}: sha256 does not match bundle.json: the file is corrupted or was replaced")
    return meta


def load_bundle(folder: str | Path) -> Bundle:
    """Verify and load a bundle (safetensors + JSON only).

    Raises:
        BundleError: see :func:`verify_bundle`; also a prompt tensor of the wrong shape.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = verify_bundle(folder)
    prompt = load_file(str(folder / PROMPT_FILE)).get("prompt")
    want = (meta["prompt"]["tokens"], meta["prompt"]["dim"])
    if prompt is None or tuple(prompt.shape) != want:
        got = None if prompt is None else tuple(prompt.shape)
        raise BundleError(f"{folder / PROMPT_FILE}: prompt tensor shape {got} does not match bundle.json {want}")
    return Bundle(prompt.float(), meta, folder)


def compile_into_bundle(folder: str | Path, model: nn.Module, ignore_fingerprint: bool = False,
                        overwrite: bool = False) -> dict[str, Any]:
    """Store the prompt's per-layer KV prefix for ``model`` inside the bundle (``compiled_prefix``).

    ``spulctl export`` then reuses it instead of recomputing it, when the base model's fingerprint matches.

    Returns:
        The ``compiled_prefix`` entry written to ``bundle.json``: file sha256, base fingerprint, layers, p.

    Raises:
        BundleError: the bundle is for another model, or already holds a compiled prefix and not ``overwrite``.
    """
    from safetensors.torch import save_file

    from spulctl.models import fingerprint
    from spulctl.step import compile_prefix

    bundle = load_bundle(folder)
    folder = Path(folder)
    check_fingerprint(bundle, model, ignore_fingerprint)
    if bundle.meta.get("compiled_prefix") is not None and not overwrite:
        raise BundleError(f"{folder}: already holds a compiled prefix (pass --overwrite to replace it)")
    prefix = compile_prefix(model, bundle.prompt)
    tmp = folder / f".{COMPILED_FILE}.tmp"
    save_file({f"layer.{i}.{kind}": t for i, kv in enumerate(prefix) for kind, t in zip(("key", "value"), kv,
                                                                                         strict=True)},
              str(tmp), metadata={"format": "spulctl"})
    tmp.replace(folder / COMPILED_FILE)
    entry = {"file": COMPILED_FILE, "sha256": sha256_file(folder / COMPILED_FILE), "fingerprint": fingerprint(model),
             "layers": len(prefix), "shape": list(prefix[0][0].shape), "dtype": "float32"}
    write_json_atomic(folder / META_FILE, {**bundle.meta, "compiled_prefix": entry})
    return entry


def load_compiled_prefix(bundle: Bundle, model_fingerprint: str) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """The bundle's compiled prefix if it has one for this base model (else None); hash checked at load.

    Returns:
        Per layer (key, value), each (1, kv_heads, p, head_dim) fp32.
    """
    from safetensors.torch import load_file

    entry = bundle.meta.get("compiled_prefix")
    if entry is None or entry.get("fingerprint") != model_fingerprint:
        return None
    tensors = load_file(str(bundle.path / COMPILED_FILE))
    try:
        return [(tensors[f"layer.{i}.key"], tensors[f"layer.{i}.value"]) for i in range(entry["layers"])]
    except KeyError as exc:
        raise BundleError(f"{bundle.path / COMPILED_FILE}: tensor {exc.args[0]} missing") from None


def check_fingerprint(bundle: Bundle, model: nn.Module, ignore: bool = False) -> None:
    """Refuse a bundle trained for another base model, or for the same base quantized differently.

    ``bundle.json`` records the base's quantization (``base_model.quantization``: ``none``, ``4bit`` or ``8bit``;
    absent in bundles written before it was recorded, which means ``none``); it is checked first, so a mismatch says
    "quantization" rather than only that the fingerprints differ.

    Raises:
        BundleError: fingerprints or quantizations differ and ``ignore`` is False.
    """
    from spulctl.models import fingerprint_matches
    from spulctl.quantization import DESCRIPTION, quantization_of

    if model.config.hidden_size != bundle.prompt.shape[1]:
        raise BundleError(f"{bundle.path}: prompt dim {bundle.prompt.shape[1]} != model hidden size "
                          f"{model.config.hidden_size} (bundle is for another model)")
    if ignore:
        return
    want_q, have_q = bundle.meta["base_model"].get("quantization", "none"), quantization_of(model)
    if want_q != have_q:
        flag = {"none": "without --load-in-4bit/--load-in-8bit", "4bit": "with --load-in-4bit",
                "8bit": "with --load-in-8bit"}[want_q] if want_q in DESCRIPTION else ""
        raise BundleError(f"{bundle.path}: quantization mismatch: trained on a {DESCRIPTION.get(want_q, want_q)} "
                          f"base, this base is {DESCRIPTION[have_q]} (load the model {flag}, or pass "
                          "--ignore-fingerprint to use it anyway)")
    same, have = fingerprint_matches(bundle.fingerprint, model)
    if not same:
        raise BundleError(f"{bundle.path}: trained for model {bundle.fingerprint[:19]}… "
                          f"({bundle.meta['base_model'].get('spec')}), this model is {have[:19]}… "
                          "(pass --ignore-fingerprint to use it anyway)")


class PromptedClassifier:
    """Classify texts with a base model + a prompt bundle.

    Args:
        model: the base model the bundle was trained for (checked by fingerprint).
        bundle: a loaded :class:`Bundle` (or a path).
        tokenizer: the model's tokenizer.
        ignore_fingerprint: allow another model (at your own risk).
        max_length: tokens per text after the prompt (longer texts are cut by :mod:`spulctl.data.truncate`); None:
            the model's context window minus the prompt's p tokens.

    Example:
        >>> clf = PromptedClassifier(model, load_bundle("bundle/"), tokenizer)
        >>> clf.predict(["a fine film"])  # [{"label": "positive", "scores": {...}, ...}]
    """

    def __init__(self, model: nn.Module, bundle: Bundle | str | Path, tokenizer: Any,
                 ignore_fingerprint: bool = False, batch_size: int = 32, max_length: int | None = None) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        check_fingerprint(self.bundle, model, ignore_fingerprint)
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size
        self.task = self.bundle.task()
        from spulctl.data.task import label_vocab
        from spulctl.data.truncate import resolve_max_length

        self.vocab = label_vocab(self.task, tokenizer)
        self.max_length = resolve_max_length(model.config, int(self.bundle.prompt.shape[0]), max_length)
        self.device = next(model.parameters()).device
        self.prompt = self.bundle.prompt.to(self.device)

    def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        """Top-1 answer over the whole vocabulary and label-word scores per text.

        Returns:
            Per text: ``label`` (a label word, a generic label, or ``None`` for any other answer), ``answer``
            (the decoded top-1 token), ``scores`` (log-probabilities of the label words' first tokens),
            ``truncated`` (the text was cut to fit ``max_length``).
        """
        from spulctl.data.task import encode
        from spulctl.distributed import inference
        from spulctl.step import bucketed_batches, collate, prompted_logits

        words = self.task.label_words
        records = [{"text": t, "label": words[0]} for t in texts]
        examples = encode(records, self.task, self.tokenizer, self.vocab, max_length=self.max_length)
        out: list[dict[str, Any]] = [{} for _ in texts]
        first = self.vocab.first_label_ids
        generic = {g[0]: w for g, w in zip(self.vocab.generic_ids, self.task.generic_labels, strict=True)}
        with inference():
            for idx in bucketed_batches([len(e.input_ids) for e in examples], self.batch_size, seed=None):
                batch = collate([examples[i] for i in idx], self.tokenizer.pad_token_id, idx).to(self.device)
                logp = prompted_logits(self.model, batch, self.prompt)[:, 0].log_softmax(-1)  # (b, V)
                top = logp.argmax(-1).tolist()
                for row, i in enumerate(idx):
                    label = words[first.index(top[row])] if top[row] in first else generic.get(top[row])
                    out[i] = {"text": texts[i], "label": label, "answer": self.tokenizer.decode([top[row]]),
                              "scores": {w: float(logp[row, t]) for w, t in zip(words, first, strict=True)},
                              "truncated": examples[i].truncated}
        return out
