"""Data laid out in ways `datasets` users meet: split files in one folder, JSON Lines named .json, a mapping of
columns, SQuAD with a byte order mark or a long head, save_to_disk folders, hub-style repositories, globs in
folder names, UTF-16 text. Each is read as `datasets` would read it, or refused with one line saying what to give.
"""

from __future__ import annotations

import json

import datasets
import pytest

from ftl.launcher.data import layouts
from ftl.launcher.data.readers import is_squad
from ftl.launcher.data.sources import load_file, load_source
from ftl.launcher.errors import FtlError
from ftl.launcher.locations import find_local
from ftl.launcher.recipe.data import DataSource

ROWS = [{"sentence": f"s{i}", "label": ["pos", "neg"][i % 2]} for i in range(6)]


def _csv(path, rows=ROWS):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("sentence,label\n" + "".join(f"{r['sentence']},{r['label']}\n" for r in rows))
    return path


def _load(tmp_path, path: str):
    return load_source(DataSource(path=path), [tmp_path], "data.train")


def test_a_folder_of_train_and_test_files_is_refused_with_the_files_to_give(tmp_path):
    _csv(tmp_path / "d" / "train.csv")
    _csv(tmp_path / "d" / "test.csv")
    with pytest.raises(FtlError) as error:
        _ = _load(tmp_path, "d").dataset
    message = str(error.value)
    assert "d holds split files (train.csv, test.csv)" in message
    assert f"point data.train at {tmp_path / 'd' / 'train.csv'}" in message
    assert f"data.validation at {tmp_path / 'd' / 'test.csv'}" in message


def test_split_shards_are_named_by_a_glob_and_a_glob_over_splits_is_read_with_a_warning(tmp_path, capsys):
    for name in ("train-00000-of-00002.csv", "train-00001-of-00002.csv", "validation-00000-of-00001.csv"):
        _csv(tmp_path / "d" / name)
    with pytest.raises(FtlError, match=r"at .*/d/train-\*\.csv and data.validation at .*validation-00000"):
        _load(tmp_path, "d")
    assert len(_load(tmp_path, "d/train-*.csv").dataset) == 12
    assert "several splits" not in capsys.readouterr().err
    assert len(_load(tmp_path, "d/*.csv").dataset) == 18  # e.g. train + dev for a final model, on purpose
    assert "d/*.csv matches files of several splits" in " ".join(capsys.readouterr().err.split())


def test_shards_of_one_split_or_unnamed_files_stay_one_set(tmp_path):
    _csv(tmp_path / "a" / "train-00000-of-00002.csv")
    _csv(tmp_path / "a" / "train-00001-of-00002.csv")
    _csv(tmp_path / "b" / "part1.csv")
    _csv(tmp_path / "b" / "contest.csv")  # 'test' inside a word is no split name
    assert len(_load(tmp_path, "a").dataset) == 12
    assert len(_load(tmp_path, "b").dataset) == 12


@pytest.mark.parametrize(
    ("name", "split"),
    [
        ("train.csv", "train"),
        ("dev.tsv", "validation"),
        ("my_valid.jsonl", "validation"),
        ("test-00000-of-00001.parquet", "test"),
        ("eval.json", "test"),
        ("interval.csv", None),
        ("latest.csv", None),
        ("rows.csv", None),
    ],
)
def test_split_names_are_read_from_file_names_as_datasets_does(name, split):
    assert layouts.split_of(name) == split


def test_json_lines_in_a_file_named_json_are_read_as_lines(tmp_path):
    (tmp_path / "t.json").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert _load(tmp_path, "t.json").dataset["sentence"] == [r["sentence"] for r in ROWS]


def test_a_json_mapping_of_columns_is_read_as_rows(tmp_path):
    columns = {"sentence": [r["sentence"] for r in ROWS], "label": [r["label"] for r in ROWS]}
    (tmp_path / "t.json").write_text(json.dumps(columns))
    data = _load(tmp_path, "t.json").dataset
    assert len(data) == 6 and data["label"] == columns["label"]
    # lists of different lengths are one record, as datasets reads a one-line .json
    record = {"messages": [{"role": "user", "content": "hi"}], "tools": []}
    (tmp_path / "one.json").write_text(json.dumps(record))
    assert _load(tmp_path, "one.json").dataset.to_list() == [record]


def test_rows_under_a_key_still_read(tmp_path):
    (tmp_path / "t.json").write_text("\ufeff" + json.dumps({"data": ROWS}), encoding="utf-8")
    assert len(_load(tmp_path, "t.json").dataset) == 6


