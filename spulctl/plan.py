"""``spulctl plan``: the memory a run needs, from the model's config alone (no weights are loaded).

The estimate adds up what a training step holds at its peak:

* **weights** — every parameter in the compute dtype; with ``--load-in-4bit`` the decoder's linear layers in NF4
  (0.5 byte a weight plus double-quantised absmax scales, :data:`NF4_BYTES`), with ``--load-in-8bit`` in int8
  (1 byte plus an fp32 scale a row); embeddings, head and norms stay in the compute dtype (bitsandbytes leaves them).
* **activations** — the tensors autograd saves for the backward pass, per token and layer, counted with
  ``torch.autograd.graph.saved_tensors_hooks`` on Llama layers (tests/test_plan.py's hand computation repeats it):
  with only the soft prompt trainable (frozen linear layers save no inputs) ``4d + 3f + 2·kv + 33·h + 20`` numbers;
  with LoRA on every linear layer (inputs, dropout copies and masks, the rank-r halves) ``14d + 5f + 2·kv + 33·h +
  8r + 2``; d = hidden, f = FFN width, kv = key/value width, h = heads. Times tokens (the slice of a step that runs at
  once: ``--micro-batch`` examples, else the batch, × ``--max-length``) × layers × activation bytes, plus SPUL's
  prompt prefix (p tokens, once a slice) and the answer head's (b, V) logits.
* **reference** — SPUL's cached unprompted hidden rows, ``n_retain × d`` fp32 (:func:`spulctl.methods.base
  .reference_hidden`); also ga_kl's.
* **trainable, gradients, optimizer** — SPUL: p × d; LoRA: r × (in + out) per linear layer; full fine-tuning:
  everything. fp32, one gradient, AdamW's two moments.
* **runtime** (CPU only: the process is the memory) — the Python/torch/transformers process before any model
  (:data:`CPU_RUNTIME_MIB`, measured) and the model fingerprint's transient fp32 copies of the input and output
  embeddings.
* **heap** (CPU only, not in ``total_mib``) — glibc's default allocator keeps freed activation buffers on its heap
  (its mmap threshold rises after the first large frees), so the process's peak RSS exceeds the live memory by
  about :data:`HEAP_RETAINED` of one slice's activations. ``total_mib`` is the live memory, which the peak RSS
  matches under ``MALLOC_MMAP_THRESHOLD_=131072``; ``peak_rss_mib`` adds the heap term for the default allocator.
  The factor was fitted on three SmolLM2 runs and checked on four others (docs/scaling.md,
  benchmarks/plan_check.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from spulctl.errors import ModelError, SpulError

MIB = 2**20
CPU_RUNTIME_MIB = 230.0  # RSS of `import torch, transformers, spulctl` before any model (2-vCPU Linux, torch 2.x)
HEAP_RETAINED = 0.5  # glibc default allocator: freed activation buffers kept, as a share of one slice's activations
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # a 4-bit code + an 8-bit absmax per 64 + an fp32 scale per 256 blocks
DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}
PROMPT_METHODS = {"spul", "hard_prompt", "icul"}
REFERENCE_METHODS = {"spul", "ga_kl"}
LORA_METHODS = {"ga", "rl", "ga_kl", "ga_gd"}
GATED_TYPES = {"llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "olmo", "olmo2"}

# Public config.json values (meta-llama/Llama-2-*-hf), so `plan` works offline for the paper's scales.
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "llama-2-7b": {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
                   "num_key_value_heads": 32, "intermediate_size": 11008, "vocab_size": 32000,
                   "tie_word_embeddings": False, "max_position_embeddings": 4096},
    "llama-2-13b": {"model_type": "llama", "hidden_size": 5120, "num_hidden_layers": 40, "num_attention_heads": 40,
                    "num_key_value_heads": 40, "intermediate_size": 13824, "vocab_size": 32000,
                    "tie_word_embeddings": False, "max_position_embeddings": 4096},
    "llama-2-70b": {"model_type": "llama", "hidden_size": 8192, "num_hidden_layers": 80, "num_attention_heads": 64,
                    "num_key_value_heads": 8, "intermediate_size": 28672, "vocab_size": 32000,
                    "tie_word_embeddings": False, "max_position_embeddings": 4096},
}
KNOWN_CONFIGS.update({f"meta-llama/Llama-2-{k[8:]}-hf": v for k, v in list(KNOWN_CONFIGS.items())})


@dataclass(frozen=True)
class Shape:
    """What the memory depends on in a decoder's config.

    Attributes:
        hidden: d. layers: L. heads: h. kv_heads: key/value heads (GQA). ffn: MLP width f. vocab: V.
        tied: input embeddings and output head share one matrix. gated: the MLP has three matrices (SwiGLU).
        context: the context window (reported; an upper bound for ``--max-length``).
    """

    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    tied: bool
    gated: bool
    context: int

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * (self.hidden // self.heads)

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of every linear layer of one decoder layer."""
        d, f, kv = self.hidden, self.ffn, self.kv_dim
        mlp = [(d, f), (d, f), (f, d)] if self.gated else [(d, f), (f, d)]
        return [(d, d), (d, kv), (d, kv), (d, d), *mlp]

    def linear_params(self) -> int:
        """Weights in the decoder layers' linear layers (what bitsandbytes quantizes)."""
        return self.layers * sum(i * o for i, o in self.linear_shapes())

    def other_params(self) -> int:
        """Embeddings, head and norms (kept in the compute dtype)."""
        embed = self.vocab * self.hidden * (1 if self.tied else 2)
        return embed + self.layers * 2 * self.hidden + self.hidden

    def n_params(self) -> int:
        return self.linear_params() + self.other_params()


