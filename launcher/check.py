"""`ftl check`: everything that can go wrong before training, found in seconds.

Validates the recipe (done by loading it), the device rules, the data (files, columns, labels) and the
model (location, config, layer names for freezing, on the meta device so no weights are loaded).
"""

from __future__ import annotations

from dataclasses import replace

import yaml

from ftl.launcher.console import console, log, out
from ftl.launcher.data.prepare import check_cache, split_method, split_rows
from ftl.launcher.data.sources import load_source
from ftl.launcher.errors import FtlError
from ftl.launcher.model.freeze import block_counts
from ftl.launcher.model.integrity import check_fits, check_model_files
from ftl.launcher.model.load import ModelSpec, load_tokenizer, quiet_transformers, remote_code_warning
from ftl.launcher.model.locate import locate_model
from ftl.launcher.model.meta import meta_model
from ftl.launcher.recipe.data import DataSection
from ftl.launcher.recipe.loader import LoadedRecipe, where
from ftl.launcher.recipe.variants import check_space, objective, with_values
from ftl.launcher.tasks.registry import task_for
from ftl.launcher.track.session import preflight
from ftl.launcher.train.device import plan_device
from ftl.launcher.train.tables import freeze_table


def check_recipe(loaded: LoadedRecipe, *, print_recipe: bool = True) -> None:
    recipe = loaded.recipe
    preflight(recipe.log)  # log.trackers: installed, and a W&B login when online
    reports = []  # printed once every check has passed: an error stays the only line
    if loaded.stages:
        for index, plan in enumerate(loaded.stages):
            start = plan.stage.init_from
            source = (
                "the recipe's model"
                if start == "base" or (start == "previous" and index == 0)
                else (
                    f"the model stage {loaded.stages[index - 1].stage.name if start == 'previous' else start} trains"
                )
            )
            header = (
                f"[bold]stage {plan.stage.name}[/] ({plan.loaded.recipe.task.type}), starting from {source}"
            )
            try:
                reports.append((header, _check_one(plan.loaded)))
            except FtlError as exc:
                raise FtlError(f"stage {plan.stage.name}: {exc}") from None
    else:
        reports.append((None, _check_one(loaded)))
    if print_recipe:
        out.print(
            yaml.safe_dump(recipe.model_dump(mode="json", exclude={"extends"}), sort_keys=False).rstrip(),
            markup=False,
        )
    for header, report in reports:
        if header:
            log(header)
        report()
    log(f"[bold green]ok[/]: {loaded.path} is valid")


def _check_one(loaded: LoadedRecipe):
    """Check one (stage's) recipe; returns what prints its report."""
    recipe = loaded.recipe
    device = plan_device(recipe.train, recipe.distributed if recipe.distributed.address is None else None)
    quiet_transformers(recipe.log.level)
    task = task_for(recipe.task)
    if recipe.task.type == "multitask":
        found = []
        for name, sub_task in task.tasks.items():
            found += [
                f"task {name} ({sub_task.config.type}):",
                *check_data(recipe.task.tasks[name].data, sub_task, loaded.search_dirs)[0],
            ]
        train_rows = val_rows = None
    else:
        found, train_rows, val_rows = check_data(recipe.data, task, loaded.search_dirs)
    location, tokenizer, built = check_model(loaded, task)
    if train_rows is not None:
        found += task.check_preview(train_rows, tokenizer, loaded.search_dirs, colour=console.is_terminal)
        # tokenised as the run will: rows it cannot train on (too long, nothing left to learn) refused or counted
        task.tokenize(train_rows, tokenizer, "train")
        task.tokenize(val_rows, tokenizer, "validation")
    if recipe.tune is not None:
        check_space(recipe, where(loaded.origins, ("tune", "space"), loaded.path))
        check_space_values(loaded, recipe)
        metric, mode = objective(recipe)
        found.append(
            f"search: {len(recipe.tune.space)} dimension(s) ({', '.join(recipe.tune.space) or 'none'}), "
            f"{mode}imise {metric}; every choice and bound passes the recipe rules, and those of data and model "
            "keys the data and the model"
        )

    warning = remote_code_warning(recipe.model)

    def report() -> None:
        if warning:
            log(warning)
        for line in found[:-1] if recipe.tune is not None else found:
            log(line)
        log(f"model: {location} ({location.note or location.kind}); device {device.name}, {device.precision}")
        console.print(
            freeze_table(block_counts(built.model, built.head_names), title=type(built.model).__name__)
        )
        if recipe.tune is not None:
            log(found[-1])

    return report


