"""The one exception type for mistakes a user can make (bad recipe, data, arguments).

The CLI prints its message as a single line and exits with code 2; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FtlError(Exception):
    """A user-caused error: one line that names what and where, and what would fix it."""

    exit_code = 2
    transient = False  # the same command may work again by itself (a full disk freed, the hub back online)


class TransientFtlError(FtlError):
    """An FtlError whose cause may pass without a change to the recipe or data: a search retries its trial."""

    transient = True


def did_you_mean(word: str, choices: Iterable[str], *, n: int = 1, cutoff: float = 0.6) -> str:
    """Return ' (did you mean 'x'?)' when a close match exists, else ''."""
    choices = [str(c) for c in choices]
    close = difflib.get_close_matches(str(word), choices, n=n, cutoff=cutoff)
    if not close:
        lowered = {c.lower(): c for c in choices}
        if str(word).lower() in lowered:
            close = [lowered[str(word).lower()]]
    if not close:
        return ""
    return " (did you mean " + " or ".join(f"'{c}'" for c in close) + "?)"


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (libraries put the useful part first), or its type."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def one_of(choices: Iterable[str], limit: int = 12) -> str:
    """'a, b, c' (truncated) for error messages listing valid values."""
    items = [str(c) for c in choices]
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")
