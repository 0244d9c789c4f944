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

_TEXT, _NUMBER, _EMPTY, _NONE = "text", "number", "empty", "none"


def is_missing(value: Any) -> bool:
    """A null cell: None, or NaN (how a reader may show an empty number cell)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _kind(raw: RawData, row: int, value: Any, column: str, key: str) -> str:
    if isinstance(value, str):
        return _TEXT if value.strip() else _EMPTY
    if is_missing(value):
        return _NONE
    if isinstance(value, (bool, int, float)):
        return _NUMBER
    raise wrong_type(raw, row, column, key, value)


def usable_text(raw: RawData, column: str, key: str, values: list[Any] | None = None) -> list[int]:
    """Indexes of the rows whose `column` holds text (`key`: the task setting naming the column)."""
    values = raw.dataset[column] if values is None else values
    return usable_rows(raw, {column: key}, {column: values})


def usable_rows(
    raw: RawData, columns: dict[str, str], values: dict[str, list[Any]] | None = None
) -> list[int]:
    """Indexes of the rows where every one of `columns` (column -> the task setting naming it) holds text.

    A row is dropped (and noted once, for its first empty column) when any of them is empty or null; numbers
    are read as text and noted; an object or a list in any of them is an error naming its file:line."""
    values = values or {}
    cells = {column: raw.dataset[column] if column not in values else values[column] for column in columns}
    total = len(next(iter(cells.values())))
    keep: list[int] = []
    first_dropped = None
    emptied: dict[str, str] = {}  # the columns rows were dropped for, in the order of `columns`
    for row in range(total):
        kinds = {column: _kind(raw, row, cells[column][row], column, key) for column, key in columns.items()}
        empty = next((column for column, kind in kinds.items() if kind in (_EMPTY, _NONE)), None)
        if empty is not None:
            raw.note("dropped", f"empty '{empty}'" if kinds[empty] == _EMPTY else f"no '{empty}'", row)
            first_dropped = row if first_dropped is None else first_dropped
            emptied[empty] = columns[empty]
            continue
        for column, kind in kinds.items():
            if kind == _NUMBER:
                raw.note("coerced", f"a number in '{column}' read as text", row)
        keep.append(row)
    dropped = total - len(keep)
    if keep and dropped * 2 > total:
        ordered = [column for column in columns if column in emptied]
        shown = " or ".join(f"'{column}'" for column in ordered)
        keys = " or ".join(columns[column] for column in ordered)
        raise FtlError(
            f"{raw.row_location(first_dropped)}: {dropped} of {total} rows of {raw.description} have no text in "
            f"{shown} ({keys}; this row is the first); fix the file, or point {keys} at the column that holds "
            "the text"
        )
    return keep


def checked_text(raw: RawData, column: str, key: str) -> None:
    """A column that may be empty but must not hold objects or lists (e.g. the second text of a pair); a null
    cell is read as an empty text and noted."""
    for row, value in enumerate(raw.dataset[column]):
        if isinstance(value, (dict, list)):
            raise wrong_type(raw, row, column, key, value)
        if is_missing(value):
            raw.note("coerced", f"no '{column}' read as an empty text", row)


def wrong_type(
    raw: RawData,
    row: int,
    column: str,
    key: str,
    value: Any,
    expected: str = "text",
    fix: str = "ftl would train on its printed form: put the text itself in the column",
) -> FtlError:
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
        f"{raw.row_location(row)}: column '{column}' ({key}) holds {kind} ({shown}) where {expected} is expected; "
        f"{fix}"
    )
