"""What a search leaves behind: trials.csv, best.yaml (a complete runnable recipe), plots and a summary."""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ftl.launcher.console import console, log
from ftl.launcher.errors import FtlError
from ftl.launcher.files import atomic_write
from ftl.launcher.locations import find_local, looks_local
from ftl.launcher.recipe.loader import LoadedRecipe
from ftl.launcher.train.outcome import is_outcome
from ftl.tune.plots import write_plots
from ftl.tune.space import decode, short_names, shown
from ftl.tune.trial_runs import FINAL, trial_recipe


@dataclass
class TrialOutcome:
    trial_id: str
    status: str  # completed | stopped early | error
    values: dict[str, Any]
    metrics: dict[str, Any]
    run_dir: str | None
    error: str | None = None

    @property
    def evaluations(self) -> int:
        return int(self.metrics.get("evaluation", 0) or 0)

    @property
    def epoch(self) -> float:
        return float(self.metrics.get("epoch", 0.0) or 0.0)

    def score(self, metric: str) -> float | None:
        value = self.metrics.get(metric)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value):
            return float(value)
        return None


@dataclass
class SearchResults:
    metric: str
    mode: str
    trials: list[TrialOutcome]
    best: TrialOutcome | None
    best_recipe: Path | None = None
    plots: list[Path] = field(default_factory=list)

    @property
    def trial_epochs(self) -> float:
        """Training spent by the whole search, in epochs summed over trials."""
        return sum(trial.epoch for trial in self.trials)


def collect(grid, tune_section) -> list[TrialOutcome]:
    """One outcome per trial of a Ray Tune ResultGrid."""
    outcomes = []
    for result in grid:
        metrics = dict(result.metrics or {})
        config = dict(result.config or {})
        trial_id = str(metrics.get("trial_id") or Path(result.path).name)
        if result.error is None and not metrics.get("training_iteration"):
            continue  # created by the searcher but never started (the search ended first)
        if result.error is not None:
            status = "error"
        elif FINAL in metrics:
            status = "completed"
        else:
            status = "stopped early"
        values = decode(config, tune_section) if tune_section is not None else config
        outcomes.append(
            TrialOutcome(
                trial_id=trial_id,
                status=status,
                values=values,
                metrics=metrics,
                run_dir=metrics.get("run_dir"),
                error=_last_line(result.error) if result.error is not None else None,
            )
        )
    return sorted(outcomes, key=lambda t: t.trial_id)


def all_failed(
    verb: str, noun: str, total: int, failures: list[tuple[str, str | None]], logs: str
) -> FtlError:
    """The one line (exit 2) of a search or cross-validation none of whose `total` trials (or folds)
    succeeded: how many, the first failure's error where it is known (failures: (label, error) in order),
    and where the logs are. Shared by ftl tune and ftl cv."""
    first = next(((label, error) for label, error in failures if error), None)
    why = ""
    if first is not None:  # a trial's FtlError arrives through Ray as "ftl.launcher.errors.FtlError: ..."
        why = f" (the first, {first[0]}: {first[1].removeprefix(f'{FtlError.__module__}.FtlError: ')})"
    return FtlError(f"ftl {verb}: all {total} {noun}{'s' if total != 1 else ''} failed{why}; see {logs}")


def pick_best(trials: list[TrialOutcome], metric: str, mode: str) -> TrialOutcome | None:
    """The best completed trial (trials stopped early only when none completed)."""
    for pool in (
        [t for t in trials if t.status == "completed"],
        [t for t in trials if t.status != "error"],
    ):
        scored = [t for t in pool if t.score(metric) is not None]
        if scored:
            sign = 1 if mode == "max" else -1
            return max(scored, key=lambda t: sign * t.score(metric))
    return None


def write_outputs(loaded: LoadedRecipe, search, grid, *, metric: str, mode: str) -> SearchResults:
    tune_section = loaded.recipe.tune
    trials = collect(grid, tune_section)
    results = SearchResults(metric, mode, trials, pick_best(trials, metric, mode))
    keys = list(tune_section.space)
    write_trials_csv(search.root / "trials.csv", trials, keys, metric)
    if results.best is not None:
        results.best_recipe = write_best_recipe(loaded, search.root, results.best, metric, len(trials))

    results.plots = write_plots(loaded.recipe, search)
    if not tune_section.keep_checkpoints:
        drop_checkpoints(search, trials)
    print_summary(results, keys, search.root)
    return results


def write_trials_csv(path: Path, trials: list[TrialOutcome], keys: list[str], metric: str) -> None:
    extra = sorted(
        {
            k
            for t in trials
            for k in t.metrics
            if k.startswith("eval_") and k != metric and is_outcome(k) and _is_number(t.metrics[k])
        }
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        ["trial", "status", *keys, metric, *extra, "evaluations", "epoch", "seconds", "run_dir", "error"]
    )
    for trial in trials:
        writer.writerow(
            [
                trial.trial_id,
                trial.status,
                *[shown(trial.values.get(key, "")) for key in keys],
                trial.metrics.get(metric, ""),
                *[trial.metrics.get(k, "") for k in extra],
                trial.evaluations,
                round(trial.epoch, 4),
                round(float(trial.metrics.get("time_total_s", 0.0) or 0.0), 1),
                trial.run_dir or "",
                trial.error or "",
            ]
        )
    atomic_write(path, buffer.getvalue())


