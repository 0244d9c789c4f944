"""The rules of the tune: section (search spaces, schedulers, folds): a catalogue of its own (see catalogue.py)."""

from __future__ import annotations

from ftl.launcher.errors import one_of
from ftl.launcher.recipe.catalogue import Catalogue, Violation, not_produced
from ftl.launcher.recipe.keypaths import key_path_problem
from ftl.launcher.recipe.schema import Recipe

rule = Catalogue("search")

# --- search and cross-validation ---------------------------------------------------------------------

_NOT_SEARCHABLE = {
    "name": "a trial's name is set by ftl tune",
    "extends": "extends is resolved before the search",
    "tune": "the search cannot search itself",
    "data.fold": "folds are set by tune.cv or ftl cv",
    "task.type": "each task type has its own keys; search whole tasks instead: tune.space.task: {choice: "
    "[{type: ..., ...}, {type: ..., ...}]}",
}
# What PBT may change in a running trial: optimizer settings applied to the restored optimizer.
PBT_MUTABLE_KEYS = ("train.lr", "train.weight_decay", "train.max_grad_norm")


@rule
def search_space_keys_are_recipe_keys(recipe: Recipe) -> Violation | None:

    if recipe.tune is None:
        return None
    data = recipe.model_dump(mode="json")
    for key in recipe.tune.space:
        for blocked, why in _NOT_SEARCHABLE.items():
            if key == blocked or key.startswith(blocked + "."):
                return ("tune", "space", key), f"cannot be searched: {why}"
        problem = key_path_problem(Recipe, tuple(key.split(".")), data)
        if problem is not None:
            return ("tune", "space", key), f"not a recipe key: {problem}"
    return None


_SWITCHES = {
    "lora": "train LoRA adapters instead of the whole model",
    "quantization": "load a quantized model",
}


@rule
def search_keys_do_not_switch_on_a_section(recipe: Recipe) -> Violation | None:
    """A key of a section the recipe leaves off (lora.r with no lora:) would switch it on in every trial."""
    if recipe.tune is None:
        return None
    for key in recipe.tune.space:
        section = key.split(".")[0]
        if section in _SWITCHES and "." in key and getattr(recipe, section) is None:
            return ("tune", "space", key), (
                f"the recipe has no {section} section, so every trial would {_SWITCHES[section]}; add {section}: "
                f"to the recipe, or search the section whole (tune.space.{section}: {{choice: [null, {{...}}]}})"
            )
    return None


@rule
def search_metric_is_produced_by_the_task(recipe: Recipe) -> Violation | None:
    tune = recipe.tune
    if tune is None or tune.metric is None:
        return None
    valid = recipe.task.metrics
    name = tune.metric.removeprefix("eval_")
    if name not in valid:
        return ("tune", "metric"), not_produced(recipe.task, tune.metric)
    return None


@rule
def grid_search_needs_finite_dimensions(recipe: Recipe) -> Violation | None:
    tune = recipe.tune
    if tune is None or tune.search != "grid":
        return None
    for key, dimension in tune.space.items():
        if not dimension.is_finite:
            return ("tune", "space", key), (
                f"search: grid needs finite dimensions, but this one is {dimension.kind}; list the values to try "
                "as {grid: [...]}, or use search: tpe or random"
            )
    return None


@rule
def trials_checkpoint_at_every_evaluation(recipe: Recipe) -> Violation | None:
    every = recipe.train.checkpoint_every_steps
    if recipe.tune is None or every is None or every == recipe.eval.every_steps:
        return None
    return ("train", "checkpoint_every_steps"), (
        "trials report and checkpoint at every evaluation (schedulers decide there); remove "
        "checkpoint_every_steps or make it equal to eval.every_steps"
    )


@rule
def pbt_mutates_only_optimizer_settings(recipe: Recipe) -> Violation | None:
    tune = recipe.tune
    if tune is None or tune.scheduler_type != "pbt":
        return None
    if not tune.space:
        return ("tune", "space"), f"pbt needs a space over {one_of(PBT_MUTABLE_KEYS)} to perturb"
    for key in tune.space:
        if key not in PBT_MUTABLE_KEYS:
            return ("tune", "space", key), (
                f"pbt changes hyperparameters of running trials, which works for {one_of(PBT_MUTABLE_KEYS)}; "
                "search other keys with scheduler asha, median or fifo"
            )
    if tune.cv is not None:
        return ("tune", "cv"), "pbt exploits one trial's checkpoint, which a k-fold trial does not have"
    if recipe.distributed.needs_workers:
        return ("tune", "scheduler", "type"), (
            "pbt with multi-worker trials is not supported yet; use asha, median or fifo"
        )
    return None


@rule
def folded_trials_report_once(recipe: Recipe) -> Violation | None:
    tune = recipe.tune
    if tune is None or tune.cv is None:
        return None
    if tune.scheduler_type != "fifo":
        return ("tune", "scheduler", "type"), (
            f"with tune.cv a trial reports once, when all its folds are done, so {tune.scheduler_type} has "
            "nothing to compare early; use fifo (the default with tune.cv)"
        )
    if recipe.distributed.needs_workers:
        return (
            "tune",
            "cv",
        ), "folds of multi-worker trials are not supported; cross-validate single-process trials"
    return None


@rule
def folds_come_from_the_training_data(recipe: Recipe) -> Violation | None:
    cv = recipe.tune.cv if recipe.tune is not None else None
    if recipe.data is None or recipe.data.validation is None or (cv is None and recipe.data.fold is None):
        return None
    where = ("data", "fold") if recipe.data.fold is not None else ("tune", "cv")
    return where, "folds split the training data into train and validation; remove data.validation"


@rule
def multi_worker_trials_use_the_distributed_section(recipe: Recipe) -> Violation | None:
    tune = recipe.tune
    if tune is None or not recipe.distributed.needs_workers or tune.resources is None:
        return None
    return ("tune", "resources"), (
        "each trial runs on distributed.workers Ray Train workers; size them with distributed.cpus_per_worker "
        "and gpus_per_worker and remove tune.resources"
    )
