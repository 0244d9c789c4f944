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


def _dict_item(annotation: Any) -> Any:
    """The value annotation of a dict field whose values are sections (e.g. task.tasks), else None."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _dict_item(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            item = _dict_item(arg)
            if item is not None:
                return item
        return None
    args = typing.get_args(annotation)
    return args[1] if origin is dict and len(args) == 2 and _models_in(args[1]) else None


class _ListOf:
    """A list of sections (e.g. stages): keys below it are indexes."""

    def __init__(self, item: Any) -> None:
        self.item = item


class _DictOf:
    """A mapping of names to sections (e.g. task.tasks): keys below it are the names."""

    def __init__(self, item: Any) -> None:
        self.item = item


def _walk(root: type[BaseModel], path: tuple[Any, ...], data: dict[str, Any]) -> tuple[Any, Any]:
    """The model at `path` (a section, _ListOf, _DictOf, FREE_FORM or None) and the data there (or None)."""
    model: Any = root
    value: Any = data
    for key in path:
        if model is FREE_FORM:
            return FREE_FORM, None
        if isinstance(model, _ListOf):
            index = _index(key)
            if index is None:
                return None, None
            value = value[index] if isinstance(value, list) and 0 <= index < len(value) else None
            model = _pick(_models_in(model.item), value)
            continue
        if isinstance(model, _DictOf):
            value = value.get(key) if isinstance(value, dict) else None
            model = _pick(_models_in(model.item), value)
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None, None
        field = model.model_fields.get(str(key))
        if field is None:
            return None, None
        value = value.get(key) if isinstance(value, dict) else None
        item = _dict_item(field.annotation)
        if item is not None:
            model = _DictOf(item)
            continue
        if _is_free_form(field.annotation) and not _models_in(field.annotation):
            model = FREE_FORM
            continue
        item = _list_item(field.annotation)
        if item is not None and _models_in(item):
            model = _ListOf(item)
            continue
        model = _pick(_models_in(field.annotation), value)
    return model, value


def _index(key: Any) -> int | None:
    """A list index from a key: an int, or a string of digits (as a dotted key splits into)."""
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    if isinstance(key, str) and key.isascii() and key.isdigit():
        return int(key)
    return None


def model_at(root: type[BaseModel], path: tuple[Any, ...], data: dict[str, Any]) -> Any:
    """The section model at `path` (or FREE_FORM, or None when the path leaves the schema). Integer keys (or
    strings of digits) index lists of sections (e.g. stages.0)."""
    return _walk(root, path, data)[0]


def typed_key_path(root: type[BaseModel], parts: tuple[str, ...], data: dict[str, Any]) -> tuple[Any, ...]:
    """A dotted key's parts with the indexes of lists of sections as ints: ('stages', '0', 'x') -> ('stages',
    0, 'x')."""
    typed: list[Any] = []
    for part in parts:
        index = _index(part)
        typed.append(
            index if index is not None and isinstance(model_at(root, tuple(typed), data), _ListOf) else part
        )
    return tuple(typed)


def indexed_items(items: list[Any]) -> str:
    """'0 (mlm), 1 (classify)': a list's indexes, with the items' names where they have one."""
    named = [
        f"{i} ({item['name']})" if isinstance(item, dict) and "name" in item else str(i)
        for i, item in enumerate(items)
    ]
    return one_of(named)


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


def key_path_problem(root: type[BaseModel], path: tuple[Any, ...], data: dict[str, Any]) -> str | None:
    """Why `path` is not a key of the schema ('unknown key ... (did you mean ...)'), or None when it is."""
    for depth in range(1, len(path) + 1):
        parent, value = _walk(root, path[: depth - 1], data)
        if parent is FREE_FORM:
            return None
        if parent is None:
            return None  # the parent is a scalar or a list: pydantic reports the type error with context
        key = path[depth - 1]
        where = ".".join(map(str, path[: depth - 1])) or "the recipe"
        if isinstance(parent, _ListOf):
            items = value if isinstance(value, list) else []
            index = _index(key)
            if not items:
                return f"this recipe has no {where}, so there is no {where}.{key} to set; add {where} to the recipe file"
            named = [i for i, item in enumerate(items) if isinstance(item, dict) and item.get("name") == key]
            if index is None and named:
                rest = ".".join(map(str, path[depth:]))
                return (
                    f"{where} is a list, indexed by position: '{key}' is {where}.{named[0]}, so write "
                    f"{where}.{named[0]}{'.' + rest if rest else ''}"
                )
            if index is None:
                return (
                    f"{where} is a list; name one item by its index, e.g. {where}.0 "
                    f"(this recipe has {len(items)}: {indexed_items(items)})"
                )
            if index >= len(items):
                return (
                    f"{where}.{index} does not exist: this recipe has {len(items)} {where} "
                    f"({indexed_items(items)}); use an index from 0 to {len(items) - 1}"
                )
            continue
        if isinstance(parent, _DictOf):
            names = list(value) if isinstance(value, dict) else []
            if depth < len(path) and key not in names:
                return (
                    f"'{key}' is not one of {where}{did_you_mean(str(key), names)}; it has {one_of(names) or 'none'}"
                    f" (a new one needs its whole mapping: {where}.{key}={{...}})"
                )
            continue
        if key not in parent.model_fields:
            hint = did_you_mean(str(key), parent.model_fields)
            if not hint and isinstance(key, str) and key.replace("-", "_") in parent.model_fields:
                hint = f" (did you mean '{key.replace('-', '_')}'?)"
            return f"unknown key '{key}' in {where}{hint}; valid keys: {one_of(parent.model_fields)}"
    return None