def write_best_recipe(loaded: LoadedRecipe, root: Path, best: TrialOutcome, metric: str, count: int) -> Path:
    """The base recipe with the best trial's values: complete, runnable with `ftl run` from anywhere."""
    recipe = trial_recipe(loaded.recipe, best.values)
    data = recipe.model_dump(mode="json", exclude={"extends", "tune"})
    _make_paths_portable(data, loaded.search_dirs, root)
    values = ", ".join(f"{k}={shown(v)}" for k, v in best.values.items())
    header = (
        f"# Best of {count} trial(s) of `ftl tune {loaded.path}`: trial {best.trial_id}, "
        f"{metric} {best.metrics.get(metric):.4f}\n# values: {values}\n# run it: ftl run {root / 'best.yaml'}\n"
    )
    if loaded.recipe.tune.scheduler_type == "pbt":
        header += (
            "# PBT: these are the trial's last values; its weights grew through other trials' checkpoints and "
            "changing values,\n# so this recipe trains with constant values and need not reach the same score\n"
        )
    path = root / "best.yaml"
    atomic_write(path, header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def print_summary(results: SearchResults, keys: list[str], root: Path) -> None:
    from rich.table import Table

    metric = results.metric
    table = Table(title=f"trials ({results.mode}imise {metric})", title_justify="left")
    for column in ["trial", "status", *short_names(keys), metric.removeprefix("eval_"), "evals", "epochs"]:
        table.add_column(column, justify="left" if column in ("trial", "status") else "right", no_wrap=True)
    for trial in results.trials:
        score = trial.score(metric)
        cell = f"{score:.4f}" if score is not None else "-"
        if trial is results.best:
            cell = f"[bold green]{cell} *[/]"
        status = trial.status if trial.error is None else f"error: {trial.error[:60]}"
        table.add_row(
            trial.trial_id,
            status,
            *[shown(trial.values.get(k, "-")) for k in keys],
            cell,
            str(trial.evaluations),
            f"{trial.epoch:.2f}",
        )
    console.print(table)
    _print_by_model(results, keys)
    counts = {s: sum(t.status == s for t in results.trials) for s in ("completed", "stopped early", "error")}
    log(
        f"{counts['completed']} completed, {counts['stopped early']} stopped early, {counts['error']} failed; "
        f"{results.trial_epochs:.2f} trial-epochs in all"
    )
    if results.best is not None:
        log(f"[bold green]best[/]: trial {results.best.trial_id} {metric} {results.best.score(metric):.4f}")
        log(f"best recipe: {results.best_recipe}  (ftl run {results.best_recipe})")
    log(f"trials: {root / 'trials.csv'}" + (f"; plots: {root / 'plots'}" if results.plots else ""))


def _print_by_model(results: SearchResults, keys: list[str]) -> None:
    """A search over models (a key under model.) gets one line per model: trials, best and mean."""
    model_keys = [k for k in keys if k == "model" or k.startswith("model.")]
    if not model_keys:
        return
    from rich.table import Table

    key = model_keys[0]
    metric = results.metric
    table = Table(title=f"by {key}", title_justify="left")
    for column in (key, "trials", "completed", f"best {metric}", f"mean {metric}"):
        table.add_column(column, justify="left" if column == key else "right")
    groups: dict[str, list[TrialOutcome]] = {}
    for trial in results.trials:
        groups.setdefault(shown(trial.values.get(key)), []).append(trial)
    sign = 1 if results.mode == "max" else -1
    for value, members in groups.items():
        scores = [t.score(metric) for t in members if t.score(metric) is not None]
        best = max(scores, key=lambda s: sign * s) if scores else None
        mean = sum(scores) / len(scores) if scores else None
        table.add_row(
            value,
            str(len(members)),
            str(sum(t.status == "completed" for t in members)),
            f"{best:.4f}" if best is not None else "-",
            f"{mean:.4f}" if mean is not None else "-",
        )
    console.print(table)


def _make_paths_portable(data: dict[str, Any], search_dirs: list[Path], target: Path) -> None:
    """Relative paths found next to the original recipe, rewritten relative to the new recipe's directory."""

    def rebase(value: str | None) -> str | None:
        if (
            not value
            or os.path.isabs(value)
            or value.startswith(("package:", "~"))
            or (target / value).exists()
        ):
            return value
        found = find_local(value, search_dirs)
        if found is None:
            return value  # not local (a hub id): unchanged
        return os.path.relpath(found.resolve(), target.resolve())

    for split in ("train", "validation"):
        source = data["data"].get(split)
        if isinstance(source, dict) and source.get("path"):
            source["path"] = rebase(source["path"])
    model = data["model"]
    for key in ("name_or_path", "tokenizer"):
        if model.get(key) and (
            looks_local(model[key]) or any((d / model[key]).exists() for d in search_dirs)
        ):
            model[key] = rebase(model[key])
    model["local_copies"] = [rebase(copy) for copy in model.get("local_copies", [])]


def drop_checkpoints(search, trials: list[TrialOutcome]) -> None:
    """Finished trials keep their final model, not their (large) intermediate checkpoints; failed trials keep
    theirs, so that `--resume` retries them from where they failed."""
    for trial in trials:
        if trial.status == "error":
            continue
        if trial.run_dir:  # its own, its folds' (tune.cv) and its Ray Train storage (multi-worker trials)
            for folder in [Path(trial.run_dir) / "ray", *Path(trial.run_dir).rglob("checkpoints")]:
                shutil.rmtree(folder, ignore_errors=True)
        for reported in search.experiment.glob(f"*{trial.trial_id}*/checkpoint_*"):
            shutil.rmtree(reported, ignore_errors=True)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _last_line(error: BaseException) -> str:
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
