"""Text cells as a task reads them: every row dropped or coerced is counted with its reason, never silently.

A row whose text is missing or blank is dropped, a number in a text column is read as its text, and both are
noted on the source (`RawData.note`) so the run prints them and records them in manifest.json (`data_stats`).
A cell holding an object or a list where text belongs, or a source whose rows are mostly unusable, is one
error line naming the first offending file:line.
"""

from __future__ import annotations

import math
from typing import Any

from ftl.launcher.data.sources import RawData
from ftl.launcher.errors import FtlError


def usable_text(raw: RawData, column: str, key: str, values: list[Any] | None = None) -> list[int]:
    """Indexes of the rows whose `column` holds text (`key`: the task setting naming the column)."""
    values = raw.dataset[column] if values is None else values
    keep = []
    for row, value in enumerate(values):
        if isinstance(value, str):
            if value.strip():
                keep.append(row)
            else:
                raw.note("dropped", f"empty '{column}'", row)
        elif value is None or (isinstance(value, float) and math.isnan(value)):
            raw.note("dropped", f"no '{column}'", row)
        elif isinstance(value, (bool, int, float)):
            keep.append(row)
            raw.note("coerced", f"a number in '{column}' read as text", row)
        else:
            raise wrong_type(raw, row, column, key, value)
    dropped = len(values) - len(keep)
    if keep and dropped * 2 > len(values):
        first = next(i for i in range(len(values)) if i not in set(keep))
        raise FtlError(
            f"{raw.row_location(first)}: {dropped} of {len(values)} rows of {raw.description} have no text in "
            f"'{column}' ({key}; this row is the first); fix the file, or point {key} at the column that holds "
            "the text"
        )
    return keep


def checked_text(raw: RawData, column: str, key: str) -> None:
    """A column that may be empty but must not hold objects or lists (e.g. the second text of a pair)."""
    for row, value in enumerate(raw.dataset[column]):
        if isinstance(value, (dict, list)):
            raise wrong_type(raw, row, column, key, value)


def wrong_type(raw: RawData, row: int, column: str, key: str, value: Any) -> FtlError:
    kind = (
        "a list"
        if isinstance(value, list)
        else "an object"
        if isinstance(value, dict)
        else type(value).__name__
    )
    shown = repr(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return FtlError(
        f"{raw.row_location(row)}: column '{column}' ({key}) holds {kind} ({shown}) where text is expected; "
        "ftl would train on its printed form: put the text itself in the column"
    )
