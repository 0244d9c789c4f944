"""Carving a validation split from train, and seeded subsets for quick runs."""

from __future__ import annotations

from launcher.errors import FtlError


def carve_validation(
    dataset, *, method: str, fraction: float, seed: int, stratify_column: str | None, what: str
):
    """Return (train, validation). Methods: stratified (keeps label ratios), random, tail (last rows)."""
    n = len(dataset)
    n_val = max(1, round(n * fraction))
    if n - n_val < 1:
        raise FtlError(
            f"{what}: {n} row(s) are too few to carve a validation split of {fraction:.0%}; add data"
        )
    if method == "tail":
        return dataset.select(range(n - n_val)), dataset.select(range(n - n_val, n))
    train_idx, val_idx = _split_indices(
        dataset, n_val, seed, stratify_column if method == "stratified" else None, what
    )
    return dataset.select(train_idx), dataset.select(val_idx)


def subsample(dataset, rows: int | None, *, seed: int, stratify_column: str | None, what: str):
    """A seeded random subset of `rows` rows (stratified when a label column is given); all rows if fewer."""
    if rows is None or rows >= len(dataset):
        return dataset
    _, keep = _split_indices(dataset, rows, seed, stratify_column, what)
    return dataset.select(sorted(keep))


def _split_indices(dataset, n_second: int, seed: int, stratify_column: str | None, what: str):
    import numpy as np
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(dataset))
    labels = dataset[stratify_column] if stratify_column else None
    try:
        first, second = train_test_split(
            indices, test_size=n_second, random_state=seed, shuffle=True, stratify=labels
        )
    except ValueError as exc:
        raise FtlError(
            f"{what}: cannot keep label ratios ({exc}); use data.validation_split.method: random, or add rows"
        ) from None
    return sorted(first.tolist()), sorted(second.tolist())