def _squad(title: str = "t") -> dict:
    context = "Paris is the capital of France."
    qa = {"id": "q1", "question": "Capital?", "answers": [{"text": "Paris", "answer_start": 0}]}
    return {"data": [{"title": title, "paragraphs": [{"context": context, "qas": [qa]}]}], "version": "1.1"}


def test_squad_with_a_byte_order_mark_or_a_long_head_is_squad(tmp_path):
    bom = tmp_path / "bom.json"
    bom.write_text("\ufeff" + json.dumps(_squad()), encoding="utf-8")
    long = tmp_path / "long.json"
    long.write_text(json.dumps(_squad(title="x" * 200_000)))
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"data": [{"text": "paragraphs", "label": 1}]}))
    assert is_squad(bom) and is_squad(long) and not is_squad(flat)
    assert _load(tmp_path, "bom.json").dataset["question"] == ["Capital?"]
    assert _load(tmp_path, "long.json").format == "squad"


def test_a_save_to_disk_folder_is_read_without_writing_beside_it(tmp_path):
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "d"))
    before = sorted(p.name for p in (tmp_path / "d").iterdir())
    data = _load(tmp_path, "d").dataset
    assert data.column_names == ["sentence", "label"] and len(data) == 6
    data.map(lambda row: {"n": len(row["sentence"])})
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == before


def test_a_saved_dataset_dict_names_its_split_folders(tmp_path):
    table = datasets.Dataset.from_list(ROWS)
    datasets.DatasetDict({"train": table, "test": table}).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(FtlError) as error:
        _load(tmp_path, "d")
    assert "is a DatasetDict saved with save_to_disk (splits: train, test)" in str(error.value)
    assert f"data.validation at {tmp_path / 'd' / 'test'}" in str(error.value)


def test_a_hub_style_folder_names_the_subfolder_that_holds_its_data(tmp_path):
    (tmp_path / "d" / "data").mkdir(parents=True)
    (tmp_path / "d" / "README.md").write_text("# card\n")
    datasets.Dataset.from_list(ROWS).to_parquet(str(tmp_path / "d" / "data" / "train-00000-of-00001.parquet"))
    with pytest.raises(FtlError) as error:
        _load(tmp_path, "d")
    assert "its data is in the subfolder data/ (train-00000-of-00001.parquet)" in str(error.value)
    assert f"point data.train at {tmp_path / 'd' / 'data'}" in str(error.value)
    (tmp_path / "e").mkdir()
    with pytest.raises(FtlError, match=r"no data files in .*/e \(it is empty\)"):
        _load(tmp_path, "e")


@pytest.mark.parametrize("pattern", ["d/**/*.csv", "d/*/a.csv", "d/[xy]/*.csv"])
def test_globs_in_folder_names_match(tmp_path, pattern):
    _csv(tmp_path / "d" / "x" / "a.csv")
    _csv(tmp_path / "d" / "y" / "a.csv")
    _csv(tmp_path / "d" / ".git" / "a.csv")  # hidden folders are no data, as in `datasets`
    assert find_local(pattern, [tmp_path]) == tmp_path / pattern
    raw = _load(tmp_path, pattern)
    assert len(raw.files) == 2 and len(raw.dataset) == 12
    assert find_local("d/*/none.csv", [tmp_path]) is None


@pytest.mark.parametrize(
    ("encoding", "hint"), [("utf-16", "iconv -f utf-16 -t utf-8"), ("utf-32", "iconv -f utf-32 -t utf-8")]
)
def test_a_utf16_file_gets_the_utf16_hint(tmp_path, encoding, hint):
    path = tmp_path / "t.tsv"
    path.write_bytes("sentence\tlabel\ngood\tpos\n".encode(encoding))  # with its byte order mark
    with pytest.raises(FtlError) as error:
        _ = load_file(path, "data.train").dataset
    assert f"t.tsv:1: not UTF-8 text ({encoding.upper()}" in str(error.value)
    assert hint in str(error.value) and "latin1" not in str(error.value)


def test_csv_rows_are_located_on_their_own_line_after_quoted_newlines_and_blank_lines(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('sentence,label\n"good\nfilm",positive\n\nok,negative\n"a ""b"" c",positive\n')
    raw = load_file(path, "data.train")
    assert raw.dataset["sentence"] == ["good\nfilm", "ok", 'a "b" c']
    assert [raw.row_location(i) for i in range(3)] == [f"{path}:2", f"{path}:5", f"{path}:6"]
