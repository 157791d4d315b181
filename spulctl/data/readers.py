"""Read labelled text records from jsonl/csv/tsv/parquet files or ``datasets`` hub names.

Every record comes out as ``{"text": str, "label": str, ...extra fields}`` with the label already mapped to
its label word. Bad input raises :class:`~spulctl.errors.DataError` with one line naming file, line and field.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spulctl.errors import DataError

TEXT_FIELDS = ("text", "sentence", "content", "review", "document", "utterance", "query")
LABEL_FIELDS = ("label", "sentiment", "labels", "class", "target", "label_text")
ID_FIELDS = ("id", "idx", "uid")
DEFAULT_LABEL_MAP = {"0": "negative", "1": "positive"}
SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv",
            ".parquet": "parquet"}
SPLIT_NAMES = ("train_forget", "train_retain", "test_forget", "test_retain")

Note = Callable[[str], None]


@dataclass
class ReadOptions:
    """How to interpret a dataset.

    Attributes:
        text_field: column with the text; auto-detected among :data:`TEXT_FIELDS` when empty.
        label_field: column with the label; auto-detected among :data:`LABEL_FIELDS` when empty.
        label_map: raw label value (as a string) -> label word. Label words themselves are accepted too.
        require_label: a missing label is an error (False for unlabelled texts).
        hub_split: split name for ``datasets`` hub sources.
    """

    text_field: str | None = None
    label_field: str | None = None
    label_map: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_LABEL_MAP))
    require_label: bool = True
    hub_split: str = "train"


def parse_label_map(spec: str | None) -> dict[str, str]:
    """Parse ``"0=negative,1=positive"`` into a map; empty means the default.

    Raises:
        DataError: an item is not ``value=word``.
    """
    if not spec:
        return dict(DEFAULT_LABEL_MAP)
    out: dict[str, str] = {}
    for item in spec.split(","):
        key, sep, word = item.partition("=")
        if not sep or not key.strip() or not word.strip():
            raise DataError(f"--label-map: '{item}' is not of the form value=word (e.g. 0=negative,1=positive)")
        out[key.strip()] = word.strip()
    return out


def read_records(source: str | Path, opts: ReadOptions | None = None, note: Note | None = None) -> list[dict]:
    """Read, validate and normalise a dataset.

    Args:
        source: a file path (by suffix) or a ``datasets`` hub name (``glue/sst2`` style: ``name[/config]``).
        opts: field names and label map.
        note: receives human-readable notes (e.g. which columns were auto-detected).

    Returns:
        Records ``{"text", "label", ...}`` in file order.

    Raises:
        DataError: file missing/unreadable, bad encoding, bad JSON, missing column, empty text, unknown label,
            duplicate id, or no records at all.
    """
    opts = opts or ReadOptions()
    rows, name = _raw_rows(source, opts)
    records = _normalise(rows, name, opts, note or (lambda _m: None))
    if not records:
        raise DataError(f"{name}: no records")
    return records


def find_split_file(folder: str | Path, split: str) -> Path:
    """Return ``folder/<split>.<ext>`` for the first supported extension present.

    Raises:
        DataError: none found.
    """
    folder = Path(folder)
    for suffix in (".jsonl", ".csv", ".tsv", ".parquet", ".json"):
        if (folder / f"{split}{suffix}").is_file():
            return folder / f"{split}{suffix}"
    raise DataError(f"{folder}: no {split}.jsonl/.csv/.tsv/.parquet in the splits directory")


def load_split(splits: str | Path, name: str, note: Note | None = None) -> list[dict]:
    """Read one split (``train_forget`` ...) from a splits directory, whatever its file format."""
    return read_records(find_split_file(splits, name), ReadOptions(), note)


def _raw_rows(source: str | Path, opts: ReadOptions) -> tuple[Iterator[tuple[int, dict]], str]:
    path = Path(source)
    if path.is_dir():  # a local dataset folder goes through `datasets`, exactly like a hub name
        return _hub_rows(str(path), opts.hub_split), str(path)
    if path.suffix.lower() in SUFFIXES:
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        kind = SUFFIXES[path.suffix.lower()]
        reader = {"jsonl": _jsonl_rows, "csv": _csv_rows, "tsv": _tsv_rows, "parquet": _parquet_rows}[kind]
        return reader(path), str(path)
    if path.exists():
        raise DataError(f"{path}: unsupported file type '{path.suffix}' (use .jsonl, .csv, .tsv or .parquet)")
    return _hub_rows(str(source), opts.hub_split), str(source)


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte 0x{data[exc.start]:02x})") from None


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict]]:
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def _delimited_rows(path: Path, delimiter: str, quoting: int) -> Iterator[tuple[int, dict]]:
    csv.field_size_limit(sys.maxsize)
    text = _read_text(path)
    reader = csv.reader(text.splitlines(), delimiter=delimiter, quoting=quoting)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}: empty file (no header)") from None
    if len(set(header)) != len(header):
        raise DataError(f"{path}:1: duplicate column names in header {header}")
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            lineno = reader.line_num
            if len(row) != len(header):
                raise DataError(f"{path}:{lineno}: {len(row)} fields, header has {len(header)}")
            yield lineno, dict(zip(header, row, strict=True))
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: malformed {delimiter!r}-separated line ({exc})") from None


def _csv_rows(path: Path) -> Iterator[tuple[int, dict]]:
    return _delimited_rows(path, ",", csv.QUOTE_MINIMAL)


def _tsv_rows(path: Path) -> Iterator[tuple[int, dict]]:
    # GLUE-style TSVs carry bare quote characters inside texts: no quoting.
    return _delimited_rows(path, "\t", csv.QUOTE_NONE)


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading parquet needs pyarrow: pip install pyarrow") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise DataError(f"{path}: not a readable parquet file ({type(exc).__name__})") from None
    yield from enumerate(table.to_pylist(), start=1)


def _hub_rows(name: str, split: str) -> Iterator[tuple[int, dict]]:
    try:
        import datasets
    except ImportError:
        raise DataError(f"{name}: not a file; hub datasets need the 'datasets' package") from None
    repo, _, config = name.partition(":")
    if "/" in repo and not config and repo.count("/") == 1 and repo.split("/")[0] in {"glue", "super_glue"}:
        repo, config = repo.split("/")
    try:
        ds = datasets.load_dataset(repo, config or None, split=split)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{name}: cannot be loaded with datasets.load_dataset: {first}") from None
    for i, row in enumerate(ds, start=1):
        yield i, dict(row)


def _pick(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, name: str) -> str | None:
    if wanted:
        if wanted not in columns:
            raise DataError(f"{name}: {what} field '{wanted}' not found (columns: {', '.join(columns)})")
        return wanted
    lower = {c.lower(): c for c in columns}
    return next((lower[c] for c in candidates if c in lower), None)


def _normalise(rows: Iterator[tuple[int, dict]], name: str, opts: ReadOptions, note: Note) -> list[dict]:
    out: list[dict] = []
    seen_ids: dict[str, int] = {}
    text_f = label_f = id_f = None
    words = set(opts.label_map.values())
    for lineno, row in rows:
        if text_f is None:
            text_f, label_f, id_f = _detect_fields(list(row), name, opts, note)
        text = row.get(text_f)
        if text is None or (isinstance(text, str) and not text.strip()):
            raise DataError(f"{name}:{lineno}: field '{text_f}' is empty")
        rec = {k: v for k, v in row.items() if k not in (text_f, label_f)}
        rec["text"] = str(text).strip()
        if label_f is not None:
            rec["label"] = _map_label(row.get(label_f), opts.label_map, words, f"{name}:{lineno}", label_f)
        if id_f is not None:
            key = str(row.get(id_f))
            if key in seen_ids:
                raise DataError(f"{name}:{lineno}: duplicate {id_f} '{key}' (first at line {seen_ids[key]})")
            seen_ids[key] = lineno
        out.append(rec)
    return out


def _detect_fields(columns: list[str], name: str, opts: ReadOptions, note: Note) -> tuple[str, str | None, str | None]:
    text_f = _pick(columns, opts.text_field, TEXT_FIELDS, "text", name)
    if text_f is None:
        raise DataError(f"{name}: no text field among columns {columns} (pass --text-field)")
    label_f = _pick(columns, opts.label_field, LABEL_FIELDS, "label", name)
    if label_f is None and opts.require_label:
        raise DataError(f"{name}: no label field among columns {columns} (pass --label-field)")
    if not opts.text_field or (label_f and not opts.label_field):
        note(f"{name}: using text field '{text_f}'" + (f" and label field '{label_f}'" if label_f else ""))
    id_f = next((c for c in columns if c.lower() in ID_FIELDS), None)
    return text_f, label_f, id_f


def _map_label(value: Any, label_map: dict[str, str], words: set[str], where: str, field_name: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{where}: field '{field_name}' is empty")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    key = str(value).strip()
    if key in label_map:
        return label_map[key]
    if key in words:
        return key
    allowed = sorted(set(label_map) | words)
    raise DataError(f"{where}: unknown label '{key}' in field '{field_name}' (expected one of {', '.join(allowed)})")
