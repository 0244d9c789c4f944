"""k-fold splits of the training rows (scikit-learn's splitters), the same on every machine for a seed.

Methods: stratified (label ratios kept in every fold), random (shuffled), contiguous (rows in file order, for
text corpora where neighbouring rows are related), group (all rows of one group value in one fold; stratified
as well when the task has labels).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ftl.launcher.errors import FtlError
from ftl.launcher.recipe.folds import KFold


def resolve_method(spec: KFold, task_split_method: str) -> str:
    """'auto' -> group when a group column is given, else stratified for classification, contiguous otherwise."""
    if spec.method != "auto":
        return spec.method
    if spec.group_column:
        return "group"
    return "stratified" if task_split_method == "stratified" else "contiguous"


def fold_of_rows(
    n_rows: int,
    spec: KFold,
    *,
    method: str,
    labels: Sequence[Any] | None = None,
    groups: Sequence[Any] | None = None,
    what: str,
) -> list[int]:
    """The fold (0..k-1) of every row."""
    import numpy as np
    from sklearn import model_selection

    k = spec.folds
    if n_rows < k:
        raise FtlError(f"{what}: {n_rows} row(s) cannot be split into {k} folds; add rows or lower the folds")
    indices = np.arange(n_rows)
    if method == "stratified":
        if labels is None:
            raise FtlError(f"{what}: method stratified needs a labelled task; use random or contiguous")
        splitter = model_selection.StratifiedKFold(k, shuffle=True, random_state=spec.seed)
    elif method == "random":
        splitter = model_selection.KFold(k, shuffle=True, random_state=spec.seed)
    elif method == "contiguous":
        splitter = model_selection.KFold(k, shuffle=False)
    elif method == "group":
        if groups is None:
            raise FtlError(f"{what}: method group needs group_column")
        distinct = len(set(groups))
        if distinct < k:
            raise FtlError(
                f"{what}: group_column has {distinct} distinct value(s), fewer than the {k} folds; lower the folds"
            )
        if labels is not None:
            splitter = model_selection.StratifiedGroupKFold(k, shuffle=True, random_state=spec.seed)
        else:
            splitter = model_selection.GroupKFold(k, shuffle=True, random_state=spec.seed)
    else:  # pragma: no cover - the schema allows only the methods above
        raise ValueError(method)
    fold = np.full(n_rows, -1)
    try:
        for index, (_, held_out) in enumerate(splitter.split(indices, labels, groups)):
            fold[held_out] = index
    except ValueError as exc:
        raise FtlError(f"{what}: cannot split into {k} folds ({exc})") from None
    return fold.tolist()


def split_fold(dataset, fold: list[int], index: int) -> tuple[Any, Any]:
    """(train, validation): every row outside fold `index`, and the rows of fold `index`, in file order."""
    train = [i for i, f in enumerate(fold) if f != index]
    held_out = [i for i, f in enumerate(fold) if f == index]
    return dataset.select(train), dataset.select(held_out)
