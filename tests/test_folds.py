"""k-fold splits without Ray: disjoint folds that cover the rows, keep label ratios and groups, and fold runs
that partition the training data."""

from __future__ import annotations

from collections import Counter

import pytest

from ftl.launcher.recipe import load_recipe
from ftl.launcher.recipe.folds import FoldSplit, KFold
from ftl.launcher.recipe.variants import with_values
from tests.conftest import edit_recipe

# ---- folds ------------------------------------------------------------------------------------------


def _folds(n, labels=None, groups=None, **spec):
    from ftl.launcher.data.folds import fold_of_rows

    kfold = KFold(**spec)
    method = spec.get(
        "method", "group" if groups is not None else "stratified" if labels is not None else "random"
    )
    return fold_of_rows(n, kfold, method=method, labels=labels, groups=groups, what="test")


def test_folds_are_disjoint_cover_the_rows_and_keep_label_ratios():
    labels = [0] * 300 + [1] * 100 + [2] * 50
    fold = _folds(len(labels), labels=labels, folds=5)
    assert sorted(Counter(fold)) == [0, 1, 2, 3, 4] and len(fold) == len(
        labels
    )  # every row in exactly one fold
    overall = Counter(labels)
    for index in range(5):
        members = [labels[i] for i, f in enumerate(fold) if f == index]
        assert abs(len(members) - len(labels) / 5) <= 1
        for label, count in overall.items():
            assert abs(Counter(members)[label] / len(members) - count / len(labels)) < 0.01
    assert fold == _folds(len(labels), labels=labels, folds=5)  # seeded
    assert fold != _folds(len(labels), labels=labels, folds=5, seed=1)


def test_group_folds_never_split_a_group():
    groups = [f"user{i // 7}" for i in range(210)]  # 30 users, 7 rows each
    labels = [i % 2 for i in range(210)]
    fold = _folds(210, labels=labels, groups=groups, folds=3, group_column="user")
    for group in set(groups):
        assert len({fold[i] for i, g in enumerate(groups) if g == group}) == 1
    assert sorted(Counter(fold)) == [0, 1, 2]


def test_contiguous_folds_keep_file_order():
    fold = _folds(10, folds=2, method="contiguous")
    assert fold == [0] * 5 + [1] * 5


def test_impossible_folds_are_one_line_errors():
    from ftl.launcher.errors import FtlError

    with pytest.raises(FtlError, match="3 row\\(s\\) cannot be split into 5 folds"):
        _folds(3, folds=5)
    with pytest.raises(FtlError, match="group_column has 2 distinct value\\(s\\), fewer than the 3 folds"):
        _folds(10, groups=["a", "b"] * 5, folds=3, group_column="g")
    with pytest.raises(ValueError, match="index 5 is not a fold of 5"):
        FoldSplit(folds=5, index=5)


def test_fold_runs_partition_the_training_data(classification_recipe):
    """Each fold's validation rows are disjoint from the others' and from its own training rows; together they
    are all the training rows (max_train_rows applied first)."""
    from ftl.launcher.data.prepare import prepare_data
    from ftl.launcher.model.load import load_tokenizer
    from ftl.launcher.tasks.registry import task_for

    edit_recipe(classification_recipe, data={"train": "train.tsv", "max_train_rows": 200})
    base = load_recipe(classification_recipe)
    seen: list[str] = []
    for index in range(4):
        recipe = with_values(base.recipe, {"data.fold": {"folds": 4, "index": index}})
        loaded = base.__class__(recipe=recipe, path=base.path, origins=base.origins)
        data = prepare_data(
            loaded.recipe.data,
            task_for(recipe.task),
            dirs=loaded.search_dirs,
            tokenizer=load_tokenizer(loaded.recipe.model, loaded.search_dirs),
            log=lambda _: None,
        )
        held_out = list(data.validation_rows["sentence"])
        assert len(data.train) + len(held_out) == 200
        assert data.sources["validation"] == f"fold {index} of 4 of train"
        seen.extend(held_out)
    rows = [
        line.split("\t")[0]
        for line in (classification_recipe.parent / "train.tsv").read_text().splitlines()[1:]
    ]
    assert len(seen) == 200 and Counter(seen) <= Counter(rows)


def test_group_column_must_exist(classification_recipe):
    from ftl.launcher.data.prepare import prepare_data
    from ftl.launcher.errors import FtlError
    from ftl.launcher.model.load import load_tokenizer
    from ftl.launcher.tasks.registry import task_for

    fold = {"folds": 2, "index": 0, "group_column": "usr"}
    loaded = load_recipe(edit_recipe(classification_recipe, data={"train": "train.tsv", "fold": fold}))
    with pytest.raises(
        FtlError, match="data.fold.group_column: no column 'usr' in .*train.tsv; columns are: sentence, label"
    ):
        prepare_data(
            loaded.recipe.data,
            task_for(loaded.recipe.task),
            dirs=loaded.search_dirs,
            tokenizer=load_tokenizer(loaded.recipe.model, loaded.search_dirs),
            log=lambda _: None,
        )


def test_group_folds_keep_each_group_on_one_side_of_every_fold_run(tmp_path, classification_recipe):
    from ftl.launcher.data.prepare import prepare_data
    from ftl.launcher.model.load import load_tokenizer
    from ftl.launcher.tasks.registry import task_for
    from tests.conftest import sentiment_rows

    rows = sentiment_rows(120, seed=4)
    lines = [f"{text}\t{label}\tuser{i % 9}" for i, (text, label) in enumerate(rows)]
    (tmp_path / "users.tsv").write_text("sentence\tlabel\tuser\n" + "\n".join(lines) + "\n")
    edit_recipe(classification_recipe, data={"train": "users.tsv"})
    base = load_recipe(classification_recipe)
    user_of = {text: f"user{i % 9}" for i, (text, _) in enumerate(rows)}
    held_out_users = []
    for index in range(3):
        fold = {"folds": 3, "index": index, "group_column": "user"}
        recipe = with_values(base.recipe, {"data.fold": fold})
        loaded = base.__class__(recipe=recipe, path=base.path, origins=base.origins)
        data = prepare_data(
            loaded.recipe.data,
            task_for(recipe.task),
            dirs=loaded.search_dirs,
            tokenizer=load_tokenizer(loaded.recipe.model, loaded.search_dirs),
            log=lambda _: None,
        )
        validation = set(data.validation_rows["user"])
        held_out_users.append(validation)
        assert validation == {user_of[text] for text in data.validation_rows["sentence"]}
        # every row of a held-out user is held out: none of them trains
        assert len(data.validation_rows) == sum(f"user{i % 9}" in validation for i in range(120))
        assert len(data.train) + len(data.validation_rows) == 120
    assert set().union(*held_out_users) == {f"user{i}" for i in range(9)}
    assert all(not (a & b) for i, a in enumerate(held_out_users) for b in held_out_users[i + 1 :])
