"""Safe YAML reading that remembers where every key came from (file and line).

`read_yaml` returns the plain data and a map from key path (tuple of keys/indexes) to `Origin`.
`merge` deep-merges a base onto a child (mappings merge, everything else is replaced) and merges
the origin maps the same way, so errors in an `extends:` chain point at the right file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ftl.launcher.errors import FtlError

KeyPath = tuple[Any, ...]


@dataclass(frozen=True)
class Origin:
    """Where a value was set: a file and line, or a command-line override."""

    file: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line is not None else self.file


def read_yaml(path: Path) -> tuple[dict[str, Any], dict[KeyPath, Origin]]:
    """Parse a YAML mapping safely; raise FtlError naming file:line on any problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FtlError(f"{path}: recipe file not found") from None
    except IsADirectoryError:
        raise FtlError(f"{path}: is a directory, expected a recipe .yaml file") from None
    except UnicodeDecodeError as exc:
        raise FtlError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise FtlError(f"{path}: cannot read the recipe ({exc.strerror or exc})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = exc.problem or exc.context or "invalid YAML"
        raise FtlError(f"{where}: invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise FtlError(f"{path}: invalid YAML: {exc}") from None
    if data is None:
        raise FtlError(f"{path}: the recipe is empty; it needs at least name, model, task and data")
    if not isinstance(data, dict):
        raise FtlError(f"{path}:1: a recipe must be a mapping of sections (name, model, task, data, ...)")
    origins: dict[KeyPath, Origin] = {}
    _walk(node, (), str(path), origins)
    return data, origins


def _walk(node: yaml.Node, prefix: KeyPath, file: str, origins: dict[KeyPath, Origin]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen:
                where = ".".join(map(str, prefix)) or "the top level"
                raise FtlError(
                    f"{file}:{line}: key '{key}' appears twice in {where} (first on line {seen[key]}); keep one"
                )
            seen[key] = line
            origins[(*prefix, key)] = Origin(file, line)
            _walk(value_node, (*prefix, key), file, origins)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            origins[(*prefix, index)] = Origin(file, item.start_mark.line + 1)
            _walk(item, (*prefix, index), file, origins)


def merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge: mappings merge key by key, the child's scalars and lists replace the base's."""
    merged = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def merge_origins(
    base: dict[KeyPath, Origin], child: dict[KeyPath, Origin], child_data: dict[str, Any]
) -> dict[KeyPath, Origin]:
    """Origins after `merge`: a child's non-mapping value hides everything the base had below it."""
    replaced = [path for path in child if not isinstance(_get(child_data, path), dict)]
    kept = {
        path: origin
        for path, origin in base.items()
        if not any(path[: len(r)] == r and len(path) > len(r) for r in replaced)
    }
    kept.update(child)
    return kept


def _get(data: Any, path: KeyPath) -> Any:
    for key in path:
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            return None
    return data
