"""Configuration and result of a reveal run (self-generated forget or retain data)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from spulctl.data.task import TaskSpec
from spulctl.errors import DataError


class Mode(str, Enum):
    """What the generated texts must be about."""

    FORGET = "forget"  # texts about the target (names / description)
    RETAIN = "retain"  # on-task texts that stay off the target (other people are welcome: hard negatives)


class BanditKind(str, Enum):
    """How the next instruction is picked."""

    NEURALUCB = "neuralucb"
    RANDOM = "random"  # uniform choice, the baseline


def _choice(kind: type[Enum], value: Any, flag: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise DataError(f"--{flag}: one of {[c.value for c in kind]}, got '{value}'") from None


@dataclass
class RevealConfig:
    """Everything ``reveal`` needs; the CLI fills it by field name.

    Attributes:
        model: model spec for :func:`spulctl.models.load_model` (unused by :func:`generate_records`).
        entities: target names, matched with word boundaries, case-insensitive.
        target: free-text description of the target (matched by embedding similarity).
        examples: a few example records/texts of the target (matched by embedding similarity).
        mode: ``forget`` or ``retain``.
        n: records to keep.
        budget: texts to generate at most (0: ``40 * n``).
        out: output jsonl (None: nothing written; library use).
        seed: seeds sampling, the bandit and its network.
        bandit: ``neuralucb`` or ``random``.
        lam: NeuralUCB's λ, the initial diagonal of U (larger: smaller exploration bonus early on).
        nu: NeuralUCB's ν, the weight of the exploration bonus.
        arms_per_round: instructions picked per round (each pick shrinks its bonus before the next).
        samples_per_arm: texts sampled per picked instruction.
        paraphrases: model-written paraphrases of pool instructions to add (0: none).
        temperature / top_p / max_new_tokens: sampling.
        max_sentences: a text is its first sentences up to this many; a sample stops there (or at a line end).
        complete_only: drop a sample cut off by ``max_new_tokens`` before its first sentence ended (it would be
            kept as a sentence fragment otherwise; a random test model never ends one, so tests turn this off).
        min_confidence: on task = restricted confidence of the answer (softmax over label words) at least this.
        similarity: a text is "on target" by meaning when its cosine to the target/examples reaches this.
        dedup_similarity: a text whose cosine to a kept text reaches this is a near duplicate.
        embedder: ``minilm`` (sentence embeddings) or ``shingle`` (hashed character 3-grams; no download).
        plain_prompt: allow a model without a chat template (instructions get a plain prefix).
        batch_size: texts per scoring forward.
        task: template and label words the texts are scored (and labelled) with.
    """

    model: str = "smollm2-135m"
    entities: list[str] = field(default_factory=list)
    target: str | None = None
    examples: list[str] = field(default_factory=list)
    mode: Mode = Mode.FORGET
    n: int = 100
    budget: int = 0
    out: Path | None = None
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    bandit: BanditKind = BanditKind.NEURALUCB
    lam: float = 1.0
    nu: float = 1.0
    arms_per_round: int = 4
    samples_per_arm: int = 4
    paraphrases: int = 8
    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 48
    max_sentences: int = 2
    complete_only: bool = True
    min_confidence: float = 0.6
    similarity: float = 0.5
    dedup_similarity: float = 0.95
    embedder: str = "minilm"
    plain_prompt: bool = False
    plot: bool = False
    batch_size: int = 32
    dtype: str = "auto"
    task: TaskSpec = field(default_factory=TaskSpec)

    def __post_init__(self) -> None:
        self.mode = _choice(Mode, self.mode, "mode")
        self.bandit = _choice(BanditKind, self.bandit, "bandit")
        self.entities = [e.strip() for e in self.entities if e and e.strip()]
        self.target = (self.target or "").strip() or None
        self.examples = [e.strip() for e in self.examples if e and e.strip()]
        if not self.entities and not self.target and not self.examples:
            raise DataError("reveal: the target is empty; give --entities \"Name, Other Name\" and/or --target TEXT")
        for name in ("n", "arms_per_round", "samples_per_arm", "max_new_tokens", "max_sentences",
                     "batch_size"):
            if getattr(self, name) < 1:
                raise DataError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(self, name)}")
        if self.budget < 0:
            raise DataError(f"--budget: must be >= 0, got {self.budget}")
        self.budget = self.budget or 40 * self.n
        if self.budget < self.n:
            raise DataError(f"--budget {self.budget}: smaller than -n {self.n} (a kept record is one generated text)")
        for name in ("min_confidence", "similarity", "dedup_similarity", "top_p"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise DataError(f"--{name.replace('_', '-')}: must be in (0, 1], got {getattr(self, name)}")
        if self.lam <= 0 or self.nu < 0 or self.temperature <= 0:
            raise DataError("--lam and --temperature must be > 0 and --nu >= 0")
        if self.embedder not in ("minilm", "shingle"):
            raise DataError(f"--embedder: 'minilm' or 'shingle', got '{self.embedder}'")

    def describe_target(self) -> str:
        """The target in words, as instructions mention it (names first, then the description)."""
        names = ", ".join(self.entities[:-1]) + (" and " if len(self.entities) > 1 else "") + (
            self.entities[-1] if self.entities else "")
        return names or self.target or "the examples' subject"

    def to_dict(self) -> dict[str, Any]:
        """JSON form for the report."""
        skip = {"task", "out", "resume", "overwrite", "plot"}
        out = {k: (v.value if isinstance(v, Enum) else v) for k, v in vars(self).items() if k not in skip}
        return {**out, "task": self.task.to_dict()}


@dataclass
class RevealResult:
    """What a reveal run produced.

    Attributes:
        records: the kept records (``text``, ``label``, ``instruction``, ``round``, ``relevance``, ``reward``, ...).
        rounds: per-round report rows.
        generated: texts generated in all.
        seconds: wall time of the generation loop.
        out: the written jsonl (None when nothing was written).
        report: the written report JSON (None when nothing was written).
    """

    records: list[dict]
    rounds: list[dict]
    generated: int
    seconds: float
    out: Path | None = None
    report: Path | None = None
    plot: Path | None = None


def read_examples(path: Path) -> list[str]:
    """Example texts of the target: a ``.jsonl`` file of objects with ``text`` (labels not needed) or a text file,
    one example per line.

    Raises:
        DataError: unreadable file, bad JSON, a line without ``text``, or no examples at all.
    """
    import json

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"--examples {path}: cannot read ({getattr(exc, 'strerror', None) or type(exc).__name__})"
                        ) from None
    texts = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if Path(path).suffix != ".jsonl":
            texts.append(line.strip())
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{i}: not valid JSON ({exc.msg})") from None
        text = row.get("text") if isinstance(row, dict) else row
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}:{i}: field 'text' missing or empty")
        texts.append(text.strip())
    if not texts:
        raise DataError(f"--examples {path}: no examples")
    return texts
