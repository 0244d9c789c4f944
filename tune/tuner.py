"""Ray Tune set-up shared by `ftl tune` and `ftl cv`: Ray, the output directory, trial resources, resume.

<output>/search.json    what was searched (metric, mode, recipe) -- a resumed search must match it
<output>/recipe.yaml    the base recipe, resolved
<output>/ray/           Ray Tune's experiment state and the trials' reported checkpoints
<output>/trials/        one ftl run directory per trial (trial-<id>/ or fold-<i>/)
"""

from __future__ import annotations

import contextvars
import functools
import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from ftl.launcher.check import check_data, check_model, check_space_values
from ftl.launcher.console import console, log
from ftl.launcher.distributed.ray_launch import connect, forwarded_env, warm_data_cache
from ftl.launcher.errors import FtlError
from ftl.launcher.files import atomic_write, make_dir
from ftl.launcher.recipe.loader import LoadedRecipe
from ftl.launcher.tasks.registry import task_for
from ftl.tune.trial import run_trial
from ftl.tune.trial_runs import TrialSetup

EXPERIMENT = "ray"


_CLAIMED: contextvars.ContextVar[list[SearchDir] | None] = contextvars.ContextVar("claimed", default=None)


def removes_unused_output(function):
    """A search or cross-validation that fails before any trial ran (a refused fold count, data a trial cannot
    read, Ctrl+C while Ray starts) removes the output folder it created, so the same command can run again."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        claimed: list[SearchDir] = []
        token = _CLAIMED.set(claimed)
        try:
            return function(*args, **kwargs)
        except BaseException:
            for search in claimed:
                search.discard_if_unused()
            raise
        finally:
            _CLAIMED.reset(token)

    return wrapper


def preflight_data(loaded: LoadedRecipe, recipe) -> None:
    """Read, encode and split the data once in the driver, and build the model on the meta device, as `ftl
    check` does, before any output folder or trial: a mistake in either is one line now instead of every trial
    failing (and being retried)."""
    task = task_for(recipe.task)
    if recipe.data is not None:
        check_data(recipe.data, task, loaded.search_dirs)
    if loaded.stages:  # (a staged recipe's stages are checked as their runs start)
        return
    check_model(replace(loaded, recipe=recipe), task)
    check_space_values(loaded, recipe)


@dataclass
class SearchDir:
    root: Path
    created: bool = False  # by this command (it did not exist or was empty)

    def discard_if_unused(self) -> None:
        """Remove the folder when no trial has written anything in it yet."""
        trials = self.trials
        if self.created and not (trials.exists() and any(trials.iterdir())):
            shutil.rmtree(self.root, ignore_errors=True)

    @property
    def trials(self) -> Path:
        return self.root / "trials"

    @property
    def experiment(self) -> Path:
        return self.root / EXPERIMENT / "search"

    @property
    def record(self) -> Path:
        return self.root / "search.json"

    @classmethod
    def open(cls, root: Path, *, resume: bool, record: dict[str, Any], verb: str) -> SearchDir:
        """A new empty directory, or with resume the directory of the same search."""
        found = cls(root)
        if root.exists() and not root.is_dir():
            raise FtlError(f"--output: {root} is a file; give a directory for the {verb}")
        occupied = root.exists() and any(root.iterdir())
        if resume:
            if not found.record.exists():
                raise FtlError(f"--resume: {root} holds no {verb} to resume; start it without --resume")
            try:
                before = json.loads(found.record.read_text())
            except (OSError, ValueError) as exc:
                raise FtlError(
                    f"--resume: {found.record} is unreadable ({exc}); start a new {verb}"
                ) from None
            changed = [key for key in record if before.get(key) != record[key]]
            if changed:
                what = "the recipe" if "recipe" in changed else ", ".join(changed)
                raise FtlError(
                    f"--resume: {what} differs from what {root} was started with (see {root}/search.json and "
                    f"recipe.yaml); resume with the same recipe and options, or start anew with another --output"
                )
            return found
        if occupied:
            raise FtlError(
                f"--output: {root} already holds files; pass --resume to continue that {verb}, or choose another "
                "--output"
            )
        make_dir(root, "--output")
        found.created = True
        claimed = _CLAIMED.get()
        if claimed is not None:
            claimed.append(found)
        atomic_write(found.root / "recipe.yaml", yaml.safe_dump(record["recipe"], sort_keys=False))
        atomic_write(found.record, json.dumps(record, indent=2) + "\n")
        return found


def trial_setup(
    loaded: LoadedRecipe, search: SearchDir, *, pbt: bool = False, env: dict[str, str] | None = None
) -> TrialSetup:
    """env: added to the trials' environment (the search's tracker runs, see tune/tracking.py)."""
    return TrialSetup(
        base=loaded.portable(),
        trials_dir=str(search.trials.resolve()),
        env={**forwarded_env(loaded.recipe), **(env or {})},
        pbt=pbt,
    )


def start_ray(loaded: LoadedRecipe, address: str | None) -> None:
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # ftl shows its own trial table, not Ray's boxes
    # Save the search state after every event (not every 10 s), so a killed driver loses at most the last event;
    # a trial whose result was lost that way is reported from its finished run directory, not trained again.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    # Ctrl+C ends ftl (Interrupted) instead of Ray Tune's graceful stop, which marks running trials as finished.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    if address is None:
        warm_data_cache(loaded)  # trials on this machine then load the tokenised data instead of preparing it
    connect(address, forwarded_env(loaded.recipe), worker_output=False)


def trainable(setup: TrialSetup, recipe) -> Any:
    """The trial function with its setup and the resources one trial reserves."""
    from ray import tune

    function = tune.with_parameters(run_trial, setup=setup)
    if recipe.distributed.needs_workers or _folds_per_trial(recipe) > 1:
        # the trial only drives a Ray Train run or fold tasks, which reserve their own resources (Ray refuses
        # an empty reservation, hence a token of memory)
        return tune.with_resources(function, {"cpu": 0, "memory": 2**20})
    resources = recipe.tune.trial_resources if recipe.tune else None
    cpus = resources.cpus if resources else 1.0
    gpus = resources.gpus if resources else 0.0
    return tune.with_resources(function, {"cpu": cpus, "gpu": gpus})


def concurrency(recipe, requested: int | None) -> int | None:
    """Trials at once: as asked, else what the cluster holds (multi-worker trials: whole Ray Train runs)."""
    if requested is not None:
        return requested
    folds = _folds_per_trial(recipe)
    if not recipe.distributed.needs_workers and folds == 1:
        return None  # Tune packs trials by their reserved resources
    import ray

    available = ray.cluster_resources()
    if recipe.distributed.needs_workers:
        d = recipe.distributed
        cpus, gpus = d.workers * d.cpus_per_worker, d.workers * d.gpus_per_worker
    else:
        cpus, gpus = folds * recipe.tune.trial_resources.cpus, folds * recipe.tune.trial_resources.gpus
    fits = available.get("CPU", 0) // cpus
    if gpus:
        fits = min(fits, available.get("GPU", 0) // gpus)
    return max(1, int(fits))


def _folds_per_trial(recipe) -> int:
    return recipe.tune.cv.folds if recipe.tune is not None and recipe.tune.cv is not None else 1


def run_config(search: SearchDir, *, max_failures: int, callbacks: list, keep_all: bool = False) -> Any:
    """keep_all: PBT restores trials from other trials' older checkpoints, so none may be deleted early."""
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig

    return RunConfig(
        name=search.experiment.name,
        storage_path=str(search.experiment.parent.resolve()),
        failure_config=FailureConfig(max_failures=max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=None if keep_all else 2),
        callbacks=callbacks,
        verbose=0,
    )


