"""Data: formats, label mapping, splits, subsets, tokenisation cache, dynamic padding and packing."""

from __future__ import annotations

import json
import time
from collections import Counter

import datasets
import pytest

from ftl.launcher.data.collate import PaddingCollator
from ftl.launcher.data.prepare import prepare_data
from ftl.launcher.data.sources import load_source
from ftl.launcher.data.splits import carve_validation, subsample
from ftl.launcher.errors import FtlError
from ftl.launcher.model.load import load_tokenizer
from ftl.launcher.recipe import load_recipe
from ftl.launcher.recipe.data import DataSource
from ftl.launcher.tasks.registry import task_for
from tests.conftest import SHARED_DATA, sentiment_rows, write_tsv


def _labelled(n_pos: int, n_neg: int):
    return datasets.Dataset.from_dict({"labels": [1] * n_pos + [0] * n_neg, "i": list(range(n_pos + n_neg))})


def test_stratified_split_keeps_label_ratios_and_is_disjoint():
    data = _labelled(300, 100)
    train, val = carve_validation(
        data, method="stratified", fraction=0.2, seed=1, stratify_column="labels", what="x"
    )
    assert len(val) == 80 and len(train) == 320
    assert Counter(val["labels"]) == {1: 60, 0: 20}
    assert set(train["i"]).isdisjoint(val["i"]) and set(train["i"]) | set(val["i"]) == set(range(400))
    again = carve_validation(
        data, method="stratified", fraction=0.2, seed=1, stratify_column="labels", what="x"
    )[1]
    assert again["i"] == val["i"]  # seeded


def test_tail_split_holds_out_the_end_in_order():
    data = datasets.Dataset.from_dict({"text": [f"p{i}" for i in range(50)]})
    train, val = carve_validation(data, method="tail", fraction=0.1, seed=0, stratify_column=None, what="x")
    assert val["text"] == [f"p{i}" for i in range(45, 50)] and train["text"][-1] == "p44"


def test_subsample_is_seeded_and_stratified():
    data = _labelled(900, 100)
    subset = subsample(data, 100, seed=3, stratify_column="labels", what="x")
    assert len(subset) == 100 and Counter(subset["labels"]) == {1: 90, 0: 10}
    assert subsample(data, 5000, seed=3, stratify_column="labels", what="x") is data


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "json", "parquet"])
def test_every_tabular_format_loads_the_same_rows(tmp_path, fmt):
    rows = [{"sentence": t, "label": y} for t, y in sentiment_rows(20)]
    path = tmp_path / f"data.{fmt}"
    frame = datasets.Dataset.from_list(rows)
    if fmt == "csv":
        frame.to_csv(str(path), index=False)
    elif fmt == "tsv":
        frame.to_csv(str(path), index=False, sep="\t")
    elif fmt == "jsonl":
        frame.to_json(str(path), lines=True)
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    else:
        frame.to_parquet(str(path))
    loaded = load_source(DataSource(path=str(path)), [tmp_path], "data.train").dataset
    assert loaded["sentence"] == [r["sentence"] for r in rows] and loaded["label"] == [
        r["label"] for r in rows
    ]


def test_label_names_map_to_ids_and_back(tmp_path, classification_recipe):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\na\tpos\nb\tneg\nc\tpos\nd\tmeh\n")
    loaded = load_recipe(classification_recipe, ["task.labels=null"])
    task = task_for(loaded.recipe.task)
    raw = load_source(loaded.recipe.data.train, loaded.search_dirs, "data.train")
    task.fit(raw)
    assert task.label_names() == ["meh", "neg", "pos"]
    assert task.encode_raw(raw)["labels"] == [2, 1, 2, 0]
    assert task.config_overrides()["id2label"] == {0: "meh", 1: "neg", 2: "pos"}


def test_integer_labels_index_the_given_names(tmp_path, classification_recipe):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\na\t1\nb\t0\nc\t2\n")
    loaded = load_recipe(classification_recipe)
    task = task_for(loaded.recipe.task)
    raw = load_source(loaded.recipe.data.train, loaded.search_dirs, "data.train")
    task.fit(raw)
    with pytest.raises(FtlError, match=r"train.tsv:4: unknown label '2'"):
        task.encode_raw(raw)


