"""Every rule of every catalogue, run on a validated recipe. The loader turns the first violation into a
one-line error pointing at the key's file and line; variants (search trials, folds) into InvalidVariant.

Rules that depend on the machine (is there a GPU?) live in `launcher.train.device`.
"""

from __future__ import annotations

from collections.abc import Iterator

from ftl.launcher.recipe import rules, search_rules
from ftl.launcher.recipe.catalogue import Catalogue, Violation
from ftl.launcher.recipe.schema import Recipe

CATALOGUES: tuple[Catalogue, ...] = (rules.rule, search_rules.rule)


def violations(recipe: Recipe) -> Iterator[Violation]:
    for catalogue in CATALOGUES:
        for check in catalogue.rules:
            found = check(recipe)
            if found is not None:
                yield found
