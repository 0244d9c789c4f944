"""Which evaluation numbers are outcomes (kept in metrics.json) and which are timing noise."""

from __future__ import annotations

from typing import Any

_TIMING_SUFFIXES = ("_runtime", "_per_second", "_preparation_time")


def is_outcome(key: str) -> bool:
    return not key.endswith(_TIMING_SUFFIXES)


def outcomes(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if is_outcome(k)}


def numeric(metrics: dict[str, Any]) -> dict[str, int | float]:
    """The numbers among a run's metrics (what Ray Train and Ray Tune can report; no nested 'before', no text)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
