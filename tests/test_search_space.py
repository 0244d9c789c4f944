"""The tune: section and k-fold splits, without Ray: spaces, sampled values, folds, checkpoint adoption."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import yaml

from ftl.launcher.cli import main
from ftl.launcher.recipe import load_recipe
from ftl.launcher.recipe.folds import FoldSplit, KFold
from ftl.launcher.recipe.variants import InvalidVariant, objective, with_values
from tests.conftest import edit_recipe, fails, minilm_dir

SPACE = {"train.lr": {"loguniform": [1e-4, 1e-2]}, "train.batch_size": [8, 16]}


def _with_tune(path, **tune):
    return edit_recipe(path, tune={"space": SPACE, **tune})


# ---- bad spaces: one line, before any trial (nothing is written) -------------------------------------


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        (
            {"train.lerning_rate": [1, 2]},
            "tune.space.train.lerning_rate: not a recipe key: unknown key 'lerning_rate' in train (did you mean 'learning_rate'",
        ),
        ({"trian.lr": [1e-3]}, "unknown key 'trian' in the recipe (did you mean 'train'?)"),
        (
            {"train.lr": {"uniform": [0.1, 0.01]}},
            "tune.space.train.lr: uniform: low 0.1 is greater than high 0.01",
        ),
        (
            {"train.batch_size": {"choice": []}},
            "tune.space.train.batch_size: choice needs at least one value",
        ),
        ({"train.lr": {"loguniform": [0, 0.1]}}, "loguniform needs bounds > 0"),
        ({"train.lr": {"uniform": [1e-3, 1e-2], "int": [1, 2]}}, "give exactly one of uniform, loguniform"),
        ({"freeze.bottom_layers": {"int": [0, 2], "step": 0.5}}, "int needs a whole-number step, got 0.5"),
        (
            {"train.lr": {"uniform": [-0.1, 0.1]}},
            "tune.space.train.lr: uniform bound -0.1 gives an invalid recipe: train.lr: Input should be greater than 0",
        ),
        ({"train.scheduler": ["linear", "cosinus"]}, "choice value 'cosinus' gives an invalid recipe"),
        ({"name": ["a", "b"]}, "tune.space.name: cannot be searched"),
        (
            {"data.fold": [{"folds": 2, "index": 0}]},
            "tune.space.data.fold: cannot be searched: folds are set by tune.cv or ftl cv",
        ),
    ],
)
def test_bad_space_is_one_line_before_any_trial(capsys, tmp_path, classification_recipe, space, expected):
    edit_recipe(classification_recipe, tune={"space": space})
    out = tmp_path / "search"
    message = fails(capsys, ["tune", str(classification_recipe), "--output", str(out)])
    assert expected.split(" (did you mean")[0] in message, message
    assert not out.exists()


def test_a_metric_the_task_does_not_produce(capsys, tmp_path, classification_recipe):
    _with_tune(classification_recipe, metric="perplexity")
    message = fails(capsys, ["tune", str(classification_recipe), "--output", str(tmp_path / "s")])
    assert "tune.metric: task sequence_classification does not produce 'perplexity'" in message
    assert "accuracy, f1_macro, loss" in message


@pytest.mark.parametrize(
    ("tune", "expected"),
    [
        ({"search": "grid"}, "search: grid needs finite dimensions, but this one is loguniform"),
        (
            {"scheduler": {"type": "pbt"}},
            "tune.space.train.batch_size: pbt changes hyperparameters of running trials",
        ),
        ({"scheduler": {"type": "hyperband"}}, "tune.scheduler.type: 'hyperband' is not allowed"),
        ({"samples": 0}, "tune.samples: Input should be greater than 0"),
        ({"resources": {"cpus": 1}}, None),
    ],
)
def test_bad_search_settings(capsys, tmp_path, classification_recipe, tune, expected):
    _with_tune(classification_recipe, **tune)
    if expected is None:  # tune.resources is fine for single-process trials ...
        assert main(["check", "-q", str(classification_recipe)]) == 0
        capsys.readouterr()
        edit_recipe(classification_recipe, distributed={"workers": 2})  # ... but not beside distributed:
        expected = "tune.resources: each trial runs on distributed.workers Ray Train workers"
    message = fails(capsys, ["tune", str(classification_recipe), "--output", str(tmp_path / "s")])
    assert expected in message, message


def test_a_recipe_without_a_space(capsys, tmp_path, classification_recipe):
    message = fails(capsys, ["tune", str(classification_recipe), "--output", str(tmp_path / "s")])
    assert "the recipe has no tune.space to search" in message


def test_check_validates_the_space(capsys, classification_recipe):
    _with_tune(classification_recipe)
    assert main(["check", "-q", str(classification_recipe)]) == 0
    assert (
        "search: 2 dimension(s) (train.lr, train.batch_size), maximise eval_accuracy"
        in capsys.readouterr().err
    )


# ---- sampled values become recipes ------------------------------------------------------------------


def test_values_are_validated_and_the_trial_recipe_has_no_tune_section(classification_recipe):
    recipe = load_recipe(_with_tune(classification_recipe)).recipe
    trial = with_values(recipe, {"train.lr": 3e-3, "freeze": {"embeddings": True}})
    assert trial.train.lr == 3e-3 and trial.freeze.embeddings and trial.tune is None
    assert trial.train.batch_size == recipe.train.batch_size
    with pytest.raises(InvalidVariant, match="train.batch_size: Input should be greater than 0"):
        with_values(recipe, {"train.batch_size": 0})
    with pytest.raises(InvalidVariant, match="head_only"):  # the rules apply to variants too
        with_values(recipe, {"freeze.head_only": True, "freeze.embeddings": True})


def test_another_model_does_not_inherit_the_base_models_local_copies(classification_recipe):
    edit_recipe(
        classification_recipe,
        model={"config": None, "name_or_path": "org/base", "local_copies": ["/models/base"]},
    )
    recipe = load_recipe(classification_recipe).recipe
    trial = with_values(recipe, {"model.name_or_path": minilm_dir()})
    assert trial.model.name_or_path == minilm_dir()
    assert trial.model.local_copies == [] and trial.model.config is None and trial.model.tokenizer is None
    same = with_values(recipe, {"train.lr": 1e-3})
    assert same.model.local_copies == ["/models/base"]


def test_objective_defaults_to_the_tasks_main_metric_and_its_direction(classification_recipe, lm_recipe):
    assert objective(load_recipe(classification_recipe).recipe) == ("eval_accuracy", "max")
    assert objective(load_recipe(lm_recipe).recipe) == ("eval_perplexity", "min")
    assert objective(load_recipe(_with_tune(classification_recipe, metric="loss")).recipe) == (
        "eval_loss",
        "min",
    )


def test_optuna_space_round_trips_every_kind_of_value(classification_recipe):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from ftl.tune.space import decode, grid_size, optuna_space

    space = {
        "train.lr": {"loguniform": [1e-5, 1e-3]},
        "train.warmup_ratio": {"uniform": [0.0, 0.2], "step": 0.05},
        "freeze.bottom_layers": {"int": [0, 2]},
        "freeze.layers": {"choice": [[0], [0, 1]]},
        "freeze": {"choice": [{"embeddings": True}, {"head_only": True}]},
    }
    recipe = load_recipe(edit_recipe(classification_recipe, tune={"space": space})).recipe
    distributions = optuna_space(recipe.tune)
    assert distributions["train.lr"] == FloatDistribution(1e-5, 1e-3, log=True)
    assert distributions["train.warmup_ratio"] == FloatDistribution(0.0, 0.2, step=0.05)
    assert distributions["freeze.bottom_layers"] == IntDistribution(0, 2)
    assert isinstance(distributions["freeze"], CategoricalDistribution)
    labels = {
        key: d.choices[-1] for key, d in distributions.items() if isinstance(d, CategoricalDistribution)
    }
    values = decode(labels, recipe.tune)
    assert values == {"freeze.layers": [0, 1], "freeze": {"head_only": True}}
    with pytest.raises(ValueError):
        grid_size(recipe.tune)  # continuous dimensions have no grid
    grid = edit_recipe(
        classification_recipe,
        tune={"space": {"train.lr": {"grid": [1e-3, 1e-2]}, "freeze.bottom_layers": {"int": [0, 2]}}},
    )
    assert grid_size(load_recipe(grid).recipe.tune) == 6


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


# ---- checkpoints handed back by Tune ----------------------------------------------------------------


def _checkpoint(folder, step, best=None):
    folder.mkdir(parents=True)
    state = {"global_step": step, "best_model_checkpoint": best, "best_metric": 0.9 if best else None}
    (folder / "trainer_state.json").write_text(json.dumps(state))
    (folder / "model.safetensors").write_text(f"weights at {step}")


def test_adopted_checkpoint_replaces_newer_local_ones_and_forgets_a_foreign_best(tmp_path):
    from ftl.launcher.train.rundir import RunDir
    from ftl.tune.checkpoints import adopt_checkpoint

    run = RunDir(tmp_path / "trial")
    _checkpoint(run.checkpoints / "checkpoint-4", 4)
    _checkpoint(run.checkpoints / "checkpoint-8", 8)
    donor = tmp_path / "other" / "checkpoints" / "checkpoint-4"
    _checkpoint(donor, 4, best=str(donor))
    adopted = adopt_checkpoint(run, donor)
    assert adopted == run.checkpoints / "checkpoint-4"
    assert (adopted / "model.safetensors").read_text() == "weights at 4"
    assert not (run.checkpoints / "checkpoint-8").exists()
    assert json.loads((adopted / "trainer_state.json").read_text())["best_model_checkpoint"] is None
    assert run.last_checkpoint() == adopted
    assert adopt_checkpoint(run, adopted) == adopted  # its own checkpoint: nothing changes


def test_pbt_refresh_sets_the_new_lr_and_weight_decay_on_a_restored_optimizer():
    import torch
    from transformers import get_linear_schedule_with_warmup

    from ftl.tune.checkpoints import OptimizerSettingsRefresh

    weights = torch.nn.Parameter(torch.ones(2))
    bias = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW(
        [{"params": [weights], "weight_decay": 0.01}, {"params": [bias], "weight_decay": 0.0}], lr=1e-3
    )
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, 10)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    refresh = OptimizerSettingsRefresh(lr=4e-3, weight_decay=0.1)
    refresh.on_step_begin(None, None, None, optimizer=optimizer, lr_scheduler=scheduler)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([2e-3, 2e-3])  # 4e-3 x (1 - 5/10)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(4e-3 * 4 / 10)


def test_search_outputs_a_yaml_that_ftl_check_accepts(tmp_path, classification_recipe):
    """best.yaml is the full recipe: relative data paths are rewritten for its new directory."""
    from ftl.tune.results import TrialOutcome, write_best_recipe

    loaded = load_recipe(_with_tune(classification_recipe))
    best = TrialOutcome("abc", "completed", {"train.lr": 2e-3}, {"eval_accuracy": 0.75}, None)
    path = write_best_recipe(loaded, tmp_path / "elsewhere", best, "eval_accuracy", 4)
    data = yaml.safe_load(path.read_text())
    assert data["train"]["lr"] == 2e-3 and "tune" not in data
    assert (path.parent / data["data"]["train"]["path"]).resolve() == (
        classification_recipe.parent / "train.tsv"
    ).resolve()
    assert main(["check", "-q", str(path)]) == 0


def test_the_searcher_does_not_train_a_combination_twice():
    from optuna.distributions import CategoricalDistribution
    from optuna.samplers import RandomSampler

    from ftl.tune.resumable import ResumableOptunaSearch

    searcher = ResumableOptunaSearch(
        space={"train.lr": CategoricalDistribution([1e-3, 1e-2])},
        metric="m",
        mode="max",
        sampler=RandomSampler(seed=0),
    )
    first = searcher.suggest("a")
    searcher.on_trial_complete("a", {"m": 0.5, "training_iteration": 1})
    second = searcher.suggest("b")
    assert second != first  # the repeat was told the earlier result and the sampler asked again
    repeats = [t for t in searcher._ot_study.trials if "repeat_of" in t.user_attrs]
    assert all(t.value == 0.5 for t in repeats if t.state.name == "COMPLETE")
    searcher.on_trial_complete("b", {"m": 0.7, "training_iteration": 1})
    assert searcher.suggest("c") in (first, second)  # every combination tried: a repeat runs rather than none
    searcher.on_trial_result("c", {"m": 0.6, "training_iteration": 1})  # and it is a trial the study knows
    searcher.on_trial_complete("c", {"m": 0.6, "training_iteration": 1})
    assert len(searcher._ot_study.trials) <= 2 + 10 + 10


def test_a_resolved_recipe_with_tune_cv_loads_again(tmp_path, classification_recipe):
    """search.json/recipe.yaml hold every key expanded; the rules must accept what the loader wrote."""
    recipe = load_recipe(_with_tune(classification_recipe, cv={"folds": 3})).recipe
    assert recipe.tune.scheduler_type == "fifo" and recipe.tune.trial_resources.cpus == 1.0
    expanded = tmp_path / "expanded.yaml"
    expanded.write_text(yaml.safe_dump(recipe.model_dump(mode="json", exclude={"extends"})))
    assert load_recipe(expanded).recipe == recipe


def test_resuming_with_other_options_is_refused(tmp_path):
    from ftl.launcher.errors import FtlError
    from ftl.tune.tuner import SearchDir

    record = {"kind": "cv", "folds": {"folds": 5}, "recipe": {"name": "x"}}
    SearchDir.open(tmp_path / "cv", resume=False, record=record, verb="cross-validation")
    assert SearchDir.open(tmp_path / "cv", resume=True, record=record, verb="cross-validation")
    with pytest.raises(FtlError, match="--resume: folds differs from what"):
        SearchDir.open(tmp_path / "cv", resume=True, record={**record, "folds": {"folds": 10}}, verb="cv")
    with pytest.raises(FtlError, match="already holds files; pass --resume"):
        SearchDir.open(tmp_path / "cv", resume=False, record=record, verb="cv")


def test_an_unreachable_study_database_is_one_line_without_its_password(
    capsys, monkeypatch, tmp_path, classification_recipe
):
    monkeypatch.setenv("PGPASSWORD", "s3cret-password")  # the recipe's URL may not hold it (see the corpus)
    _with_tune(classification_recipe, storage="postgresql://ftl@127.0.0.1:9/studies")
    out = tmp_path / "s"
    message = fails(capsys, ["tune", str(classification_recipe), "--output", str(out)])
    assert (
        "tune.storage: cannot open the Optuna study storage postgresql://ftl@127.0.0.1:9/studies" in message
    )
    assert "s3cret" not in message and not out.exists()


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
