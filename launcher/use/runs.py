"""`ftl runs DIR`: every run directory below DIR (trials of searches and folds, stages of staged runs), one row
each, read from the files a run leaves: recipe.resolved.yaml (validated like any recipe; a run whose recipe does not
validate is still listed, its reason in `error`), manifest.json, metrics.json, checkpoints/.

Status:
  finished               metrics.json written (the run ended and saved its model)
  trained, no model      metrics.json but no model/ (an ftl bench cell: training only)
  failed                 its search's trials.csv says the trial failed, or its cluster job record (ftl-job.json) does
  stopped early          its search's scheduler stopped the trial (trials.csv)
  running or interrupted checkpoints but no metrics.json: still training, or killed (ftl run --resume continues it)
  incomplete             neither: killed, or still running, before its first checkpoint
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from ftl.launcher.console import log, out
from ftl.launcher.errors import FtlError, did_you_mean, one_of
from ftl.launcher.recipe.loader import load_recipe
from ftl.launcher.recipe.schema import Recipe
from ftl.launcher.train.outcome import is_outcome
from ftl.launcher.train.rundir import RunDir

RECIPE_FILE = "recipe.resolved.yaml"
_NOT_RUNS = {"model", "checkpoints", "tensorboard", "ray", "base_model", "plots", "__pycache__", ".git"}
_NOT_RUNS |= {"mlartifacts", "wandb"}  # trackers' copies of a run's files
COLUMNS = ("name", "task", "model", "status", "steps", "time", "started")  # sortable besides metrics


@dataclass
class RunInfo:
    path: Path
    name: str  # the path below the listed folder
    task: str
    model: str
    status: str
    metrics: dict[str, float] = field(default_factory=dict)  # final (or latest) evaluation, without eval_
    main_metrics: list[str] = field(default_factory=list)  # the task's main metric first
    modes: dict[str, str] = field(default_factory=dict)  # metric -> max | min
    steps: int | None = None
    seconds: float | None = None
    started: datetime | None = None
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "task": self.task,
            "model": self.model,
            "status": self.status,
            "metrics": self.metrics,
            "steps": self.steps,
            "seconds": self.seconds,
            "started": self.started.isoformat(timespec="seconds") if self.started else None,
            "error": self.error,
        }


def find_runs(root: Path) -> list[Path]:
    """Run directories at or below `root`, in path order (a run's own subfolders are searched too: stages and
    the folds of a cross-validated trial are runs of their own)."""
    return _walk(root)[0]


def _walk(root: Path) -> tuple[list[Path], list[Path]]:
    """(run directories, searches' trials.csv files) at or below root."""
    runs, tables = [], []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in _NOT_RUNS and not d.startswith("."))
        if RECIPE_FILE in files:
            runs.append(Path(directory))
        if "trials.csv" in files:
            tables.append(Path(directory) / "trials.csv")
    return runs, tables


def list_runs(root: Path, *, sort: str | None = None, as_json: bool = False) -> list[RunInfo]:
    """`ftl runs`: the table (or JSON) on stdout."""
    runs = sort_runs(describe_runs(root), sort)
    if as_json:
        out.print(json.dumps([run.as_json() for run in runs], indent=2), markup=False)
        return runs
    if not runs:
        log(f"no runs below {root} (a run directory holds {RECIPE_FILE})")
        return runs
    from rich.console import Console

    table = runs_table(runs, metric_columns(runs, sort), title=f"runs in {root}")
    (out if out.is_terminal else Console(highlight=False, width=240)).print(table)
    return runs


def describe_runs(root: Path) -> list[RunInfo]:
    if not root.is_dir():
        raise FtlError(
            f"{root}: no such directory" if not root.exists() else f"{root}: is a file, not a folder"
        )
    runs, tables = _walk(root)
    verdicts = _search_verdicts([*tables, root.resolve().parent / "trials.csv"])
    return [describe(path, root, verdicts) for path in runs]


def describe(path: Path, root: Path | None = None, verdicts: dict[Path, Verdict] | None = None) -> RunInfo:
    """What a run directory says about itself (finished or not)."""
    manifest = _read_json(path / "manifest.json")
    final = _read_json(path / "metrics.json")
    name = str(path.relative_to(root)) if root is not None and path != root else path.resolve().name
    info = RunInfo(path, name, "?", "?", "finished")
    try:
        loaded = load_recipe(path / RECIPE_FILE)
    except FtlError as exc:  # e.g. a recipe of another ftl version: the run is still listed, with the reason
        info.error = f"recipe: {exc}"
    else:
        recipes = [plan.loaded.recipe for plan in loaded.stages] or [loaded.recipe]
        info.task = _task_name(loaded.recipe, recipes)
        info.model = _model_name(loaded.recipe)
        info.main_metrics = [recipes[-1].task.main_metric]
        info.modes = dict(recipes[-1].task.metrics)
    if final:
        info.metrics = _numbers(final)
        info.steps = final.get("train_steps")
        if not (path / "model").is_dir():  # ftl bench's cells train without evaluating or saving a model
            info.status = "trained, no model"
    else:
        checkpoint = _last_checkpoint(path)
        state = _read_json(checkpoint / "trainer_state.json") if checkpoint else {}
        history = state.get("log_history", [])
        evaluations = [entry for entry in history if any(k.startswith("eval_") for k in entry)]
        info.metrics = _numbers(evaluations[-1]) if evaluations else {}
        info.steps = state.get("global_step")
        verdict = (verdicts or {}).get(path.resolve())
        job = _read_json(path / "ftl-job.json").get("outcome")
        if verdict is not None and verdict.status in ("error", "stopped early"):
            info.status = "failed" if verdict.status == "error" else "stopped early"
            info.error = verdict.error or info.error
            info.metrics = (
                info.metrics or verdict.metrics
            )  # a finished search removes its trials' checkpoints
            info.seconds = verdict.seconds
        elif job in ("failed", "interrupted"):
            info.status = "failed" if job == "failed" else "interrupted"
        else:
            info.status = "running or interrupted" if checkpoint else "incomplete"
    info.seconds = manifest.get("wall_seconds", info.seconds)
    info.started = _started(path, manifest)
    return info


