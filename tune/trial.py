"""What one Ray Tune trial runs: the base recipe with the trial's values, as an ftl run in its own directory.

A trial reports at every evaluation (with the checkpoint written there), so schedulers decide on fresh
numbers and a restarted trial resumes from its last checkpoint. Its output goes to <trial>/train.log, not to
the search's terminal. A trial whose recipe scales out runs its own Ray Train workers.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from ftl.launcher.console import quiet_library_notices
from ftl.launcher.distributed.ray_launch import launch
from ftl.launcher.distributed.storage import evaluation_count
from ftl.launcher.recipe.loader import LoadedRecipe
from ftl.launcher.train.outcome import numeric
from ftl.launcher.train.rundir import RunDir
from ftl.tune.folded import run_folds
from ftl.tune.space import decode
from ftl.tune.trial_runs import (
    FINAL,
    TrialSetup,
    finished_run,
    not_retrying_ftl_errors,
    output_to,
    trial_dir_name,
    trial_recipe,
)
from ftl.tune.trial_tracking import fold_means, trial_tracking


def run_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """Ray Tune function trainable."""
    os.environ.update(setup.env)  # before the training libraries load: they read it at import
    quiet_library_notices()
    from ray import tune

    base = setup.base.load().recipe
    values = decode(config, base.tune) if base.tune is not None else dict(config)
    recipe = trial_recipe(base, values)
    rundir_path = Path(setup.trials_dir) / trial_dir_name(config, tune.get_context().get_trial_id())
    rundir_path.mkdir(parents=True, exist_ok=True)
    with not_retrying_ftl_errors(rundir_path, setup, config):
        if base.tune is not None and base.tune.cv is not None and "data.fold" not in config:
            tracking = trial_tracking(recipe, rundir_path)  # the parent of its folds' runs
            if tracking:
                setup = replace(setup, env={**setup.env, **tracking.parent_for_children("trial").to_env()})
            means = run_folds(setup, base, values, rundir_path)
            fold_means(tracking, means)
            tune.report({**means, "evaluation": 1, FINAL: 1, "run_dir": str(rundir_path)})
            return
        metrics = finished_run(rundir_path, recipe)
        if metrics is None:
            with output_to(rundir_path / "train.log"):
                metrics = _train(setup.base.load(recipe), rundir_path, pbt=setup.pbt)
    history = RunDir(rundir_path).read_json("log_history.json").get("log_history", [])
    tune.report(
        {**numeric(metrics), "evaluation": evaluation_count(history), FINAL: 1, "run_dir": str(rundir_path)}
    )


def _train(loaded: LoadedRecipe, rundir_path: Path, *, pbt: bool) -> dict[str, Any]:
    from ray import tune

    # the training libraries (torch, transformers) load here, in the trial's own process
    from ftl.launcher.distributed.storage_reporter import RayStorageReporter
    from ftl.launcher.train.execute import execute
    from ftl.tune.checkpoints import OptimizerSettingsRefresh, adopt_checkpoint

    recipe = loaded.recipe
    rundir = RunDir(rundir_path)
    rundir.write_recipe(recipe)  # the values of this (re)start: PBT may have changed them
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            adopt_checkpoint(rundir, Path(folder))
    if recipe.distributed.needs_workers:
        return _train_on_workers(loaded, rundir)

    def report(metrics, folder):
        checkpoint = tune.Checkpoint.from_directory(str(folder)) if folder else None
        tune.report({**metrics, "run_dir": str(rundir_path)}, checkpoint=checkpoint)

    best_of = f"eval_{recipe.eval.metric}" if recipe.eval.select_best else None
    callbacks: list[Any] = [RayStorageReporter(report, best_of=best_of, final_report_follows=True)]
    if pbt:
        callbacks.append(OptimizerSettingsRefresh(recipe.train.lr, recipe.train.weight_decay))
    return execute(loaded, rundir, announce_resume=True, callbacks=callbacks)


def _train_on_workers(loaded: LoadedRecipe, rundir: RunDir) -> dict[str, Any]:
    """A multi-worker trial: Ray Train workers report through Ray Train, which forwards to Tune (they report
    checkpoints only through Ray storage: without a storage_path the trial's own folder serves)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    recipe = loaded.recipe
    if recipe.distributed.storage_path is None:
        distributed = recipe.distributed.model_copy(
            update={"storage_path": str(rundir.root.resolve() / "ray")}
        )
        loaded = replace(loaded, recipe=recipe.model_copy(update={"distributed": distributed}))
    return launch(loaded, rundir, resume=True, run_callbacks=[TuneReportCallback()])
