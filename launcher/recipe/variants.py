"""Variants of a recipe: the same recipe with some dotted keys set (a search trial, a fold), validated again.

Every variant goes through the schema and the rules, so a sampled value that the recipe would not accept
fails before its trial starts, with one line naming the key.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import ValidationError

from ftl.launcher.errors import FtlError
from ftl.launcher.recipe import rulebook
from ftl.launcher.recipe.keypaths import display_path
from ftl.launcher.recipe.schema import Recipe
from ftl.launcher.recipe.yaml_source import merge

# A different model does not inherit where the base model's files were, or how to build it.
_MODEL_IDENTITY = ("local_copies", "gguf_file", "config", "revision", "tokenizer")


class InvalidVariant(FtlError):
    """A value that the recipe's schema or rules reject."""


def with_values(base: Recipe, values: dict[str, Any]) -> Recipe:
    """`base` as one run (no tune section), each dotted key set to its value (mappings merge into sections)."""
    data = base.model_dump(mode="json", exclude={"extends", "tune"})
    for key, value in values.items():
        _set(data, key.split("."), value)
    _forget_base_model(data, values)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(map(str, display_path(tuple(error["loc"])))) or "the recipe"
        raise InvalidVariant(f"{where}: {error['msg'].removeprefix('Value error, ')}") from None
    for key_path, message in rulebook.violations(recipe):
        raise InvalidVariant(f"{'.'.join(map(str, key_path))}: {message}")
    return recipe


def objective(recipe: Recipe) -> tuple[str, str]:
    """The search objective as trials report it (eval_<metric>) and its direction (min or max)."""
    tune = recipe.tune
    task = recipe.task
    name = (tune.metric if tune and tune.metric else recipe.eval.metric or task.main_metric).removeprefix(
        "eval_"
    )
    mode = tune.mode if tune and tune.mode else task.metrics.get(name, "max")
    return f"eval_{name}", mode


def check_space(recipe: Recipe, where: str) -> None:
    """Every choice and both bounds of every range must give a valid recipe (checked before any trial)."""
    if recipe.tune is None:
        return
    for key, dimension in recipe.tune.space.items():
        for value in dimension.edge_values():
            try:
                with_values(recipe, {key: value})
            except InvalidVariant as exc:
                shown = "value" if dimension.kind in ("choice", "grid") else "bound"
                raise FtlError(
                    f"{where}: tune.space.{key}: {dimension.kind} {shown} {value!r} gives an invalid recipe: {exc}"
                ) from None


def _set(data: dict[str, Any], path: list[str], value: Any) -> None:
    target = data
    for key in path[:-1]:
        child = target.get(key)
        if not isinstance(child, dict):
            child = target[key] = {}
        target = child
    leaf = path[-1]
    another_task = (
        path == ["task"]
        and isinstance(value, dict)
        and value.get("type") not in (None, (target.get(leaf) or {}).get("type"))
    )
    if isinstance(value, dict) and isinstance(target.get(leaf), dict) and not another_task:
        target[leaf] = merge(target[leaf], copy.deepcopy(value))  # (a task of another type replaces the task)
    else:
        target[leaf] = copy.deepcopy(value)


def _forget_base_model(data: dict[str, Any], values: dict[str, Any]) -> None:
    """Setting model.name_or_path names another model: the base model's copies and settings do not apply."""
    given: set[str] = set()
    for key, value in values.items():
        if key.startswith("model."):
            given.add(key.removeprefix("model.").split(".")[0])
        elif key == "model" and isinstance(value, dict):
            given.update(value)
    if "name_or_path" not in given:
        return
    for field in _MODEL_IDENTITY:
        if field not in given:
            data["model"][field] = [] if field == "local_copies" else None
