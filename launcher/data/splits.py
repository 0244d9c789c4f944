"""Carving a validation split from train, and seeded subsets for quick runs."""

from __future__ import annotations

from ftl.launcher.errors import FtlError


def carve_validation(
    dataset,
    *,
    method: str,
    fraction: float,
    seed: int,
    stratify_column: str | None,
    what: str,
    group_column: str | None = None,
    names: list[str] | None = None,
):
    """Return (train, validation). Methods: stratified (keeps label ratios), random, tail (last rows), group
    (whole groups of `group_column` on one side, about `fraction` of the rows held out)."""
    n = len(dataset)
    n_val = max(1, round(n * fraction))
    if n - n_val < 1:
        raise FtlError(
            f"{what}: {n} row(s) are too few to carve a validation split of {fraction:.0%}; add data"
        )
    if method == "tail":
        return dataset.select(range(n - n_val)), dataset.select(range(n - n_val, n))
    if method == "group":
        train_idx, val_idx = _group_indices(dataset[group_column], fraction, seed, what, group_column)
        return dataset.select(train_idx), dataset.select(val_idx)
    train_idx, val_idx = _split_indices(
        dataset, n_val, seed, stratify_column if method == "stratified" else None, what, names
    )
    return dataset.select(train_idx), dataset.select(val_idx)


def subsample(
    dataset,
    rows: int | None,
    *,
    seed: int,
    stratify_column: str | None,
    what: str,
    names: list[str] | None = None,
):
    """A seeded random subset of `rows` rows (stratified when a label column is given); all rows if fewer."""
    if rows is None or rows >= len(dataset):
        return dataset
    _, keep = _split_indices(dataset, rows, seed, stratify_column, what, names)
    return dataset.select(sorted(keep))


def _name(label, names: list[str] | None) -> str:
    """A label's name (the data holds ids into the task's label names)."""
    return names[label] if names and isinstance(label, int) and 0 <= label < len(names) else str(label)


def _split_indices(
    dataset, n_second: int, seed: int, stratify_column: str | None, what: str, names: list[str] | None = None
):
    import numpy as np
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(dataset))
    labels = dataset[stratify_column] if stratify_column else None
    if labels is not None:
        counts: dict = {}
        for label in labels:
            counts[label] = counts.get(label, 0) + 1
        rare = next((label for label, count in counts.items() if count < 2), None)
        if rare is not None:
            raise FtlError(
                f"{what}: label '{_name(rare, names)}' has a single row; keeping label ratios needs at least 2 rows of "
                "every label: add rows, or use data.validation_split.method: random"
            )
    try:
        first, second = train_test_split(
            indices, test_size=n_second, random_state=seed, shuffle=True, stratify=labels
        )
    except ValueError as exc:
        raise FtlError(
            f"{what}: cannot keep label ratios ({exc}); use data.validation_split.method: random, or add rows"
        ) from None
    return sorted(first.tolist()), sorted(second.tolist())


def _group_indices(groups, fraction: float, seed: int, what: str, column: str):
    """Shuffle the distinct groups (seeded) and hold out whole groups until `fraction` of the rows is reached."""
    import numpy as np

    order: dict = {}
    for i, group in enumerate(groups):
        order.setdefault(group, []).append(i)
    if len(order) < 2:
        raise FtlError(
            f"{what}: column '{column}' has {len(order)} distinct value(s); a group split needs at least two groups"
        )
    names = list(order)
    rng = np.random.default_rng(seed)
    rng.shuffle(names)
    target = max(1, round(len(groups) * fraction))
    held: list[int] = []
    for name in names[:-1]:  # at least one group stays in train
        if len(held) >= target:
            break
        held.extend(order[name])
    held_set = set(held)
    return [i for i in range(len(groups)) if i not in held_set], sorted(held)


def oversample(dataset, *, column: str, seed: int):
    """Repeat rows of the rarer classes (drawn at random, seeded) until each class has as many rows as the
    largest one; the original rows all stay, in order, followed by the repeats."""
    import numpy as np

    labels = np.asarray(dataset[column])
    classes, counts = np.unique(labels, return_counts=True)
    rng = np.random.default_rng(seed)
    extra = []
    for label, count in zip(classes, counts, strict=True):
        rows = np.flatnonzero(labels == label)
        extra.extend(rng.choice(rows, size=counts.max() - count, replace=True).tolist())
    return dataset.select(list(range(len(dataset))) + sorted(extra)) if extra else dataset