def test_tokenised_data_is_cached_and_reloads_fast(classification_recipe):
    loaded = load_recipe(classification_recipe)
    task = task_for(loaded.recipe.task)
    tokenizer = load_tokenizer(loaded.recipe.model, loaded.search_dirs)
    first = prepare_data(loaded.recipe.data, task, dirs=loaded.search_dirs, tokenizer=tokenizer)
    assert not first.from_cache
    started = time.perf_counter()
    second = prepare_data(
        loaded.recipe.data, task_for(loaded.recipe.task), dirs=loaded.search_dirs, tokenizer=tokenizer
    )
    assert second.from_cache and time.perf_counter() - started < 1.0
    assert second.train["input_ids"] == first.train["input_ids"]
    assert second.validation["labels"] == first.validation["labels"]
    changed = load_recipe(classification_recipe, ["task.max_length=8"])
    third = prepare_data(
        changed.recipe.data, task_for(changed.recipe.task), dirs=changed.search_dirs, tokenizer=tokenizer
    )
    assert not third.from_cache and max(len(x) for x in third.train["input_ids"]) <= 8


def test_dynamic_padding_pads_to_the_longest_in_the_batch(classification_recipe):
    loaded = load_recipe(classification_recipe)
    tokenizer = load_tokenizer(loaded.recipe.model, loaded.search_dirs)
    features = [dict(tokenizer(text), labels=0, length=1) for text in ["a b", "a b c d e f"]]
    batch = PaddingCollator(tokenizer)(features)
    assert batch["input_ids"].shape == (2, len(tokenizer("a b c d e f")["input_ids"]))
    assert "length" not in batch


def test_packing_fills_blocks_without_padding(lm_recipe):
    loaded = load_recipe(lm_recipe)
    task = task_for(loaded.recipe.task)
    data = prepare_data(
        loaded.recipe.data,
        task,
        dirs=loaded.search_dirs,
        tokenizer=load_tokenizer(loaded.recipe.model, loaded.search_dirs),
    )
    lengths = {len(ids) for ids in data.train["input_ids"]}
    assert lengths == {32}
    assert data.train["labels"] == data.train["input_ids"]
    tokens_in_text = data.stats["train"]["tokens"]
    assert tokens_in_text == 32 * len(data.train)


@pytest.mark.skipif(not (SHARED_DATA / "dracula").exists(), reason="needs ../shared/data")
def test_packing_real_text_keeps_at_least_97_percent_of_tokens(tmp_path):
    from tests.conftest import TINY_LLAMA, minilm_dir

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        json.dumps(
            {
                "name": "pack",
                "model": {"config": TINY_LLAMA, "tokenizer": minilm_dir()},
                "task": {"type": "causal_lm", "max_length": 256, "add_eos": False, "packing": "stream"},
                "data": {
                    "train": "dracula/dracula.txt",
                    "validation_split": {"method": "tail", "fraction": 0.05},
                },
            }
        )
    )
    loaded = load_recipe(recipe)
    tokenizer = load_tokenizer(loaded.recipe.model, loaded.search_dirs)
    data = prepare_data(
        loaded.recipe.data, task_for(loaded.recipe.task), dirs=loaded.search_dirs, tokenizer=tokenizer
    )
    rows = load_source(loaded.recipe.data.train, loaded.search_dirs, "data.train").dataset["text"]
    total = sum(
        len(ids) for ids in tokenizer([r + "\n\n" for r in rows], add_special_tokens=False)["input_ids"]
    )
    kept = (len(data.train) + len(data.validation)) * 256
    assert kept / total >= 0.97


def test_what_the_task_said_of_the_data_is_said_again_on_a_cache_hit(tmp_path, classification_recipe, capsys):
    rows = sentiment_rows(40, seed=3)
    write_tsv(
        tmp_path / "train.tsv", [(text, ["positive", "Positive"][i % 2]) for i, (text, _) in enumerate(rows)]
    )
    loaded = load_recipe(classification_recipe, ["task.labels=null"])
    tokenizer = load_tokenizer(loaded.recipe.model, loaded.search_dirs)
    said = []
    for _ in range(2):
        prepared = prepare_data(
            loaded.recipe.data, task_for(loaded.recipe.task), dirs=loaded.search_dirs, tokenizer=tokenizer
        )
        printed = capsys.readouterr()
        said.append(" ".join((printed.out + printed.err).split()))
    assert prepared.from_cache
    for err in said:
        assert "labels 'Positive' and 'positive' differ only in case" in err


def test_validation_holding_the_training_rows_is_named(classification_recipe, capsys):
    loaded = load_recipe(classification_recipe, ["data.validation=train.tsv"])
    tokenizer = load_tokenizer(loaded.recipe.model, loaded.search_dirs)
    prepare_data(
        loaded.recipe.data, task_for(loaded.recipe.task), dirs=loaded.search_dirs, tokenizer=tokenizer
    )
    printed = capsys.readouterr()
    assert "holds the same rows as data.train" in " ".join((printed.out + printed.err).split())