def check_model(loaded: LoadedRecipe, task):
    """The model's files, tokenizer, config, freezing and token limits, built on the meta device (no weights):
    its location, tokenizer and the meta model."""
    recipe = loaded.recipe
    location = locate_model(recipe.model, loaded.search_dirs)
    check_model_files(location)
    tokenizer = load_tokenizer(recipe.model, loaded.search_dirs, location)
    built = meta_model(ModelSpec.of(recipe, loaded.search_dirs), recipe.freeze, task, tokenizer)
    check_fits(built.model, tokenizer, recipe.model, recipe.task)
    return location, tokenizer, built


def check_data(data: DataSection, task, dirs) -> tuple[list[str], object, object]:
    """Files, columns, cells and labels of train and validation, read, split and subsampled as a run would (only
    not tokenised), and the cache folder; the report lines, the training rows and the validation rows."""
    check_cache(data)
    train = load_source(data.train, dirs, "data.train")
    val = load_source(data.validation, dirs, "data.validation") if data.validation is not None else None
    method = split_method(data, task)
    train_rows, val_rows = split_rows(data, task, train, val, method)
    origin = f"from {val.description}" if val is not None else f"carved from train ({method})"
    lines = [
        f"data: train {len(train_rows):,} rows from {train.description}; validation {len(val_rows):,} rows {origin}"
    ]
    lines += [f"[yellow]{line}[/]" for raw in (train, val) if raw is not None for line in raw.row_report()]
    labels = task.label_names()
    if labels:
        lines.append(f"labels: {', '.join(labels)}")
    return lines, train_rows, val_rows


_DATA_SECTIONS = ("data", "task")  # what reading, encoding and splitting the data depends on
_MODEL_SECTIONS = ("model", "task", "freeze", "quantization", "lora")  # what building the model depends on


def check_space_values(loaded: LoadedRecipe, recipe) -> None:
    """Each choice and both bounds of the search's data and model keys, checked against the data and the model:
    values the recipe rules accept may still meet them in a way that cannot work (too few rows, no such column,
    more tokens than the model has positions). Keys of other sections need no data or model to check."""
    if recipe.tune is None:
        return
    for key, dimension in recipe.tune.space.items():
        if not touches_data_or_model(key):
            continue
        for value in dimension.edge_values():
            try:
                check_variant(replace(loaded, recipe=with_values(recipe, {key: value})), [key])
            except FtlError as exc:
                raise FtlError(f"tune.space.{key}: with {value!r}, {exc}") from None


def touches_data_or_model(key: str) -> bool:
    return key.split(".")[0] in _DATA_SECTIONS + _MODEL_SECTIONS


def check_variant(loaded: LoadedRecipe, keys: list[str]) -> None:
    """A variant of a recipe (a search value, a bench cell) against its data and model, as far as `keys` (the
    dotted recipe keys it changed) can change them."""
    recipe = loaded.recipe
    sections = {key.split(".")[0] for key in keys}
    if sections & set(_DATA_SECTIONS) and recipe.data is not None:
        check_data(recipe.data, task_for(recipe.task), loaded.search_dirs)
    if sections & set(_MODEL_SECTIONS):
        check_model(loaded, task_for(recipe.task))
