"""Recipe files -> a validated `Recipe`: `extends:` chains, KEY=VALUE overrides, located errors, rules."""

from __future__ import annotations

import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ftl.launcher.errors import FtlError, did_you_mean, one_of
from ftl.launcher.recipe import rulebook
from ftl.launcher.recipe.keypaths import (
    check_key_path,
    display_path,
    dotted_key,
    indexed_items,
    key_path_problem,
    model_at,
    typed_key_path,
)
from ftl.launcher.recipe.schema import Recipe
from ftl.launcher.recipe.section import BOOL_FOR_NUMBER
from ftl.launcher.recipe.stages import STAGE_SECTIONS, StageSection, stage_data, stage_origins
from ftl.launcher.recipe.tasks import TASK_TYPES
from ftl.launcher.recipe.yaml_source import KeyPath, Origin, merge, merge_origins, read_yaml
from ftl.launcher.secrets import find_secret

_OVERRIDE = re.compile(
    r"^(?P<key>[A-Za-z_][A-Za-z0-9_]*(\.([A-Za-z_][A-Za-z0-9_]*|[0-9]+))*)=(?P<value>.*)$", re.S
)
_YAML_NULLS = ("null", "Null", "NULL", "~")
_MAX_EXTENDS_DEPTH = 16


@dataclass
class StagePlan:
    """One stage of a staged recipe: its settings and its own complete, validated recipe."""

    stage: StageSection
    loaded: LoadedRecipe


@dataclass
class LoadedRecipe:
    """A validated recipe plus where it came from (for relative paths and error messages)."""

    recipe: Recipe
    path: Path
    origins: dict[KeyPath, Origin] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    dirs: list[Path] | None = None  # fixed search directories (a recipe shipped to a worker has no origins)
    stages: list[StagePlan] = field(default_factory=list)  # a staged recipe's stages, each a complete recipe

    def portable(self) -> PortableRecipe:
        """This recipe as plain data for another process (a Ray Train worker, a search trial, a fold)."""
        return PortableRecipe(
            recipe=self.recipe.model_dump(mode="json", exclude={"extends"}),
            path=str(self.path.resolve()),
            dirs=[str(d.resolve()) for d in self.search_dirs],
        )

    @property
    def search_dirs(self) -> list[Path]:
        """Directories of the recipe and of every file it extends (for relative data/model paths)."""
        if self.dirs is not None:
            return list(self.dirs)
        dirs: list[Path] = []
        for origin in [Origin(str(self.path)), *self.origins.values()]:
            if origin.line is None and origin.file != str(self.path):
                continue
            directory = Path(origin.file).resolve().parent
            if directory not in dirs:
                dirs.append(directory)
        return dirs


@dataclass(frozen=True)
class PortableRecipe:
    """A loaded recipe as plain data that pickles anywhere: the validated recipe (JSON), the recipe file's
    absolute path, and the directories its relative paths are found in. `load` validates it again there."""

    recipe: dict[str, Any]
    path: str
    dirs: list[str]

    def load(self, recipe: Recipe | None = None) -> LoadedRecipe:
        """The LoadedRecipe again; with `recipe`, that recipe (a trial's variant) read from the same place."""
        return LoadedRecipe(
            recipe=recipe if recipe is not None else Recipe.model_validate(self.recipe),
            path=Path(self.path),
            dirs=[Path(d) for d in self.dirs],
        )


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> LoadedRecipe:
    """Read, merge, override, validate and rule-check a recipe. Raises FtlError on any user mistake."""
    path = Path(path)
    data, origins = _read_with_extends(path, chain=())
    data.pop("extends", None)
    origins = {k: v for k, v in origins.items() if k[:1] != ("extends",)}
    for override in overrides:
        _apply_override(data, origins, override)
    _refuse_secrets(data, origins, path)
    recipe = validate(data, origins, path)
    if recipe.stages is not None:
        return LoadedRecipe(
            recipe=recipe,
            path=path,
            origins=origins,
            overrides=list(overrides),
            stages=_stages(recipe, data, origins, path, list(overrides)),
        )
    _check_rules(recipe, origins, path)
    return LoadedRecipe(recipe=recipe, path=path, origins=origins, overrides=list(overrides))


