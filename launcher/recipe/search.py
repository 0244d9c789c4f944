"""The `tune:` section: a search space over dotted recipe keys, the search, the scheduler, cross-validation.

A space maps a recipe key to one distribution:

    tune:
      space:
        train.lr: {loguniform: [1.0e-5, 1.0e-4]}
        train.warmup_ratio: {uniform: [0.0, 0.2]}
        freeze.bottom_layers: {int: [0, 4]}
        train.batch_size: {choice: [16, 32]}       # a plain list means the same
        model.name_or_path: {choice: [package:a, org/b]}

`ftl run` ignores this section; `ftl tune` and `ftl cv` read it. Each sampled value is validated by the recipe
schema before a trial starts (see `launcher.recipe.variants`).
"""

from __future__ import annotations

import builtins
import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ftl.launcher.recipe.folds import KFold
from ftl.launcher.recipe.section import Section, Seed

DISTRIBUTION_KINDS = ("uniform", "loguniform", "int", "logint", "choice", "grid")


class Distribution(Section):
    """One dimension of the space: exactly one of the kinds, with [low, high] bounds or a list of values."""

    uniform: tuple[float, float] | None = Field(None, description="A float drawn uniformly from [low, high].")
    loguniform: tuple[float, float] | None = Field(
        None, description="A float drawn uniformly in log space from [low, high] (both > 0)."
    )
    int: tuple[builtins.int, builtins.int] | None = Field(
        None, description="An integer from [low, high], both included."
    )
    logint: tuple[builtins.int, builtins.int] | None = Field(
        None, description="An integer from [low, high] drawn in log space (both >= 1)."
    )
    choice: list[Any] | None = Field(
        None, description="One of these values (numbers, strings, lists or mappings of recipe keys)."
    )
    grid: list[Any] | None = Field(
        None, description="Like choice; `search: grid` tries every combination of the grid values."
    )
    step: float | None = Field(
        None, gt=0, description="Quantisation step of a uniform or int dimension (e.g. 0.05, or 2)."
    )

    @model_validator(mode="before")
    @classmethod
    def _plain_list_is_a_choice(cls, value: Any) -> Any:
        return {"choice": value} if isinstance(value, list) else value

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> Distribution:
        given = [kind for kind in DISTRIBUTION_KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            shown = ", ".join(given) if given else "none"
            raise ValueError(f"give exactly one of {', '.join(DISTRIBUTION_KINDS)} (got {shown})")
        kind = given[0]
        if kind in ("choice", "grid"):
            if not self.values:
                raise ValueError(f"{kind} needs at least one value")
            if self.step is not None:
                raise ValueError(f"step applies to uniform and int, not to {kind}")
            return self
        low, high = getattr(self, kind)
        if kind in ("int", "logint") and self.step is not None and self.step != int(self.step):
            raise ValueError(f"{kind} needs a whole-number step, got {self.step}")
        if low > high:
            raise ValueError(f"{kind}: low {low} is greater than high {high}; write [{high}, {low}]")
        if kind.startswith("log") and low <= 0:
            raise ValueError(f"{kind} needs bounds > 0 (a log scale has no 0), got low {low}")
        if kind.startswith("log") and self.step is not None:
            raise ValueError(f"step cannot be combined with the log scale of {kind}")
        if kind == "uniform" and not all(math.isfinite(b) for b in (low, high)):
            raise ValueError("uniform needs finite bounds")
        return self

    @property
    def kind(self) -> str:
        return next(kind for kind in DISTRIBUTION_KINDS if getattr(self, kind) is not None)

    @property
    def values(self) -> list[Any]:
        """The values of a choice or grid; empty for a range."""
        return list(self.choice if self.choice is not None else self.grid or [])

    @property
    def bounds(self) -> tuple[Any, Any] | None:
        return None if self.kind in ("choice", "grid") else tuple(getattr(self, self.kind))

    @property
    def is_finite(self) -> bool:
        return self.kind in ("choice", "grid", "int")

    def edge_values(self) -> list[Any]:
        """Values that must each give a valid recipe: every choice, or both bounds of a range."""
        if self.kind in ("choice", "grid"):
            return self.values
        low, high = self.bounds
        return [low, high] if low != high else [low]

    def grid_values(self) -> list[Any]:
        """Every value of a finite dimension (choice, grid, int), in order."""
        if self.kind in ("choice", "grid"):
            return self.values
        if self.kind == "int":
            low, high = self.int
            return list(range(low, high + 1, int(self.step or 1)))
        raise ValueError(f"{self.kind} is not finite")


class SchedulerSection(Section):
    """When to stop or change trials before they finish. Time counts evaluations (eval.every_steps or epochs)."""

    type: Literal["fifo", "asha", "median", "pbt"] | None = Field(
        None,
        description="Default asha (fifo with tune.cv, whose trials report once). fifo runs every trial to the end; asha stops the worst trials at rungs (successive halving); "
        "median stops a trial worse than the median of others at the same point; pbt copies the best "
        "trials' checkpoints into the worst and perturbs their hyperparameters.",
    )
    grace_period: int = Field(
        1, ge=1, description="Evaluations every trial gets before asha or median may stop it."
    )
    reduction_factor: float = Field(
        3.0, gt=1, description="asha keeps the best 1/reduction_factor of trials at each rung."
    )
    max_evaluations: int | None = Field(
        None, gt=0, description="asha stops every trial after this many evaluations (default: none)."
    )
    min_samples: int = Field(
        3, ge=1, description="median compares a trial only when this many others reached the same point."
    )
    perturbation_interval: int = Field(
        1, ge=1, description="pbt exploits and explores every this many evaluations."
    )
    quantile_fraction: float = Field(
        0.25, gt=0, le=0.5, description="pbt replaces the bottom fraction of trials with the top fraction."
    )


class TrialResources(Section):
    """What Ray reserves for one single-process trial (multi-worker trials follow `distributed:`)."""

    cpus: float = Field(1.0, gt=0, description="CPUs per trial.")
    gpus: float = Field(0.0, ge=0, description="GPUs per trial (fractions share a GPU between trials).")


class CrossValidation(KFold):
    """`tune.cv`: every trial trains on k folds in parallel; its objective is the mean over the folds."""


class TuneSection(Section):
    """Hyperparameter search over the recipe: `ftl tune` (and `ftl cv` for the cross-validation part)."""

    space: dict[str, Distribution] = Field(
        default_factory=dict,
        description="Dotted recipe key -> distribution, e.g. train.lr: {loguniform: [1e-5, 1e-4]}.",
    )
    metric: str | None = Field(
        None,
        description="Objective, a metric of the task (e.g. accuracy or eval_loss); default: the main one.",
    )
    mode: Literal["min", "max"] | None = Field(
        None, description="Whether the metric is minimised or maximised; default: the metric's own direction."
    )
    samples: int | None = Field(
        None, gt=0, description="Trials to run; default 8 (grid: the number of combinations)."
    )
    max_concurrent: int | None = Field(
        None, gt=0, description="Trials at once; default: as many as the cluster's resources hold."
    )
    time_budget_s: float | None = Field(
        None, gt=0, description="Start no new trials and stop running ones after this many seconds."
    )
    search: Literal["tpe", "random", "grid"] = Field(
        "tpe",
        description="Optuna sampler: tpe (seeded), random, or grid (every combination of finite dimensions).",
    )
    seed: Seed = Field(0, description="Seed of the sampler.")
    startup_trials: int | None = Field(
        None,
        ge=1,
        description="Random trials before TPE starts modelling the space; default a quarter of the samples, from 2 "
        "to 10 (Optuna's own default of 10 would make a small search purely random).",
    )
    scheduler: SchedulerSection = Field(default_factory=SchedulerSection)
    resources: TrialResources | None = Field(
        None, description="Per single-process trial; default 1 CPU. Multi-worker trials follow distributed:."
    )
    cv: CrossValidation | None = Field(
        None, description="Make each trial's objective the mean over k folds (the folds run in parallel)."
    )
    storage: str | None = Field(
        None,
        description="Optuna study storage URL (e.g. postgresql://user@host/db for a shared study); default: "
        "sqlite in the search's output directory.",
    )
    study_name: str | None = Field(None, description="Optuna study name; default: the recipe name.")
    max_failures: int = Field(
        2, ge=0, description="Retry a failed trial from its last checkpoint up to this many times."
    )
    keep_checkpoints: bool = Field(
        False, description="Keep trials' checkpoints after the search (default: only their final models)."
    )

    @field_validator("space")
    @classmethod
    def _keys_are_dotted_names(cls, space: dict[str, Distribution]) -> dict[str, Distribution]:
        for key in space:
            parts = key.split(".")
            if not all(part.isidentifier() for part in parts):
                raise ValueError(f"'{key}' is not a dotted recipe key such as train.lr")
        return space

    @property
    def scheduler_type(self) -> str:
        """The scheduler in effect: as given, else asha (fifo when trials are k-fold means)."""
        return self.scheduler.type or ("fifo" if self.cv is not None else "asha")

    @property
    def trial_resources(self) -> TrialResources:
        return self.resources or TrialResources()

    @property
    def objective(self) -> str | None:
        """The metric as the trials report it (eval_ prefix)."""
        if self.metric is None:
            return None
        return self.metric if self.metric.startswith("eval_") else f"eval_{self.metric}"
