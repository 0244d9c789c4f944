"""Delivery to one tracker on a thread of its own, so that a slow or dead tracker never holds up or stops training.

Calls go out in order. The first one that fails marks the tracker down: ftl warns once (one line), stops
sending to it, and records what it did not deliver (metric names with their steps, and the other items), which
the run reports when it ends.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ftl.launcher.errors import first_line
from ftl.launcher.secrets import redact

_STOP = object()


@dataclass
class Parcel:
    what: str  # "metrics" or a thing named for the report ("final metrics", "model artifact", ...)
    send: Callable[[], Any]
    metrics: dict[str, float] | None = None
    step: int | None = None


@dataclass
class Undelivered:
    steps: dict[str, list[int]] = field(default_factory=dict)  # metric -> steps not delivered
    items: list[str] = field(default_factory=list)

    def add(self, parcel: Parcel) -> None:
        if not parcel.what:  # a marker (Tracking.wait), nothing of the run's
            return
        if parcel.metrics is not None:
            for name in parcel.metrics:
                self.steps.setdefault(name, []).append(parcel.step if parcel.step is not None else -1)
        elif parcel.what not in self.items:
            self.items.append(parcel.what)

    def __bool__(self) -> bool:
        return bool(self.steps or self.items)

    def describe(self) -> str:
        """'loss, learning_rate at steps 20-48 (6 logs); eval_accuracy at step 24; the final metrics'."""
        by_steps: dict[tuple[int, ...], list[str]] = {}
        for name, steps in self.steps.items():
            by_steps.setdefault(tuple(steps), []).append(name)
        parts = []
        for steps, names in by_steps.items():
            shown = sorted(set(steps))
            where = (
                f"step {shown[0]}" if len(shown) == 1 else f"steps {shown[0]}-{shown[-1]} ({len(steps)} logs)"
            )
            parts.append(f"{', '.join(names)} at {where}")
        return "; ".join(parts + self.items)

    def as_json(self) -> dict[str, Any]:
        return {"metrics": {name: steps for name, steps in self.steps.items()}, "items": list(self.items)}


class Courier:
    """One tracker's outbox: `send` never blocks and never raises; `close` waits for what is in flight."""

    def __init__(self, name: str, warn: Callable[[str], None]) -> None:
        self.name = name
        self.warn = warn
        self.down: str | None = None  # the first failure, one line
        self.undelivered = Undelivered()
        self.delivered = 0
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name=f"ftl-{name}", daemon=True)
        self._thread.start()

    def send(self, parcel: Parcel) -> None:
        with self._lock:
            if self.down is not None and parcel.what:  # a marker (no `what`) still runs: someone waits on it
                self.undelivered.add(parcel)
                return
        self._queue.put(parcel)

    def call(self, what: str, send: Callable[[], Any]) -> None:
        self.send(Parcel(what, send))

    def close(self, timeout: float) -> None:
        """Deliver what is queued (at most `timeout` seconds); whatever is left counts as undelivered."""
        self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._fail(f"still busy after {timeout:g}s")
        while True:
            try:
                parcel = self._queue.get_nowait()
            except queue.Empty:
                break
            if parcel is not _STOP:
                with self._lock:
                    self.undelivered.add(parcel)

    def _work(self) -> None:
        while True:
            parcel = self._queue.get()
            if parcel is _STOP:
                return
            with self._lock:
                skip = self.down is not None and parcel.what
            if skip:
                with self._lock:
                    self.undelivered.add(parcel)
                continue
            try:
                parcel.send()
                self.delivered += 1
            except Exception as exc:  # noqa: BLE001 - a tracker's failure must never reach training
                with self._lock:
                    self.undelivered.add(parcel)
                self._fail(_why(exc))

    def _fail(self, why: str) -> None:
        with self._lock:
            if self.down is not None:
                return
            self.down = redact(why)[:300]
        self.warn(
            f"[bold yellow]warning[/]: {self.name} failed ({self.down}); training goes on, and ftl sends nothing "
            f"more to {self.name} in this run (what it missed is listed when the run ends)"
        )


def _why(exc: Exception) -> str:
    """The exception in one line: its type and first line, plus the second when the first only counts errors
    (pydantic's '1 validation error for Settings')."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = first_line(exc)
    if len(lines) > 1 and "error" in lines[0] and lines[0][0].isdigit():
        text = f"{lines[0]}: {' '.join(lines[1:3])}"
    return f"{type(exc).__name__}: {text}"
