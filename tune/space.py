"""The recipe's `tune.space` as Optuna distributions, and sampled parameters back into recipe values.

Optuna's categorical values must be None, bool, int, float or str; other choices (lists, mappings of recipe
keys) travel as their JSON text and are decoded before the trial recipe is built.
"""

from __future__ import annotations

import json
from typing import Any

from ftl.launcher.recipe.search import Distribution, TuneSection

_PRIMITIVE = (type(None), bool, int, float, str)


def optuna_space(tune: TuneSection) -> dict[str, Any]:
    """Parameter name (the dotted recipe key) -> optuna distribution."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space: dict[str, Any] = {}
    for key, dimension in tune.space.items():
        kind = dimension.kind
        if kind in ("choice", "grid"):
            space[key] = CategoricalDistribution([_label(v) for v in dimension.values])
        elif kind in ("uniform", "loguniform"):
            low, high = dimension.bounds
            space[key] = FloatDistribution(low, high, log=kind == "loguniform", step=dimension.step)
        else:
            low, high = dimension.bounds
            space[key] = IntDistribution(low, high, log=kind == "logint", step=int(dimension.step or 1))
    return space


def grid_space(tune: TuneSection) -> dict[str, list[Any]]:
    """Every value of every (finite) dimension, for optuna's GridSampler."""
    return {key: [_label(v) for v in dimension.grid_values()] for key, dimension in tune.space.items()}


def grid_size(tune: TuneSection) -> int:
    size = 1
    for dimension in tune.space.values():
        size *= len(dimension.grid_values())
    return size


def decode(params: dict[str, Any], tune: TuneSection) -> dict[str, Any]:
    """Sampled parameters -> recipe values (choices given as lists or mappings restored from their label)."""
    values: dict[str, Any] = {}
    for key, value in params.items():
        dimension: Distribution | None = tune.space.get(key)
        if dimension is not None and dimension.kind in ("choice", "grid"):
            by_label = {_label(v): v for v in dimension.values}
            value = by_label.get(value, value)
        values[key] = value
    return values


def shown(value: Any) -> str:
    """A short text for tables and file names."""
    if isinstance(value, float):
        return f"{value:.3g}"
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _label(value: Any) -> Any:
    return value if isinstance(value, _PRIMITIVE) else json.dumps(value, sort_keys=True)


def tune_domains(tune: TuneSection) -> dict[str, Any]:
    """The space as Ray Tune domains (PBT samples and perturbs with these; it cannot use a searcher)."""
    from ray import tune as ray_tune

    domains: dict[str, Any] = {}
    for key, dimension in tune.space.items():
        kind = dimension.kind
        if kind in ("choice", "grid"):
            domains[key] = ray_tune.choice(dimension.values)
        elif kind == "uniform":
            low, high = dimension.bounds
            domains[key] = (
                ray_tune.quniform(low, high, dimension.step)
                if dimension.step
                else ray_tune.uniform(low, high)
            )
        elif kind == "loguniform":
            domains[key] = ray_tune.loguniform(*dimension.bounds)
        elif kind == "int":
            low, high = dimension.bounds
            domains[key] = ray_tune.qrandint(low, high, int(dimension.step or 1))
        else:
            domains[key] = ray_tune.lograndint(dimension.bounds[0], dimension.bounds[1] + 1)
    return domains


def short_names(keys: list[str]) -> list[str]:
    """Column headers: the last part of each dotted key, or the whole key where the last part repeats."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return [part if last.count(part) == 1 else key for key, part in zip(keys, last, strict=True)]
