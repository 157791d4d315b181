"""Readers: formats, field auto-detection, label maps, and validation errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from spulctl.data.readers import ReadOptions, find_split_file, parse_label_map, read_records
from spulctl.errors import DataError
from spulctl.io import write_jsonl_atomic as write_jsonl

ROWS = [{"sentence": "a fine film", "label": 1}, {"sentence": "a dull film", "label": 0}]


def _write_all_formats(tmp_path: Path) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = {"jsonl": write_jsonl(tmp_path / "d.jsonl", ROWS)}
    paths["csv"] = tmp_path / "d.csv"
    paths["csv"].write_text('sentence,label\n"a fine film",1\n"a dull film",0\n')
    paths["tsv"] = tmp_path / "d.tsv"
    paths["tsv"].write_text('label\tsentence\n1\ta fine film\n0\ta dull film\n')
    paths["parquet"] = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), paths["parquet"])
    return paths


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tsv", "parquet"])
def test_every_format_reads_the_same_records(tmp_path: Path, fmt: str):
    notes: list[str] = []
    records = read_records(_write_all_formats(tmp_path)[fmt], note=notes.append)
    assert [(r["text"], r["label"]) for r in records] == [("a fine film", "positive"), ("a dull film", "negative")]
    assert any("'sentence'" in n and "'label'" in n for n in notes), notes


def test_label_map_and_label_words_and_extras_kept(tmp_path: Path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"review": "great", "stars": "5", "user": "u1"},
                                              {"review": "awful", "stars": "1", "user": "u2"}])
    opts = ReadOptions(label_field="stars", label_map=parse_label_map("5=positive,1=negative"))
    records = read_records(path, opts)
    assert records == [{"user": "u1", "text": "great", "label": "positive"},
                       {"user": "u2", "text": "awful", "label": "negative"}]
    words = write_jsonl(tmp_path / "w.jsonl", [{"text": "ok", "label": "positive"}])
    assert read_records(words)[0]["label"] == "positive"


def test_hub_code_path_on_a_local_dataset_folder(tmp_path: Path):
    """`datasets.load_dataset` is the hub path; offline we exercise it on a local folder."""
    pytest.importorskip("datasets")
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", ROWS)
    records = read_records(folder)
    assert [(r["text"], r["label"]) for r in records] == [("a fine film", "positive"), ("a dull film", "negative")]


def test_glue_tsv_with_bare_quotes(tmp_path: Path):
    path = tmp_path / "g.tsv"
    path.write_text('label\tsentence\n1\tthe " best " film\n')
    assert read_records(path)[0]["text"] == 'the " best " film'


def test_find_split_file_prefers_jsonl_then_csv(tmp_path: Path):
    (tmp_path / "train_forget.csv").write_text("text,label\na,0\n")
    assert find_split_file(tmp_path, "train_forget").name == "train_forget.csv"
    with pytest.raises(DataError, match="train_retain"):
        find_split_file(tmp_path, "train_retain")


BAD_INPUTS = {
    "missing file": (lambda p: p / "nope.jsonl", {}, "file not found"),
    "unsupported type": (lambda p: _text(p / "d.xml", "<a/>"), {}, "unsupported file type"),
    "invalid json": (lambda p: _text(p / "d.jsonl", '{"text": "a", "label": 1}\n{"text": \n'), {},
                     r"d.jsonl:2: invalid JSON"),
    "json not object": (lambda p: _text(p / "d.jsonl", '[1, 2]\n'), {}, "expected a JSON object"),
    "bad encoding": (lambda p: _bytes(p / "d.csv", b"text,label\n\xff\xfe bad,1\n"), {}, r"d.csv:2: not valid UTF-8"),
    "missing explicit column": (lambda p: write_jsonl(p / "d.jsonl", ROWS), {"text_field": "body"},
                                "text field 'body' not found"),
    "no text column": (lambda p: write_jsonl(p / "d.jsonl", [{"body": "x", "label": 1}]), {}, "no text field"),
    "no label column": (lambda p: write_jsonl(p / "d.jsonl", [{"text": "x"}]), {}, "no label field"),
    "empty text": (lambda p: write_jsonl(p / "d.jsonl", [{"text": "ok", "label": 1}, {"text": "  ", "label": 0}]),
                   {}, r"d.jsonl:2: field 'text' is empty"),
    "unknown label": (lambda p: write_jsonl(p / "d.jsonl", [{"text": "x", "label": 7}]), {},
                      r"d.jsonl:1: unknown label '7'"),
    "empty label": (lambda p: _text(p / "d.csv", "text,label\nfine,\n"), {}, r"d.csv:2: field 'label' is empty"),
    "duplicate ids": (lambda p: write_jsonl(p / "d.jsonl", [{"id": 1, "text": "a", "label": 0},
                                                          {"id": 1, "text": "b", "label": 1}]), {},
                      r"d.jsonl:2: duplicate id '1' \(first at line 1\)"),
    "empty file": (lambda p: _text(p / "d.jsonl", ""), {}, "no records"),
    "csv wrong field count": (lambda p: _text(p / "d.csv", "text,label\na,1,extra\n"), {}, r"d.csv:2: 3 fields"),
    "csv no header": (lambda p: _text(p / "d.csv", ""), {}, "empty file"),
    "duplicate header": (lambda p: _text(p / "d.csv", "text,text,label\na,b,1\n"), {}, "duplicate column"),
    "empty dataset folder": (lambda p: _mkdir(p / "ds"), {}, "cannot be loaded with datasets.load_dataset"),
    "corrupt parquet": (lambda p: _bytes(p / "d.parquet", b"not parquet"), {}, "not a readable parquet"),
}


def _text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_raises_one_line_data_error(tmp_path: Path, case: str):
    make, opts, pattern = BAD_INPUTS[case]
    with pytest.raises(DataError, match=pattern) as info:
        read_records(make(tmp_path), ReadOptions(**opts))
    assert "\n" not in str(info.value)


def test_bad_label_map_spec():
    with pytest.raises(DataError, match="value=word"):
        parse_label_map("0:negative")


def test_json_jsonl_with_ids_round_trip(tmp_path: Path):
    rows = [{"idx": i, "text": f"t{i}", "label": i % 2} for i in range(5)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    out = read_records(path)
    assert [r["idx"] for r in out] == list(range(5))
    assert json.loads(json.dumps(out)) == out  # records stay JSON-serialisable


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_through_the_cli_exit_2_no_traceback_no_output(tmp_path: Path, case: str):
    from typer.testing import CliRunner

    from spulctl.cli import app

    make, opts, pattern = BAD_INPUTS[case]
    data = make(tmp_path)
    out = tmp_path / "splits-out"
    extra = [f"--{k.replace('_', '-')}={v}" for k, v in opts.items()]
    result = CliRunner().invoke(app, ["split", str(data), "-o", str(out), "--entities", "x", *extra])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert not out.exists()