def restore(search: SearchDir, function: Any, table: Any) -> Any:
    """The interrupted Tuner (None when no state was saved): finished trials keep their results, unfinished and
    failed ones continue from their checkpoints."""
    from ray.tune import Tuner

    if not Tuner.can_restore(str(search.experiment.resolve())):
        log("[yellow]no saved state to resume; starting from the beginning[/]")
        return None
    log("resuming: finished trials keep their results, unfinished ones continue from their checkpoints")
    tuner = Tuner.restore(
        str(search.experiment.resolve()), function, resume_unfinished=True, resume_errored=True
    )
    # Ray Tune does not save callbacks with the experiment: reattach the live table (no public API for this)
    tuner._local_tuner._run_config.callbacks = [table]
    return tuner


class Interrupted(FtlError):
    """The search was stopped (Ctrl+C) with trials unfinished; its state and checkpoints are kept."""

    exit_code = 130


def fit(tuner: Any, table: Any, search: SearchDir, verb: str) -> Any:
    """Run the Tuner. Ctrl+C stops at once (Ray Tune's own handler is off, see start_ray): the search state,
    saved after every event, and the trials' checkpoints are kept for --resume."""
    try:
        return tuner.fit()
    except KeyboardInterrupt:
        raise Interrupted(
            f"{verb} interrupted; its state and the trials' checkpoints are kept in {search.root}: continue with "
            "the same command plus --resume"
        ) from None
    finally:
        table.close()


def is_interactive() -> bool:
    return console.is_terminal and os.environ.get("CI") is None


def announce(kind: str, search: SearchDir, detail: str) -> None:
    log(f"[bold]{kind}[/]: {detail}; output in {search.root}")
