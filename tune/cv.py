"""`ftl cv`: k-fold cross-validation of a recipe, the folds run as parallel Ray Tune trials.

Fold i is the recipe with `data.fold: {folds: k, index: i, ...}`: it validates on fold i of the training data
and trains on the others, in its own run directory <output>/trials/fold-<i>. The result is every metric per
fold and its mean ± standard deviation (sample std, ddof=1) over the folds, in cv.json and cv.csv.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ftl.launcher.console import console, log
from ftl.launcher.errors import FtlError
from ftl.launcher.files import atomic_write
from ftl.launcher.recipe.folds import KFold
from ftl.launcher.recipe.loader import LoadedRecipe
from ftl.launcher.recipe.variants import InvalidVariant, objective, with_values
from ftl.launcher.train.outcome import is_outcome
from ftl.tune import tuner as setup
from ftl.tune.results import all_failed, collect, drop_checkpoints
from ftl.tune.tracking import SearchTracking


def fold_spec(recipe, folds: int | None, group_by: str | None) -> KFold:
    """tune.cv (or the defaults) with the command line's --folds and --group-by on top."""
    base = recipe.tune.cv if recipe.tune is not None and recipe.tune.cv is not None else KFold()
    values = base.model_dump()
    if folds is not None:
        values["folds"] = folds
    if group_by is not None:
        values["group_column"] = group_by
    try:
        return KFold.model_validate(values)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        raise FtlError(f"--folds/--group-by: {error['msg'].removeprefix('Value error, ')}") from None


@setup.removes_unused_output
def run_cv(
    loaded: LoadedRecipe,
    output: Path,
    *,
    folds: int | None = None,
    group_by: str | None = None,
    resume: bool = False,
    address: str | None = None,
) -> dict[str, Any]:
    recipe = loaded.recipe
    if loaded.stages:
        raise FtlError(
            "ftl cv: a staged recipe cannot be cross-validated as a whole; cross-validate one stage's recipe"
        )
    if recipe.data.validation is not None:
        raise FtlError(
            "ftl cv: folds split the training data into train and validation; remove data.validation from the recipe"
        )
    spec = fold_spec(recipe, folds, group_by)
    fold_values = [{"data.fold": {**spec.model_dump(), "index": i}} for i in range(spec.folds)]
    try:
        first = with_values(recipe, fold_values[0])
    except InvalidVariant as exc:
        raise FtlError(f"ftl cv: {exc}") from None
    metric, mode = objective(recipe)
    if not resume:
        setup.preflight_data(loaded, first)  # fold 0 as its trial reads it: a fold count the data refuses
    search = setup.SearchDir.open(
        output,
        resume=resume,
        record={
            "kind": "cv",
            "folds": spec.model_dump(),
            "metric": metric,
            "recipe": recipe.model_dump(mode="json", exclude={"extends"}),
        },
        verb="cross-validation",
    )
    setup.announce("cv", search, f"{spec.folds} folds ({spec.method}), {metric}")
    setup.start_ray(replace(loaded, recipe=first), address or recipe.distributed.address)
    # each trial here is one fold (a search's tune.cv folds inside a trial do not apply)
    one_fold = (
        recipe.model_copy(update={"tune": recipe.tune.model_copy(update={"cv": None})})
        if recipe.tune
        else recipe
    )
    tracking = SearchTracking.open(loaded, search.root, "cv", {"cv": {"metric": metric, **spec.model_dump()}})
    function = setup.trainable(setup.trial_setup(loaded, search, env=tracking.trial_env()), one_fold)
    from ftl.tune.live import TrialTable

    table = TrialTable(
        metric,
        mode,
        [],
        title=f"ftl cv {recipe.name} ({spec.folds} folds)",
        interactive=setup.is_interactive(),
        label=lambda trial: f"fold {trial.config['data.fold']['index']}",
    )
    tuner = setup.restore(search, function, table) if resume else None
    if tuner is None:
        from ray import tune
        from ray.tune import TuneConfig, Tuner

        max_failures = recipe.tune.max_failures if recipe.tune else 2
        max_concurrent = recipe.tune.max_concurrent if recipe.tune else None
        tuner = Tuner(
            function,
            param_space={"data.fold": tune.grid_search([v["data.fold"] for v in fold_values])},
            tune_config=TuneConfig(
                metric=metric,
                mode=mode,
                num_samples=1,
                max_concurrent_trials=setup.concurrency(one_fold, max_concurrent),
            ),
            run_config=setup.run_config(search, max_failures=max_failures, callbacks=[table]),
        )
    with tracking.ended_on_failure():
        grid = setup.fit(tuner, table, search, "cross-validation")
        trials = collect(grid, None)
        if not (recipe.tune and recipe.tune.keep_checkpoints):
            drop_checkpoints(search, trials)
        summary = summarise(trials, search.root, metric, spec.folds)
    means = {
        f"{name}_{kind}": values[kind]
        for name, values in summary["metrics"].items()
        for kind in ("mean", "std")
    }
    tracking.finish(trials, None, metric, [search.root / "cv.json", search.root / "cv.csv"], summary=means)
    return summary