def _check_rules(recipe: Recipe, origins: dict[KeyPath, Origin], path: Path) -> None:
    for key_path, message in rulebook.violations(recipe):
        raise FtlError(f"{where(origins, key_path, path)}: {dotted_key(key_path)}: {message}")
    if (
        recipe.task is not None and recipe.task.type == "multitask"
    ):  # each task as the single-task recipe it is
        for name, sub in recipe.task.tasks.items():
            evaluation = recipe.eval.model_copy(
                update={"metric": None}
            )  # the multitask objective, checked above
            single = recipe.model_copy(
                update={"task": sub.task, "data": sub.data, "tune": None, "eval": evaluation}
            )
            for key_path, message in rulebook.violations(single):
                if key_path[0] in ("task", "data"):
                    key_path = ("task", "tasks", name, *key_path)
                raise FtlError(f"{where(origins, key_path, path)}: {dotted_key(key_path)}: {message}")


def _stages(
    recipe: Recipe, data: dict[str, Any], origins, path: Path, overrides: list[str]
) -> list[StagePlan]:
    """Each stage as a complete recipe (validated, rules checked), and init_from naming earlier stages."""
    plans: list[StagePlan] = []
    for index, stage in enumerate(recipe.stages or []):
        at = where(origins, ("stages", index), path)
        names = [plan.stage.name for plan in plans]
        if stage.name in names:
            raise FtlError(
                f"{at}: stages[{index}].name: '{stage.name}' is already a stage; names must be unique"
            )
        if stage.init_from not in ("previous", "base", *names):
            raise FtlError(
                f"{where(origins, ('stages', index, 'init_from'), path)}: stages[{index}].init_from: "
                f"'{stage.init_from}' is not previous, base or an earlier stage{did_you_mean(stage.init_from, names)}"
                f"; earlier stages: {one_of(names) or 'none'}"
            )
        stage_data_ = stage_data(data, data["stages"][index], stage.name)
        stage_origins_ = stage_origins(origins, index)
        if stage_data_.get("tune") is not None:
            raise FtlError(
                f"{where(origins, ('tune',), path)}: tune: a staged recipe cannot be searched as a whole; "
                "search one stage's recipe instead"
            )
        try:
            stage_recipe = validate(stage_data_, stage_origins_, path)
            _check_rules(stage_recipe, stage_origins_, path)
        except FtlError as exc:
            if "stages[" in str(exc):
                raise
            at, _, said = str(exc).partition(": ") if _LOCATED.match(str(exc)) else ("", "", str(exc))
            raise FtlError(f"{at + ': ' if at else ''}stages[{index}] ({stage.name}): {said}") from None
        _check_starting_model(plans, index, data["stages"][index], stage.init_from, origins, path)
        plans.append(StagePlan(stage, LoadedRecipe(stage_recipe, path, stage_origins_, overrides)))
    return plans


_LOCATED = re.compile(r"^[^:]+\.ya?ml(:\d+)?: ")  # a message that starts with the recipe's file[:line]


# the model keys a stage that starts from an earlier stage's model does not read (launcher/train/stages.py)
STARTING_MODEL_KEYS = ("name_or_path", "local_copies", "gguf_file", "config", "tokenizer", "revision")


def _check_starting_model(
    plans: list[StagePlan], index: int, raw_stage: dict[str, Any], init_from: str, origins, path: Path
) -> None:
    """A stage that starts from an earlier stage's model: that stage must leave a whole model (not LoRA
    adapters), and the stage's own model section must not name another model (it would be ignored)."""
    if init_from == "base" or (init_from == "previous" and index == 0):
        return
    source = (
        plans[index - 1] if init_from == "previous" else next(p for p in plans if p.stage.name == init_from)
    )
    name = source.stage.name
    if source.loaded.recipe.lora is not None:
        raise FtlError(
            f"{where(origins, ('stages', index, 'init_from'), path)}: stages[{index}].init_from: stage '{name}' "
            f"trains LoRA adapters, not a whole model; start this stage from base, or train stage '{name}' "
            "without lora"
        )
    own = raw_stage.get("model") if isinstance(raw_stage.get("model"), dict) else {}
    named = [key for key in STARTING_MODEL_KEYS if own.get(key) not in (None, [])]
    if named:
        key_path = ("stages", index, "model", named[0])
        raise FtlError(
            f"{where(origins, key_path, path)}: stages[{index}].model.{named[0]}: this stage starts from stage "
            f"'{name}''s model (init_from: {init_from}), so it would be ignored; set stages[{index}].init_from: "
            f"base to train this model, or remove it"
        )


def _refuse_secrets(data: dict[str, Any], origins: dict[KeyPath, Origin], path: Path) -> None:
    """Recipes are written to run directories, printed and shipped with jobs: no passwords or tokens in them."""
    found = find_secret(data)
    if found is not None:
        key_path, why = found
        raise FtlError(f"{where(origins, key_path, path)}: {dotted_key(key_path)}: {why}")


