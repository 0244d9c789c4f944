"""Odd recipes and overrides: each must be refused with one line naming the key and the fix, or accepted as
meant (staged overrides, free text, symlinks, booleans for numbers, runaway sizes)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

from ftl.launcher.errors import FtlError
from ftl.launcher.recipe import load_recipe
from tests.conftest import TINY_BERT, fails, minilm_dir, sentiment_rows, write_tsv


def _staged(folder: Path) -> Path:
    """A two-stage recipe (masked LM, then the classifier), each stage with its own task and train.lr."""
    write_tsv(folder / "train.tsv", sentiment_rows(60, seed=4))
    stage = {"train": {"max_steps": 2, "batch_size": 8, "lr": 1e-3}}
    recipe = {
        "name": "tapt",
        "model": {"config": TINY_BERT, "tokenizer": minilm_dir()},
        "data": {"train": "train.tsv", "validation_split": {"fraction": 0.2}},
        "stages": [
            {
                "name": "mlm",
                "task": {"type": "masked_lm", "text_column": "sentence", "max_length": 16},
                **stage,
            },
            {
                "name": "classify",
                "task": {"type": "sequence_classification", "text_column": "sentence", "labels": ["a", "b"]},
                **stage,
            },
        ],
    }
    path = folder / "staged.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _multitask(folder: Path, **sentiment) -> Path:
    write_tsv(folder / "train.tsv", sentiment_rows(60, seed=4))
    task = {"type": "sequence_classification", "text_column": "sentence", "labels": ["negative", "positive"]}
    data = {"train": "train.tsv", "validation_split": {"fraction": 0.2}}
    recipe = {
        "name": "mt",
        "model": {"config": TINY_BERT, "tokenizer": minilm_dir()},
        "task": {
            "type": "multitask",
            "tasks": {
                "sentiment": {"task": task, "data": data, **sentiment},
                "other": {"task": task, "data": data},
            },
        },
    }
    path = folder / "mt.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


# ---- 1. stages.N.key overrides (the staged recipe's stages share one train mapping through a YAML anchor:
# an override of one stage must not change the other) ------------------------------------------------------------------------------


def test_a_stage_key_is_overridden_by_index(tmp_path):
    loaded = load_recipe(_staged(tmp_path), ["stages.1.train.lr=3e-4", "stages.0.task.max_length=8"])
    assert loaded.stages[1].loaded.recipe.train.lr == 3e-4
    assert loaded.stages[0].loaded.recipe.train.lr == 1e-3
    assert loaded.stages[0].loaded.recipe.task.max_length == 8


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("stages.name=x", r"this recipe has no stages, so there is no stages.name to set"),
        ("stages.0.train.lr=1e-4", r"this recipe has no stages"),
    ],
)
def test_stage_overrides_on_an_unstaged_recipe_are_one_line(classification_recipe, override, message):
    with pytest.raises(FtlError, match=message):
        load_recipe(classification_recipe, [override])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "stages.5.train.lr=1e-4",
            r"stages.5 does not exist: this recipe has 2 stages \(0 \(mlm\), 1 \(classify\)\)",
        ),
        ("stages.classify.train.lr=1e-4", r"'classify' is stages.1, so write stages.1.train.lr"),
        ("stages.name=x", r"stages is a list; name one item by its index, e.g. stages.0"),
        ("stages.1.nam=x", r"unknown key 'nam' in stages.1 \(did you mean 'name'\?\)"),
        (
            "stages.0.train.lrr=1",
            r"command-line override 'stages.0.train.lrr=1'.*unknown key 'lrr'.*did you mean 'lr'",
        ),
        (
            "task.max_length=32",
            r"each stage gives its own task.*stages.N.task.max_length \(stages: 0 \(mlm\)",
        ),
        ("train.lr=1e-4", r"each stage sets its own train.lr.*stages.N.train.lr"),
        ("stages[0].train.lr=1e-4", r"did you mean stages.0.train.lr=1e-4\?"),
    ],
)
def test_bad_stage_overrides_are_one_line(tmp_path, override, message):
    with pytest.raises(FtlError, match=message):
        load_recipe(_staged(tmp_path), [override])


def test_a_shared_key_no_stage_sets_still_reaches_every_stage(tmp_path):
    loaded = load_recipe(_staged(tmp_path), ["train.warmup_ratio=0.2"])
    assert [plan.loaded.recipe.train.warmup_ratio for plan in loaded.stages] == [0.2, 0.2]


def test_stage_keys_in_a_search_space_or_matrix_do_not_crash(capsys, classification_recipe):
    line = fails(capsys, ["check", str(classification_recipe), "tune={space: {stages.a: [1]}}"])
    assert "tune.space.stages.a: not a recipe key: this recipe has no stages" in line
    line = fails(capsys, ["check", str(classification_recipe), "stages.name=x"])
    assert "no stages" in line


# ---- 2. upper bounds ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "limit"),
    [
        (f"train.batch_size={sys.maxsize * 10}", "1048576"),
        ("eval.batch_size=2000000", "1048576"),
        ("train.grad_accum_steps=99999999999", "1048576"),
        ("train.dataloader_workers=100000", "256"),
        ("train.epochs=1.0e+300", "1000000"),
        (f"train.log_every_steps={sys.maxsize * 10}", "2147483647"),
        (f"eval.every_steps={sys.maxsize * 10}", "2147483647"),
        (f"distributed.global_batch_size={sys.maxsize * 10}", "2147483647"),
        (f"distributed.workers={sys.maxsize * 10}", "65536"),
    ],
)
def test_runaway_sizes_are_refused_with_the_limit(classification_recipe, override, limit):
    key = override.partition("=")[0]
    with pytest.raises(FtlError, match=rf"{key}: Input should be less than or equal to {limit}"):
        load_recipe(classification_recipe, [override])


# ---- 3. booleans are not numbers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override", ["seed=true", "train.epochs=true", "train.batch_size=yes", "eval.every_steps=on"]
)
def test_booleans_are_refused_for_numbers(classification_recipe, override):
    key = override.partition("=")[0]
    with pytest.raises(FtlError, match=rf"{key}: expected a number, got the boolean"):
        load_recipe(classification_recipe, [override])


def test_a_boolean_in_the_file_names_the_line_of_its_key(classification_recipe):
    text = classification_recipe.read_text().replace("batch_size: 16", "batch_size: yes")
    classification_recipe.write_text(text)
    line = next(i for i, row in enumerate(text.splitlines(), start=1) if "batch_size: yes" in row)
    with pytest.raises(
        FtlError, match=rf"tiny-cls.yaml:{line}: train.batch_size: expected a number, got the boolean true"
    ):
        load_recipe(classification_recipe)


def test_max_grad_norm_off_says_null_unsets_it(classification_recipe):
    with pytest.raises(FtlError, match=r"train.max_grad_norm: expected a number.*\(or null to unset it\)"):
        load_recipe(classification_recipe, ["train.max_grad_norm=off"])


def test_real_booleans_and_numbers_still_load(classification_recipe):
    recipe = load_recipe(classification_recipe, ["train.gradient_checkpointing=yes", "seed=3"]).recipe
    assert recipe.train.gradient_checkpointing is True and recipe.seed == 3


# ---- 4. a recipe that is a symlink loop ------------------------------------------------------------------------


def test_a_recipe_symlink_loop_is_one_line(capsys, tmp_path):
    os.symlink("self.yaml", tmp_path / "self.yaml")
    line = fails(capsys, ["check", str(tmp_path / "self.yaml")])
    assert "self.yaml: cannot read the recipe" in line


# ---- 5. extends on the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize("override", ["extends=missing.yaml", "extends=[tiny-cls.yaml]"])
def test_extends_override_is_refused(classification_recipe, override):
    with pytest.raises(FtlError, match=r"extends can only be set in a recipe file"):
        load_recipe(classification_recipe, [override])


# ---- 6. free text for string keys ----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["lr sweep: smaller lr", "#1 baseline", "[draft] {x}", "3", "yes"])
def test_free_text_overrides_of_string_keys_keep_the_text(classification_recipe, text):
    assert load_recipe(classification_recipe, [f"description={text}"]).recipe.description == text


def test_a_prompt_template_that_is_not_valid_yaml_is_kept_as_text(lm_recipe):
    overrides = ["task.prompt_template=Question: {text} Answer:", "task.response_column=answer"]
    recipe = load_recipe(lm_recipe, [*overrides, "task.packing=examples"]).recipe
    assert recipe.task.prompt_template == "Question: {text} Answer:"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("freeze.patterns=['attention']", ["attention"]),
        ("freeze.patterns=[]", []),
        ("model.local_copies=[]", []),
    ],
)
def test_lists_of_strings_are_still_parsed_as_lists(classification_recipe, override, expected):
    recipe = load_recipe(classification_recipe, [override]).recipe
    key, _ = override.split("=", 1)
    section, field = key.split(".")
    assert getattr(getattr(recipe, section), field) == expected


def test_null_still_unsets_an_optional_string(classification_recipe):
    recipe = load_recipe(classification_recipe, ["eval.metric=null"]).recipe
    assert recipe.eval.metric is None


def test_free_text_name_gets_the_name_rule_not_a_yaml_type(classification_recipe):
    with pytest.raises(FtlError, match=r"name: String should match pattern.*got '#1 baseline'"):
        load_recipe(classification_recipe, ["name=#1 baseline"])


# ---- 7. hints ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "meant"),
    [("train.max-steps=3", "train.max_steps=3"), ("train.lr =1", "train.lr=1")],
)
def test_near_miss_override_syntax_suggests_the_key(classification_recipe, override, meant):
    with pytest.raises(FtlError, match=rf"expected KEY=VALUE.*\(did you mean {meant}\?\)"):
        load_recipe(classification_recipe, [override])


def test_a_multitask_subtask_typo_lists_its_keys(tmp_path):
    path = _multitask(tmp_path, lossweight=2)
    with pytest.raises(
        FtlError,
        match=r"unknown key 'lossweight' in task.tasks.sentiment \(did you mean 'loss_weight'\?\); valid keys: task, data, loss_weight$",
    ):
        load_recipe(path)
    path = _multitask(tmp_path)
    with pytest.raises(
        FtlError, match=r"did you mean 'loss_weight'\?\); valid keys: task, data, loss_weight$"
    ):
        load_recipe(path, ["task.tasks.sentiment.lossweight=2"])


def test_an_unknown_multitask_subtask_names_the_tasks(tmp_path):
    path = _multitask(tmp_path)
    with pytest.raises(
        FtlError,
        match=r"'sentimnt' is not one of task.tasks \(did you mean 'sentiment'\?\); it has sentiment, other",
    ):
        load_recipe(path, ["task.tasks.sentimnt.loss_weight=2"])
    assert (
        load_recipe(path, ["task.tasks.sentiment.loss_weight=2"]).recipe.task.tasks["sentiment"].loss_weight
        == 2
    )


# ---- 9. staged recipes where a whole-recipe command cannot take them; multitask names; loss bounds -------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["cv", "{recipe}", "--folds", "2"], "ftl cv: a staged recipe cannot be cross-validated as a whole"),
        (
            ["bench", "{recipe}", "--steps", "1"],
            "ftl bench: a staged recipe cannot be benchmarked as a whole",
        ),
    ],
)
def test_commands_that_cannot_take_a_staged_recipe_say_so(capsys, tmp_path, argv, message):
    recipe = _staged(tmp_path)
    argv = [a.replace("{recipe}", str(recipe)) for a in argv]
    assert message in fails(capsys, [*argv, "--output", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_a_multitask_sub_task_named_like_a_module_attribute_is_one_line(tmp_path, capsys):
    from tests.test_multitask import _recipe

    path = _recipe(tmp_path)
    recipe = yaml.safe_load(path.read_text())
    recipe["task"]["tasks"] = {
        "eval": recipe["task"]["tasks"]["sentiment"],
        "ner": recipe["task"]["tasks"]["ner"],
    }
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    assert "task.tasks.eval: 'eval' cannot name a sub-task" in fails(capsys, ["check", str(path)])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("task.beta=1e-300", "task.beta"),
        ("task.beta=1e30", "task.beta"),
        ("task.simpo_gamma=1e30", "task.simpo_gamma"),
    ],
)
def test_preference_loss_settings_past_any_use_are_refused(override, key, tmp_path, chat_tokenizer_dir):
    from tests.conftest import write_preference_recipe

    path = write_preference_recipe(tmp_path, chat_tokenizer_dir)
    with pytest.raises(FtlError, match=rf"{key}: Input should be"):
        load_recipe(path, [override])
    with pytest.raises(FtlError, match=r"task.label_smoothing: Input should be less than or equal to 0.45"):
        load_recipe(path, ["task.loss=robust", "task.label_smoothing=0.4999999999"])


def test_a_metric_computed_only_after_training_is_named_as_such():
    from ftl.launcher.recipe.catalogue import not_produced
    from ftl.launcher.recipe.tasks import ChatTask, SequenceClassificationTask

    message = not_produced(ChatTask(type="chat"), "rouge1")
    assert message.startswith("task chat computes 'rouge1' once, after training, from its task.generate_rows")
    assert message.endswith("use perplexity, loss")
    classifier = SequenceClassificationTask(type="sequence_classification")
    assert "does not produce 'acuracy' (did you mean 'accuracy'?)" in not_produced(classifier, "acuracy")


def test_legitimate_zeros_and_tracker_uris_stay_accepted():
    """Token ids of 0 and a sliding window of 0 are not sizes; MLflow's databricks-uc and SageMaker ARNs are
    stores it reads (the checks above must not refuse what real configs and trackers use)."""
    from transformers import LlamaConfig

    from ftl.launcher.model.config_values import check_config_values
    from ftl.launcher.recipe.log import MlflowSettings
    from ftl.launcher.recipe.schema import ModelSection

    settings = {"model_type": "llama", "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
    check_config_values(
        LlamaConfig(**{k: v for k, v in settings.items() if k != "model_type"}), ModelSection(config=settings)
    )
    for uri in (
        "databricks-uc://profile",
        "arn:aws:sagemaker:eu-west-1:123:mlflow-tracking-server/x",
        "http://h:5000",
    ):
        assert MlflowSettings(tracking_uri=uri).tracking_uri == uri
