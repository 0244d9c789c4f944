"""Markdown tables for the reports ftl writes (bench results, run comparisons), through `tabulate`."""

from __future__ import annotations

from collections.abc import Sequence

from tabulate import tabulate


def table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], *, align: Sequence[str] | None = None
) -> str:
    """A GitHub-flavoured pipe table; cells are shown as given (no number parsing), '|' inside a cell escaped.
    `align`: 'left' or 'right' per column (default left)."""
    escaped = [[str(cell).replace("|", "\\|") for cell in row] for row in rows]
    return tabulate(
        escaped,
        headers=list(headers),
        tablefmt="github",
        disable_numparse=True,
        colalign=tuple(align) if align else None,
    )