def summarise(trials, root: Path, metric: str, k: int) -> dict[str, Any]:
    """Per-fold metrics and their mean ± std; written to cv.json and cv.csv and printed."""
    per_fold: dict[int, dict[str, float]] = {}
    failed = []
    for trial in trials:
        index = int(trial.values["data.fold"]["index"])
        if trial.status != "completed":
            failed.append((index, trial.error or trial.status))
            continue
        per_fold[index] = {
            key: float(value)
            for key, value in trial.metrics.items()
            if key.startswith("eval_") and isinstance(value, (int, float)) and is_outcome(key)
        }
    names = sorted(
        {name for metrics in per_fold.values() for name in metrics}, key=lambda n: (n != metric, n)
    )
    summary: dict[str, Any] = {"folds": k, "completed": sorted(per_fold), "metrics": {}}
    for name in names:
        values = [per_fold[i][name] for i in sorted(per_fold) if name in per_fold[i]]
        summary["metrics"][name] = {
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "per_fold": values,
        }
    if failed:
        summary["failed"] = [{"fold": i, "error": e} for i, e in failed]
    atomic_write(root / "cv.json", json.dumps(summary, indent=2) + "\n")
    _write_csv(root / "cv.csv", per_fold, names)
    _print(summary, per_fold, names, metric)
    if not per_fold:
        failures = [(f"fold {i}", error) for i, error in sorted(failed)]
        raise all_failed("cv", "fold", k, failures, f"{root}/trials/fold-*/train.log")
    return summary


def _write_csv(path: Path, per_fold: dict[int, dict[str, float]], names: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["fold", *names])
    for index in sorted(per_fold):
        writer.writerow([index, *[per_fold[index].get(n, "") for n in names]])
    atomic_write(path, buffer.getvalue())


def _print(
    summary: dict[str, Any], per_fold: dict[int, dict[str, float]], names: list[str], metric: str
) -> None:
    from rich.table import Table

    table = Table(title="cross-validation", title_justify="left")
    table.add_column("fold")
    for name in names:
        table.add_column(name.removeprefix("eval_"), justify="right")
    for index in sorted(per_fold):
        table.add_row(str(index), *[f"{per_fold[index].get(n, float('nan')):.4f}" for n in names])
    table.add_row(
        "[bold]mean ± std[/]",
        *[
            f"[bold]{summary['metrics'][n]['mean']:.4f} ± {summary['metrics'][n]['std']:.4f}[/]"
            for n in names
        ],
    )
    console.print(table)
    for failure in summary.get("failed", []):
        log(f"[red]fold {failure['fold']} failed[/]: {failure['error']}")
    if metric in summary["metrics"]:
        m = summary["metrics"][metric]
        done = len(summary["completed"])
        log(
            f"[bold green]{metric.removeprefix('eval_')}: {m['mean']:.4f} ± {m['std']:.4f}[/] over {done} of "
            f"{summary['folds']} folds"
        )