def sort_runs(runs: list[RunInfo], key: str | None) -> list[RunInfo]:
    """By a metric (best first, by the metric's mode) or a column; runs without the value last."""
    if key is None:
        return runs
    if key in COLUMNS:
        present = [r for r in runs if _column(r, key) is not None]
        missing = [r for r in runs if _column(r, key) is None]
        return sorted(present, key=lambda r: _column(r, key), reverse=key == "started") + missing
    metric = key.removeprefix("eval_")
    known = sorted({m for r in runs for m in r.metrics})
    if metric not in known:
        raise FtlError(
            f"--sort: no run here has a metric '{key}'{did_you_mean(metric, [*known, *COLUMNS])}; "
            f"metrics: {one_of(known) or 'none yet'}; columns: {', '.join(COLUMNS)}"
        )
    mode = next((r.modes[metric] for r in runs if metric in r.modes), "min" if "loss" in metric else "max")
    present = [r for r in runs if _finite(r.metrics.get(metric))]
    missing = [r for r in runs if not _finite(r.metrics.get(metric))]
    return sorted(present, key=lambda r: r.metrics[metric], reverse=mode == "max") + missing


def metric_columns(runs: list[RunInfo], sort: str | None) -> list[str]:
    """The main metrics of the runs' tasks, eval loss, and the sort metric."""
    columns: list[str] = []
    for run in runs:
        for metric in run.main_metrics[:1]:
            if metric not in columns:
                columns.append(metric)
    if sort and sort not in COLUMNS and sort.removeprefix("eval_") not in columns:
        columns.append(sort.removeprefix("eval_"))
    if "loss" not in columns:
        columns.append("loss")
    return [c for c in columns if any(c in r.metrics for r in runs)]


def runs_table(runs: list[RunInfo], metrics: list[str], title: str):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title), title_justify="left")
    for column in ("name", "task", "model", "status", *metrics, "steps", "time", "started"):
        table.add_column(column, justify="right" if column in (*metrics, "steps", "time") else "left")
    style = {"finished": "green", "failed": "red", "stopped early": "yellow"}
    for run in runs:
        status = f"[{style[run.status]}]{run.status}[/]" if run.status in style else run.status
        table.add_row(
            escape(run.name),
            escape(run.task),
            escape(run.model),
            status,
            *[_number(run.metrics.get(m)) for m in metrics],
            "-" if run.steps is None else str(run.steps),
            duration(run.seconds),
            run.started.astimezone().strftime("%Y-%m-%d %H:%M") if run.started else "-",
        )
    return table


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, rest = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{rest:02d}s" if minutes else f"{rest}s")


# ---- reading a run directory ---------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        key.removeprefix("eval_"): float(value)
        for key, value in metrics.items()
        if key.startswith("eval_")
        and is_outcome(key)
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
    }


def _task_name(recipe: Recipe, recipes: list[Recipe]) -> str:
    if recipe.stages:
        return "stages: " + " > ".join(stage.task.type for stage in recipes)
    return recipe.task.type


def _model_name(recipe: Recipe) -> str:
    model = recipe.model
    name = model.name_or_path or next(iter(model.local_copies), None)
    if not name and model.config:
        name = f"{model.config.get('model_type', '?')} (from config)"
    name = str(name or "?")
    if "/" in name and Path(name).is_absolute():
        name = "/".join(Path(name).parts[-2:])
    return name + (" + LoRA" if recipe.lora else "")


def _last_checkpoint(path: Path) -> Path | None:
    return RunDir(path).last_checkpoint()


def _started(path: Path, manifest: dict[str, Any]) -> datetime | None:
    """manifest: its time (written at the end) minus the wall time; else when the recipe was written."""
    created = manifest.get("created")
    if created:
        try:
            ended = datetime.fromisoformat(created)
            return ended - timedelta(seconds=float(manifest.get("wall_seconds") or 0))
        except ValueError:
            pass
    try:
        return datetime.fromtimestamp((path / RECIPE_FILE).stat().st_mtime, tz=timezone.utc)
    except OSError:
        return None


@dataclass
class Verdict:
    """A trial's row of its search's trials.csv."""

    status: str  # completed | stopped early | error
    error: str
    metrics: dict[str, float]  # its last evaluation (eval_* columns)
    seconds: float | None


def _search_verdicts(tables: list[Path]) -> dict[Path, Verdict]:
    """Trial run directory -> its row of a search's trials.csv."""
    verdicts: dict[Path, Verdict] = {}
    for table in tables:
        try:
            with table.open(encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
        except OSError:
            continue
        for row in rows:
            if row.get("run_dir"):
                verdicts[Path(row["run_dir"]).resolve()] = Verdict(
                    row.get("status", ""),
                    row.get("error", ""),
                    _numbers({k: _float(v) for k, v in row.items() if k and k.startswith("eval_")}),
                    _float(row.get("seconds")),
                )
    return verdicts


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _column(run: RunInfo, key: str):
    return {
        "name": run.name,
        "task": run.task,
        "model": run.model,
        "status": run.status,
        "steps": run.steps,
        "time": run.seconds,
        "started": run.started,
    }[key]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)


def _number(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
