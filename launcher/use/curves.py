"""A run's curves over training steps: every scalar of its TensorBoard event files (tensorboard's
EventAccumulator), or, for a run without event files (log.tensorboard: false), its log_history.json.

Names follow the event files: train/loss, train/learning_rate, eval/loss, eval/accuracy, ... A resumed run
logs some steps twice; the accumulator drops the events a restart orphaned, and of what remains the last value
of each step is kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ftl.launcher.train.outcome import is_outcome

Points = list[tuple[int, float]]


@dataclass
class Curves:
    source: str  # "tensorboard", "log_history.json" or "none"
    series: dict[str, Points] = field(default_factory=dict)
    problem: str | None = None  # why a log_history.json that is there gave no curves (not valid JSON, ...)


def read_curves(run: Path) -> Curves:
    folders = sorted({event.parent for event in (run / "tensorboard").rglob("events.out.tfevents.*")})
    if folders:
        series: dict[str, dict[int, float]] = {}
        for folder in folders:
            for tag, points in _events(folder).items():
                series.setdefault(tag, {}).update(points)
        if series:  # empty event files: log_history.json may still hold the curves
            return Curves(
                "tensorboard", {tag: sorted(points.items()) for tag, points in sorted(series.items())}
            )
    history_file = run / "log_history.json"
    if history_file.exists():
        history, problem = _read_history(history_file)
        if problem is not None:
            return Curves("none", problem=problem)
        return Curves("log_history.json", _from_history(history))
    return Curves("none")


def _read_history(path: Path) -> tuple[list[dict], str | None]:
    """The entries of a log_history.json, or why it has none: (entries, None) or ([], what is wrong)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        what = "empty" if not exc.doc.strip() else f"not valid JSON (line {exc.lineno}: {exc.msg})"
        return [], f"{path}: {what}"
    except UnicodeDecodeError as exc:
        return [], f"{path}: not valid JSON (not UTF-8 text: {exc.reason})"
    except OSError as exc:
        return [], f"{path}: cannot be read ({exc.strerror or type(exc).__name__})"
    history = document.get("log_history") if isinstance(document, dict) else None
    if not isinstance(history, list):
        return [], f"{path}: not a training log (expected a JSON object with a log_history list)"
    return [entry for entry in history if isinstance(entry, dict)], None


def _events(folder: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={SCALARS: 0})  # 0: keep every point
    accumulator.Reload()
    found: dict[str, dict[int, float]] = {}
    for tag in accumulator.Tags().get("scalars", []):
        if not is_outcome(tag.replace("/", "_")):
            continue
        points = found.setdefault(tag, {})
        for event in accumulator.Scalars(
            tag
        ):  # in logged order: a later value of a step replaces an earlier one
            points[int(event.step)] = float(event.value)
    return found


def _from_history(history: list[dict]) -> dict[str, Points]:
    """log_history entries as the TensorBoard callback names them (eval_x -> eval/x, the rest train/x)."""
    series: dict[str, dict[int, float]] = {}
    for entry in history:
        step = entry.get("step")
        if not isinstance(step, (int, float)) or isinstance(step, bool) or step != step:
            continue
        for key, value in entry.items():
            if key in ("step", "epoch") or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if not is_outcome(key):
                continue
            name = "eval/" + key.removeprefix("eval_") if key.startswith("eval_") else "train/" + key
            series.setdefault(name, {})[int(step)] = float(value)
    return {name: sorted(points.items()) for name, points in sorted(series.items())}
