"""What one Ray Tune trial runs: the base recipe with the trial's values, as an ftl run in its own directory.

A trial reports at every evaluation (with the checkpoint written there), so schedulers decide on fresh
numbers and a restarted trial resumes from its last checkpoint. Its output goes to <trial>/train.log, not to
the search's terminal. A trial whose recipe scales out runs its own Ray Train workers.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FINAL = "final"  # key of the last report: the run's final evaluation (the best weights when selecting best)


@dataclass
class TrialSetup:
    """Everything a trial needs besides its sampled values (shipped to the trial's Ray worker)."""

    base: dict[str, Any]  # the validated base recipe (with its tune section)
    recipe_path: str
    search_dirs: list[str]
    trials_dir: str
    env: dict[str, str] = field(default_factory=dict)
    pbt: bool = False


def run_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """Ray Tune function trainable."""
    os.environ.update(setup.env)
    from ftl.launcher.console import quiet_library_notices

    quiet_library_notices()
    from ray import tune

    from ftl.launcher.recipe.loader import LoadedRecipe
    from ftl.launcher.recipe.schema import Recipe
    from ftl.tune.space import decode

    base = Recipe.model_validate(setup.base)
    values = decode(config, base.tune) if base.tune is not None else dict(config)
    recipe = trial_recipe(base, values)
    name = trial_dir_name(config, tune.get_context().get_trial_id())
    rundir_path = Path(setup.trials_dir) / name
    loaded = LoadedRecipe(
        recipe=recipe, path=Path(setup.recipe_path), dirs=[Path(d) for d in setup.search_dirs]
    )
    rundir_path.mkdir(parents=True, exist_ok=True)
    if base.tune is not None and base.tune.cv is not None and "data.fold" not in config:
        from ftl.tune.folded import run_folds

        means = run_folds(setup, base, values, rundir_path)
        tune.report({**means, "evaluation": 1, FINAL: 1, "run_dir": str(rundir_path)})
        return
    metrics = finished_run(rundir_path, recipe)
    if metrics is None:
        with output_to(rundir_path / "train.log"):
            metrics = _train(loaded, rundir_path, pbt=setup.pbt)
    from ftl.launcher.distributed.storage import evaluation_count
    from ftl.launcher.train.rundir import RunDir

    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    history = RunDir(rundir_path).read_json("log_history.json").get("log_history", [])
    tune.report({**numbers, "evaluation": evaluation_count(history), FINAL: 1, "run_dir": str(rundir_path)})


def trial_recipe(base, values: dict[str, Any]):
    """The base recipe with a trial's values; the trial keeps its best checkpoint by the search's metric."""
    from ftl.launcher.recipe.variants import objective, with_values

    metric, _ = objective(base)
    return with_values(base, {"eval.metric": metric.removeprefix("eval_"), **values})


def finished_run(rundir_path: Path, recipe) -> dict[str, Any] | None:
    """The final metrics of a run directory that already finished this exact recipe, else None.

    A driver killed after a trial finished but before it recorded the result restarts that trial on resume;
    the finished run is then reported again instead of being trained again."""
    from ftl.launcher.train.rundir import RunDir

    rundir = RunDir(rundir_path)
    metrics = rundir.read_json("metrics.json")
    if not metrics or not (rundir.model / "config.json").exists() or not rundir.recipe_file.exists():
        return None
    try:
        same = rundir.read_recipe() == recipe
    except Exception:  # noqa: BLE001 - an unreadable recipe means: train again
        return None
    return metrics if same else None


def trial_dir_name(config: dict[str, Any], trial_id: str) -> str:
    """trial-<id>, or fold-<i> for a cross-validation fold."""
    fold = config.get("data.fold")
    if isinstance(fold, dict) and "index" in fold and len(config) == 1:
        return f"fold-{fold['index']}"
    return f"trial-{trial_id}"


def _train(loaded, rundir_path: Path, *, pbt: bool) -> dict[str, Any]:
    from ray import tune

    from ftl.launcher.distributed.storage import RayStorageReporter
    from ftl.launcher.train.run import execute
    from ftl.launcher.train.rundir import RunDir
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
    callbacks: list[Any] = [RayStorageReporter(report, best_of=best_of)]
    if pbt:
        callbacks.append(OptimizerSettingsRefresh(recipe.train.lr, recipe.train.weight_decay))
    return execute(loaded, rundir, announce_resume=True, callbacks=callbacks)


def _train_on_workers(loaded, rundir) -> dict[str, Any]:
    """A multi-worker trial: Ray Train workers report through Ray Train, which forwards to Tune."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from ftl.launcher.distributed.ray_launch import launch

    recipe = loaded.recipe
    if recipe.distributed.storage_path is None:  # workers report checkpoints only through Ray storage
        distributed = recipe.distributed.model_copy(
            update={"storage_path": str(rundir.root.resolve() / "ray")}
        )
        loaded.recipe = recipe.model_copy(update={"distributed": distributed})
    return launch(loaded, rundir, resume=True, run_callbacks=[TuneReportCallback()])


@contextlib.contextmanager
def output_to(path: Path):
    """Send this process's stdout and stderr (Python and native) to a file while the trial trains."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a", encoding="utf-8") as log_file:
        os.dup2(log_file.fileno(), 1)
        os.dup2(log_file.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
