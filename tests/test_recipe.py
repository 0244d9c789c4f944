"""The recipe schema, YAML loading, extends, overrides and the JSON Schema."""

from __future__ import annotations

import json

import pytest
import yaml

from ftl.launcher.errors import FtlError
from ftl.launcher.recipe import load_recipe
from ftl.launcher.recipe.schema import Recipe


def test_repository_recipes_validate():
    from tests.conftest import REPO

    for path in sorted((REPO / "recipes").glob("*.yaml")):
        loaded = load_recipe(path)
        assert loaded.recipe.name


def test_defaults_are_filled_and_overrides_are_typed(classification_recipe):
    loaded = load_recipe(
        classification_recipe,
        [
            "train.lr=3e-5",
            "data.max_train_rows=50",
            "name=123",
            "freeze.layers=[0, '1-1']",
            "train.max_grad_norm=null",
        ],
    )
    recipe = loaded.recipe
    assert recipe.train.lr == pytest.approx(3e-5) and isinstance(recipe.train.lr, float)
    assert recipe.data.max_train_rows == 50
    assert recipe.name == "123"  # a string field keeps the override as text
    assert recipe.freeze.layers == [0, "1-1"]
    assert recipe.train.max_grad_norm is None
    assert recipe.train.scheduler == "linear" and recipe.eval.select_best is True


def test_override_origin_is_named_in_errors(classification_recipe):
    with pytest.raises(FtlError, match=r"command-line override 'train.batch_size=0'.*greater than 0"):
        load_recipe(classification_recipe, ["train.batch_size=0"])


def test_extends_merges_sections_and_reports_the_right_file(tmp_path, classification_recipe):
    child = tmp_path / "child.yaml"
    child.write_text(f"extends: {classification_recipe.name}\nname: child\ntrain:\n  lr: 0.5\n")
    recipe = load_recipe(child).recipe
    assert recipe.name == "child"
    assert recipe.train.lr == 0.5 and recipe.train.batch_size == 16  # merged, not replaced
    bad = tmp_path / "bad-child.yaml"
    bad.write_text(f"extends: {classification_recipe.name}\ntrain:\n  lr: 0.5\n  epochz: 3\n")
    with pytest.raises(
        FtlError, match=r"bad-child.yaml:4: unknown key 'epochz' in train \(did you mean 'epochs'\?\)"
    ):
        load_recipe(bad)


def test_errors_point_at_the_line_of_the_key(tmp_path, classification_recipe):
    data = yaml.safe_load(classification_recipe.read_text())
    data["train"]["scheduler"] = "cosin"
    text = yaml.safe_dump(data, sort_keys=False)
    path = tmp_path / "r.yaml"
    path.write_text(text)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "scheduler" in row)
    with pytest.raises(
        FtlError, match=rf"r.yaml:{line}: train.scheduler: 'cosin' is not allowed \(did you mean 'cosine'\?\)"
    ):
        load_recipe(path)


def test_yaml_tags_are_refused_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(FtlError, match="invalid YAML"):
        load_recipe(path)


def test_json_schema_is_complete_and_strict():
    schema = Recipe.model_json_schema()
    assert schema["additionalProperties"] is False
    for section in ("model", "task", "data", "freeze", "train", "eval", "log"):
        assert section in schema["properties"]
    train = schema["$defs"]["TrainSection"]
    assert train["additionalProperties"] is False and "lr" in train["properties"]
    assert train["properties"]["lr"]["description"]
    json.dumps(schema)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.warmup_steps=5"], "either warmup_steps or warmup_ratio"),
        (["train.checkpoint_every_steps=7"], "not a multiple of eval.every_steps"),
        (["freeze.head_only=true", "freeze.embeddings=true"], "head_only already freezes"),
        (
            ["train.early_stopping={patience: 2}", "eval.select_best=false"],
            "early stopping needs eval.select_best",
        ),
    ],
)
def test_rules_catalogue_rejects_incompatible_settings(classification_recipe, overrides, message):
    with pytest.raises(FtlError, match=message):
        load_recipe(classification_recipe, overrides)
