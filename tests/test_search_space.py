"""The tune: section without Ray: bad spaces fail in one line before any trial, sampled values become
recipes."""

from __future__ import annotations

import pytest

from ftl.launcher.cli import main
from ftl.launcher.recipe import load_recipe
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
        (
            {"lora.r": [4, 8]},
            "tune.space.lora.r: the recipe has no lora section, so every trial would train LoRA adapters instead",
        ),
        (
            {"task.type": ["sequence_classification", "masked_lm"]},
            "tune.space.task.type: cannot be searched: each task type has its own keys; search whole tasks",
        ),
    ],
)
def test_bad_space_is_one_line_before_any_trial(capsys, tmp_path, classification_recipe, space, expected):
    edit_recipe(classification_recipe, tune={"space": space})
    out = tmp_path / "search"
    message = fails(capsys, ["tune", str(classification_recipe), "--output", str(out)])
    assert expected.split(" (did you mean")[0] in message, message
    assert not out.exists()


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        (
            {"data.max_train_rows": {"int": [1, 100]}},
            "tune.space.data.max_train_rows: with 1, data.max_train_rows: cannot keep label ratios",
        ),
        (
            {"task.max_length": {"choice": [16, 4096]}},
            "tune.space.task.max_length: with 4096, task.max_length",
        ),
        ({"task.text_column": ["sentence", "sentense"]}, "tune.space.task.text_column: with 'sentense', "),
    ],
)
def test_values_that_meet_the_data_or_model_badly_are_one_line_before_any_trial(
    capsys, tmp_path, classification_recipe, space, expected
):
    edit_recipe(classification_recipe, tune={"space": space, "samples": 1})
    out = tmp_path / "search"
    message = fails(capsys, ["tune", str(classification_recipe), "--output", str(out)])
    assert expected in message, message
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


def test_a_whole_task_of_another_type_replaces_the_task(classification_recipe):
    """tune.space.task: {choice: [{type: ...}, ...]} (what the task.type refusal advises) compares task types; a
    task of the same type (or without one) still merges into the recipe's."""
    base = load_recipe(classification_recipe).recipe
    other = with_values(base, {"task": {"type": "masked_lm", "text_column": "sentence", "max_length": 16}})
    assert other.task.type == "masked_lm" and other.task.max_length == 16
    same = with_values(base, {"task": {"max_length": 16}})
    assert same.task.type == "sequence_classification" and same.task.labels == ["negative", "positive"]