def _get(cfg: dict, *names: str, default: Any = None) -> Any:
    for n in names:
        if cfg.get(n) is not None:
            return cfg[n]
    return default


def shape_from_config(cfg: dict[str, Any], where: str = "config") -> Shape:
    """Read a :class:`Shape` from a config.json dict (Llama-style keys, GPT-2/OPT aliases).

    Raises:
        ModelError: a key the estimate needs is missing.
    """
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
    d = _get(text, "hidden_size", "n_embd", "d_model")
    layers = _get(text, "num_hidden_layers", "n_layer", "num_layers")
    heads = _get(text, "num_attention_heads", "n_head")
    vocab = _get(text, "vocab_size")
    if not all(isinstance(v, int) and v > 0 for v in (d, layers, heads, vocab)):
        raise ModelError(f"{where}: not a decoder config (needs hidden_size, num_hidden_layers, num_attention_heads "
                         f"and vocab_size)")
    model_type = str(text.get("model_type", "unknown"))
    return Shape(model_type=model_type, hidden=d, layers=layers, heads=heads,
                 kv_heads=_get(text, "num_key_value_heads", default=heads),
                 ffn=_get(text, "intermediate_size", "ffn_dim", "n_inner", default=4 * d), vocab=vocab,
                 tied=bool(cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", True))),
                 gated=model_type in GATED_TYPES or text.get("hidden_act") == "silu",
                 context=_get(text, "max_position_embeddings", "n_positions", default=2048))


def read_config(spec: str) -> tuple[dict[str, Any], str]:
    """The config.json of ``spec`` without loading the model: a config.json path, a model directory, a built-in
    alias, a known public shape (:data:`KNOWN_CONFIGS`) or a hub id whose config is in the local cache.

    Returns:
        ``(config dict, where it came from)``.

    Raises:
        ModelError: no config to be read (one line: what to pass instead).
    """
    p = Path(spec).expanduser()
    if p.is_file() and p.suffix == ".json":
        return _load_json(p), str(p)
    if p.is_dir():
        return _load_json(p / "config.json"), str(p / "config.json")
    from spulctl.models import ALIASES, alias_dir

    if spec in ALIASES and (alias_dir(spec) / "config.json").is_file():
        return _load_json(alias_dir(spec) / "config.json"), str(alias_dir(spec) / "config.json")
    repo = ALIASES[spec].source if spec in ALIASES and ALIASES[spec].kind == "hub" else spec
    cached = _hub_cached_config(repo) if repo.count("/") == 1 and not p.exists() else None
    if cached:
        return _load_json(Path(cached)), cached
    if spec in KNOWN_CONFIGS:
        return dict(KNOWN_CONFIGS[spec]), "built-in table (public config.json values)"
    if spec in ALIASES:
        raise ModelError(f"{spec}: not pulled yet (run `spulctl models pull {spec}`, or pass --model path/to/"
                         f"config.json)")
    if repo.count("/") == 1 and not p.exists():
        raise ModelError(f"{spec}: config.json is not in the local Hugging Face cache (plan reads no network); "
                         f"download config.json and pass --model path/to/config.json")
    raise ModelError(f"{spec}: not a config.json, model directory, built-in alias or cached hub id")


def _hub_cached_config(repo: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo, "config.json")
    except Exception:  # an odd cache layout or a repo id the hub library rejects: treat as not cached
        return None
    return found if isinstance(found, str) else None


def _load_json(path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(path.read_text())
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(cfg, dict):
        raise ModelError(f"{path}: not a config (expected a JSON object)")
    return cfg


@dataclass
class PlanSettings:
    """The run being planned (the flags of ``spulctl unlearn`` that change memory).

    Attributes:
        method: spul | ga | rl | ga_kl | ga_gd | hard_prompt | icul. full: fine-tune every weight instead of LoRA.
        batch_size: examples a step. micro_batch: examples a slice (0: the whole batch).
        prompt_tokens: p. max_length: tokens of a batch's longest example (a batch is padded to it).
        retain: retain rows in the cached reference. lora_r: LoRA rank.
        quantization: none | 4bit | 8bit. dtype: auto | float32 | bfloat16 | float16. device: cpu | cuda.
        processes: data-parallel ranks; each runs every processes-th example of a batch (the figures are per rank).
        fsdp: the frozen decoder layers are sharded across the ranks (prompt methods only): a rank holds
            1/processes of them plus two whole layers (the one running and the next, gathered ahead).
    """

    method: str = "spul"
    full: bool = False
    batch_size: int = 16
    micro_batch: int = 0
    prompt_tokens: int = 30
    max_length: int = 128
    retain: int = 1000
    lora_r: int = 16
    quantization: str = "none"
    dtype: str = "auto"
    device: str = "cuda"
    processes: int = 1
    fsdp: bool = False

    def __post_init__(self) -> None:
        if self.processes < 1:
            raise SpulError(f"--processes: must be >= 1, got {self.processes}")
        if self.fsdp and self.processes < 2:
            raise SpulError("--fsdp: shards across ranks; give --processes N (N >= 2)")
        if self.fsdp and (self.method not in PROMPT_METHODS or self.quantization != "none"):
            raise SpulError("--fsdp: shards frozen, unquantized bases only (prompt methods: spul, hard_prompt, icul)")
        if self.method not in PROMPT_METHODS | LORA_METHODS:
            known = ", ".join(sorted(PROMPT_METHODS | LORA_METHODS))
            raise SpulError(f"--method {self.method}: expected one of {known}")
        if self.quantization not in ("none", "4bit", "8bit"):
            raise SpulError(f"quantization {self.quantization}: expected none, 4bit or 8bit")
        if self.device not in ("cpu", "cuda"):
            raise SpulError(f"--device {self.device}: expected cpu or cuda")
        if self.dtype != "auto" and self.dtype not in DTYPE_BYTES:
            raise SpulError(f"--dtype {self.dtype}: expected auto, {', '.join(DTYPE_BYTES)}")
        for name in ("batch_size", "prompt_tokens", "lora_r"):
            if getattr(self, name) < 1:
                raise SpulError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(self, name)}")
        if self.micro_batch < 0 or self.retain < 0 or self.max_length < 1:
            raise SpulError("--micro-batch and --retain must be >= 0, --max-length >= 1")

    @property
    def act_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype] if self.dtype != "auto" else (2 if self.device == "cuda" else 4)

    @property
    def per_rank(self) -> int:
        """Examples of a batch one rank runs."""
        return -(-self.batch_size // self.processes)

    @property
    def slice(self) -> int:
        """Examples that run through one rank's model at once."""
        return self.micro_batch if 0 < self.micro_batch < self.per_rank else self.per_rank


def weight_bytes(shape: Shape, s: PlanSettings) -> float:
    """The frozen base's weights in memory (quantized linear layers, the rest in the compute dtype)."""
    linear = shape.linear_params()
    if s.quantization == "4bit":
        linear_bytes = linear * NF4_BYTES
    elif s.quantization == "8bit":
        linear_bytes = linear + 4 * shape.layers * sum(o for _, o in shape.linear_shapes())  # int8 + fp32 row scale
    else:
        linear_bytes = linear * s.act_bytes
    if s.fsdp:  # a shard of every layer + two whole layers (running, prefetched)
        linear_bytes = linear_bytes / s.processes + 2 * linear_bytes / shape.layers
    return linear_bytes + shape.other_params() * s.act_bytes


def saved_per_token_layer(shape: Shape, s: PlanSettings) -> float:
    """Numbers autograd keeps per token and layer (measured counts; see the module docstring)."""
    d, f, kv, h = shape.hidden, shape.ffn, shape.kv_dim, shape.heads
    if s.method in PROMPT_METHODS:
        return 4 * d + 3 * f + 2 * kv + 33 * h + 20
    if s.full:  # every linear input kept (no dropout copies): an estimate, not measured
        return 7 * d + 4 * f + 2 * kv + 33 * h + 20
    return 14 * d + 5 * f + 2 * kv + 33 * h + 8 * s.lora_r + 2


def trainable_params(shape: Shape, s: PlanSettings) -> int:
    """Numbers the optimizer updates: p × d (prompt), r × (in + out) per linear layer (LoRA), or all (full)."""
    if s.method in ("hard_prompt", "icul"):
        return 0
    if s.method == "spul":
        return s.prompt_tokens * shape.hidden
    if s.full:
        return shape.n_params()
    return shape.layers * sum(s.lora_r * (i + o) for i, o in shape.linear_shapes())


def estimate(shape: Shape, s: PlanSettings) -> dict[str, Any]:
    """Peak memory of a training step, by component, in MiB.

    Returns:
        ``{"components": {name: MiB}, "total_mib", "activations_whole_batch_mib", "total_whole_batch_mib",
        "heap_mib", "peak_rss_mib", "tokens", "trainable_params", "params", "settings", "shape"}``; ``total_mib``
        (live memory) uses the micro-batch slice; ``peak_rss_mib`` (CPU: live + heap term) is None on CUDA.
    """
    tokens = s.max_length
    per_token = saved_per_token_layer(shape, s) * shape.layers * s.act_bytes
    prefix = s.prompt_tokens * per_token if s.method == "spul" else 0.0

    def activations(examples: int) -> float:
        head = examples * shape.vocab * 4 * 3  # answer-position logits, softmax and their gradient, fp32
        return examples * tokens * per_token + prefix + head

    trainable = trainable_params(shape, s)
    comp = {
        "weights": weight_bytes(shape, s),
        "activations": activations(s.slice),
        "reference": s.retain * shape.hidden * 4 if s.method in REFERENCE_METHODS else 0,
        "trainable": trainable * 4,
        "gradients": trainable * 4,
        "optimizer": trainable * 8,
    }
    if s.device == "cpu":
        comp["runtime"] = CPU_RUNTIME_MIB * MIB + 2 * shape.vocab * shape.hidden * 4  # + fingerprint's copies
    mib = {k: v / MIB for k, v in comp.items()}
    whole = activations(s.per_rank) / MIB
    total = sum(mib.values())
    heap = HEAP_RETAINED * mib["activations"] if s.device == "cpu" else 0.0
    return {"components": mib, "total_mib": total, "activations_whole_batch_mib": whole,
            "total_whole_batch_mib": total + whole - mib["activations"],
            "heap_mib": heap, "peak_rss_mib": total + heap if s.device == "cpu" else None,
            "tokens": tokens, "trainable_params": trainable, "params": shape.n_params(),
            "settings": asdict(s), "shape": asdict(shape)}


def plan(spec: str, settings: PlanSettings) -> dict[str, Any]:
    """Read ``spec``'s config and :func:`estimate` the run; adds ``model`` and ``config`` (where it was read)."""
    cfg, where = read_config(spec)
    out = estimate(shape_from_config(cfg, where), settings)
    return {"model": spec, "config": where, **out}
