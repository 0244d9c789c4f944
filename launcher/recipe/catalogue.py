"""What a rule is: a check of a validated recipe that blames one key, and the catalogues that hold the rules.

A rule returns the key path it blames and why, or None. Rules are grouped by concern in catalogue modules
(`rules.py`, `search_rules.py`, ...), each with its own `Catalogue` used as a decorator; `rulebook.py` lists the
catalogues and runs them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ftl.launcher.errors import did_you_mean, one_of
from ftl.launcher.recipe.schema import Recipe

Violation = tuple[tuple[Any, ...], str]
Rule = Callable[[Recipe], Violation | None]


class Catalogue:
    """The rules of one concern, in the order they are written (decorate each rule with the catalogue)."""

    def __init__(self, concern: str) -> None:
        self.concern = concern
        self.rules: list[Rule] = []

    def __call__(self, function: Rule) -> Rule:
        self.rules.append(function)
        return function


def not_produced(task, metric: str) -> str:
    """Why a task cannot be judged by `metric` at its evaluations (a metric it computes only once, after
    training, from its generations; or one it never computes), with what it does report."""
    valid = task.metrics
    name = metric.removeprefix("eval_")
    if name in getattr(task, "after_training", ()):
        return (
            f"task {task.type} computes '{metric}' once, after training, from its task.generate_rows generations, "
            f"not at the evaluations that select and compare models; use {one_of(valid)}"
        )
    return (
        f"task {task.type} does not produce '{metric}'{did_you_mean(name, valid)}; it reports {one_of(valid)}"
    )
