"""Walking the recipe schema by dotted key paths (for overrides and for error messages)."""

from __future__ import annotations

import types
import typing
from typing import Any, Union

from pydantic import BaseModel

from ftl.launcher.errors import FtlError, did_you_mean, one_of
from ftl.launcher.recipe.tasks import TASK_TYPES

FREE_FORM = object()  # a dict[str, Any] field: any key is allowed below it


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (unwrapping Optional, Union, Annotated)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _models_in(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        found: list[type[BaseModel]] = []
        for arg in typing.get_args(annotation):
            found.extend(_models_in(arg))
        return found
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def _is_free_form(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _is_free_form(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return any(_is_free_form(a) for a in typing.get_args(annotation))
    return origin is dict or annotation is dict


def _pick(models: list[type[BaseModel]], value: Any) -> type[BaseModel] | None:
    """Choose the union member for `value`, by its `type` tag when the members are tagged."""
    if len(models) == 1:
        return models[0]
    tag = value.get("type") if isinstance(value, dict) else None
    for model in models:
        annotation = model.model_fields.get("type")
        if annotation is not None and tag in typing.get_args(annotation.annotation):
            return model
    return None


def _list_item(annotation: Any) -> Any:
    """The item annotation of a list field (unwrapping Optional), else None."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            item = _list_item(arg)
            if item is not None:
                return item
        return None
    return typing.get_args(annotation)[0] if origin is list and typing.get_args(annotation) else None


class _ListOf:
    def __init__(self, item: Any) -> None:
        self.item = item


def model_at(root: type[BaseModel], path: tuple[Any, ...], data: dict[str, Any]) -> Any:
    """The section model at `path` (or FREE_FORM, or None when the path leaves the schema). Integer keys index
    lists of sections (e.g. stages.0)."""
    model: Any = root
    value: Any = data
    for key in path:
        if model is FREE_FORM:
            return FREE_FORM
        if isinstance(model, _ListOf):
            if not isinstance(key, int):
                return None
            value = value[key] if isinstance(value, list) and -len(value) <= key < len(value) else None
            model = _pick(_models_in(model.item), value)
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(str(key))
        if field is None:
            return None
        value = value.get(key) if isinstance(value, dict) else None
        if _is_free_form(field.annotation) and not _models_in(field.annotation):
            model = FREE_FORM
            continue
        item = _list_item(field.annotation)
        if item is not None and _models_in(item):
            model = _ListOf(item)
            continue
        model = _pick(_models_in(field.annotation), value)
    return model


def dotted_key(loc: tuple[Any, ...]) -> str:
    """('stages', 0, 'train', 'lr') -> 'stages[0].train.lr'."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def display_path(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """A pydantic error location without union tags, e.g. ('task', 'causal_lm', 'x') -> ('task', 'x')."""
    shown: list[Any] = []
    for index, part in enumerate(loc):
        if index > 0 and loc[index - 1] == "task" and part in TASK_TYPES:
            continue
        if isinstance(part, str) and ("[" in part or part.startswith("function-")):
            continue  # pydantic internals such as 'list[str]' or 'function-after[...]'
        shown.append(part)
    return tuple(shown)


def check_key_path(root: type[BaseModel], path: tuple[str, ...], data: dict[str, Any], what: str) -> None:
    """Raise FtlError when `path` is not a key of the schema, suggesting the closest valid key."""
    problem = key_path_problem(root, path, data)
    if problem is not None:
        raise FtlError(f"{what}: {problem}")


def key_path_problem(root: type[BaseModel], path: tuple[str, ...], data: dict[str, Any]) -> str | None:
    """Why `path` is not a key of the schema ('unknown key ... (did you mean ...)'), or None when it is."""
    for depth in range(1, len(path) + 1):
        parent = model_at(root, path[: depth - 1], data)
        if parent is FREE_FORM:
            return None
        if parent is None:
            return None  # the parent is a scalar or a list: pydantic reports the type error with context
        key = path[depth - 1]
        if key not in parent.model_fields:
            where = ".".join(path[: depth - 1]) or "the recipe"
            hint = did_you_mean(key, parent.model_fields)
            return f"unknown key '{key}' in {where}{hint}; valid keys: {one_of(parent.model_fields)}"
    return None