def validate(data: dict[str, Any], origins: dict[KeyPath, Origin], path: Path) -> Recipe:
    """Validate raw data against the schema; the first problem becomes a one-line FtlError."""
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        message = _describe(_most_specific(errors), data, origins, path)
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        raise FtlError(message) from None


def _most_specific(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """The first error, or, when every error is about the same key (the branches of a union such as
    class_weights: 'balanced' | a list), the one that reached deepest into the value: it names the problem."""
    first = tuple(errors[0]["loc"])
    same_key = [e for e in errors if tuple(e["loc"][: len(first) - 1]) == first[:-1]]
    if len(same_key) == len(errors) > 1:
        return max(errors, key=lambda e: len(e["loc"]))
    return errors[0]


def where(origins: dict[KeyPath, Origin], key_path: KeyPath, path: Path) -> str:
    """The origin of key_path or of its closest ancestor that has one."""
    for depth in range(len(key_path), 0, -1):
        origin = origins.get(tuple(key_path[:depth]))
        if origin is not None:
            return str(origin)
    return str(path)


def _read_with_extends(path: Path, chain: tuple[Path, ...]) -> tuple[dict[str, Any], dict[KeyPath, Origin]]:
    try:
        resolved = path.resolve(strict=False)
    except (RuntimeError, OSError) as exc:  # a symlink loop: RuntimeError before Python 3.13, OSError after
        raise FtlError(
            f"{path}: cannot read the recipe: a symlink loop ({_reason(exc)}); point it at a file"
        ) from None
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise FtlError(f"{path}: extends forms a cycle ({cycle}); remove one of the extends")
    if len(chain) > _MAX_EXTENDS_DEPTH:
        raise FtlError(f"{path}: extends is nested more than {_MAX_EXTENDS_DEPTH} levels deep")
    data, origins = read_yaml(path)
    bases = data.get("extends")
    if bases is None:
        return data, origins
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise FtlError(f"{origins[('extends',)]}: extends must be a file name or a list of file names")
    merged: dict[str, Any] = {}
    merged_origins: dict[KeyPath, Origin] = {}
    for index, base in enumerate(bases):
        base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
        if not base_path.is_file():
            line = origins.get(("extends", index), origins[("extends",)])
            if base_path.is_dir():
                raise FtlError(
                    f"{line}: extends: base recipe '{base}' is a directory ({base_path}); name a .yaml file"
                )
            raise FtlError(f"{line}: extends: base recipe '{base}' not found (looked at {base_path})")
        base_data, base_origins = _read_with_extends(base_path, (*chain, resolved))
        base_data.pop("extends", None)
        merged_origins = merge_origins(merged_origins, base_origins, base_data)
        merged = merge(merged, base_data)
    child = {k: v for k, v in data.items() if k != "extends"}
    return merge(merged, child), merge_origins(merged_origins, origins, child)


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _apply_override(data: dict[str, Any], origins: dict[KeyPath, Origin], override: str) -> None:
    match = _OVERRIDE.match(override)
    if not match:
        raise FtlError(f"override '{override}': {_unparsed_override(override, data)}")
    what = f"override '{override}'"
    key_path = typed_key_path(Recipe, tuple(match["key"].split(".")), data)
    if key_path[0] == "extends":
        raise FtlError(
            f"{what}: extends can only be set in a recipe file (it is read before overrides); write a small "
            "recipe with extends: [the base, ...] instead"
        )
    _refuse_shared_key_of_stages(data, key_path, what)
    check_key_path(Recipe, key_path, data, what)
    value = _typed_value(match["value"], key_path, data, what)
    target: Any = data
    for depth, key in enumerate(key_path[:-1]):
        child = target[key] if isinstance(target, list) else target.get(key)
        if child is None:
            child = target[key] = {}
        elif not isinstance(child, dict) and not (
            isinstance(child, list) and isinstance(key_path[depth + 1], int)
        ):
            prefix = ".".join(map(str, key_path[: depth + 1]))
            raise FtlError(f"{what}: {prefix} is a single value, not a section; set {prefix}=VALUE instead")
        else:  # a copy: a YAML alias (*anchor) shares the section with other keys the override must not change
            child = target[key] = type(child)(child)
        target = child
    target[key_path[-1]] = value
    origin = Origin(f"command-line {what}")
    for existing in [p for p in origins if p[: len(key_path)] == key_path]:
        del origins[existing]
    origins[key_path] = origin


def _unparsed_override(override: str, data: dict[str, Any]) -> str:
    """Why an override is not KEY=VALUE, with the override it was probably meant to be."""
    expected = "expected KEY=VALUE with a dotted key, e.g. train.lr=3e-5 or data.max_train_rows=500"
    key, equals, value = override.partition("=")
    if not equals:
        return expected
    guess = re.sub(r"\[(\d+)\]", r".\1", key.strip()).replace("-", "_").replace(" ", "")
    if guess != key and _OVERRIDE.match(f"{guess}={value}"):
        parts = typed_key_path(Recipe, tuple(guess.split(".")), data)
        if key_path_problem(Recipe, parts, data) is None:
            return f"{expected} (did you mean {guess}={value.strip()}?)"
    return expected


def _refuse_shared_key_of_stages(data: dict[str, Any], key_path: KeyPath, what: str) -> None:
    """On a staged recipe, a shared key that no stage would see is a mistake: point at stages.N.<key>. A stage
    replaces the task whole, and its own keys of the other sections replace the shared ones."""
    stages = data.get("stages")
    if not isinstance(stages, list) or not stages or key_path[0] not in STAGE_SECTIONS or len(key_path) < 2:
        return
    shadowed = key_path[:1] if key_path[0] == "task" else key_path
    if not all(_has_path(stage, shadowed) for stage in stages):
        return
    dotted = ".".join(map(str, key_path))
    why = "each stage gives its own task" if key_path[0] == "task" else f"each stage sets its own {dotted}"
    raise FtlError(
        f"{what}: this recipe has stages and {why}, so the override would change nothing; override a stage's "
        f"key as stages.N.{dotted} (stages: {indexed_items(stages)})"
    )


def _has_path(data: Any, key_path: KeyPath) -> bool:
    for key in key_path:
        if not isinstance(data, dict) or data.get(key) is None:
            return False
        data = data[key]
    return True


def _typed_value(raw: str, key_path: KeyPath, data: dict[str, Any], what: str) -> Any:
    """Parse VALUE as YAML, but keep it a string where the schema wants a string."""
    parent = model_at(Recipe, key_path[:-1], data)
    field_info = getattr(parent, "model_fields", {}).get(key_path[-1])
    only_str = field_info is not None and _accepts_only_str(field_info.annotation)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        if only_str:
            return raw  # free text such as 'Question: {text} Answer:'
        raise FtlError(
            f"{what}: '{raw}' is not a valid value (quote it, or use YAML syntax like [a, b])"
        ) from None
    if only_str and not isinstance(value, str):
        if value is None and raw.strip() in _YAML_NULLS:
            return None
        return raw  # YAML made a number, mapping, list or comment of free text ('lr sweep: x', '#1 baseline')
    return value


def _accepts_only_str(annotation: Any) -> bool:
    """True for `str` and `str | None`; false for containers of strings such as `list[str]`."""
    if annotation is str:
        return True
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return False
    kinds = {a for a in typing.get_args(annotation) if a is not type(None)}
    return kinds == {str}


def _describe(error: dict[str, Any], data: dict[str, Any], origins: dict[KeyPath, Origin], path: Path) -> str:
    loc = display_path(tuple(error["loc"]))
    kind = error["type"]
    if kind == BOOL_FOR_NUMBER:  # raised by the section, about one of its keys
        loc = (*loc, error["ctx"]["key"])
        return f"{where(origins, loc, path)}: {dotted_key(loc)}: {error['msg']}"
    dotted = dotted_key(loc)
    at = where(origins, loc, path)
    value = error.get("input")
    if kind == "extra_forbidden":
        parent = model_at(Recipe, loc[:-1], data)
        valid = list(getattr(parent, "model_fields", {}))
        section = dotted_key(loc[:-1]) or "the recipe"
        return (
            f"{at}: unknown key '{loc[-1]}' in {section}{did_you_mean(str(loc[-1]), valid)}; "
            f"valid keys: {one_of(valid)}"
        )
    if kind == "missing":
        return f"{at}: missing required key '{dotted}'"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tag = value.get("type") if isinstance(value, dict) else None
        at = where(origins, (*loc, "type"), path)
        if tag is None:
            return f"{at}: {dotted or 'task'}.type is required; one of {one_of(TASK_TYPES)}"
        return f"{at}: unknown task type '{tag}'{did_you_mean(str(tag), TASK_TYPES)}; valid: {one_of(TASK_TYPES)}"
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        choices = re.findall(r"'([^']*)'", expected)
        return f"{at}: {dotted}: '{value}' is not allowed{did_you_mean(str(value), choices)}; use one of {expected}"
    if kind == "model_type" or kind == "dict_type":
        return f"{at}: {dotted or 'the recipe'} must be a mapping of keys, got {_short(value)}"
    message = error["msg"].removeprefix("Value error, ")
    got = "" if kind == "value_error" else f" (got {_short(value)})"
    return f"{at}: {dotted}: {message}{got}" if dotted else f"{at}: {message}{got}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
