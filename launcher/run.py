"""`ftl run`: a recipe into a finished run directory, in this process or on Ray Train workers.

A staged recipe runs its stages one after another (train/stages.py), each an ordinary run in its own folder.
A recipe that scales out (DeepSpeed, several workers, a cluster address) runs the same `execute` inside Ray
Train workers (distributed/ray_launch.py); any other runs it right here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftl.launcher.distributed.ray_launch import launch
from ftl.launcher.errors import FtlError
from ftl.launcher.recipe.loader import LoadedRecipe
from ftl.launcher.train.execute import execute
from ftl.launcher.train.resume import check_not_damaged, check_same_recipe
from ftl.launcher.train.rundir import RunDir
from ftl.launcher.train.stages import run_stages


def run_recipe(
    loaded: LoadedRecipe,
    output: Path,
    *,
    resume: bool = False,
    train_only: bool = False,
    callbacks: list | None = None,
) -> dict[str, Any]:
    """Train a recipe into `output`; its final metrics.

    `callbacks` are Trainer callbacks added in every process (picklable: Ray ships them to its workers);
    `train_only` trains without evaluations, checkpoints or a final model (see `execute`)."""
    created = next((p for p in reversed([output, *output.parents]) if not p.exists()), None)
    was_empty = created is None and output.is_dir() and not any(output.iterdir())
    rundir = RunDir.open_for_run(output, resume=resume)
    try:
        return _run(loaded, rundir, resume=resume, train_only=train_only, callbacks=callbacks)
    except BaseException:
        # anything that stops a run before its first step (a mistake, a library's error, Ctrl+C) leaves nothing,
        # so the same command can run again; after that the folder stays for --resume
        if (created is not None or was_empty) and not rundir.training_started:
            rundir.remove_if_unused(up_to=created)  # an empty folder given as --output stays, empty
        raise


def _run(
    loaded: LoadedRecipe, rundir: RunDir, *, resume: bool, train_only: bool, callbacks
) -> dict[str, Any]:
    if loaded.stages:
        if not resume:
            rundir.write_recipe(loaded.recipe)
        return run_stages(loaded, rundir, resume=resume, run=run_recipe)
    if resume:
        check_not_damaged(rundir)
    continuing = resume and rundir.last_checkpoint() is not None
    if continuing:
        check_same_recipe(rundir, loaded)
    if resume and rundir.finished():
        raise FtlError(
            f"--resume: {rundir.root} has finished (its model and metrics.json are written): nothing to resume; "
            "train again into a new --output"
        )
    if not continuing:  # a new run, or one that never reached a checkpoint: its recipe may still change
        rundir.write_recipe(loaded.recipe)
    if loaded.recipe.distributed.needs_workers:  # DeepSpeed, several workers or a cluster address
        return launch(loaded, rundir, resume=resume, train_only=train_only, trainer_callbacks=callbacks)
    return execute(loaded, rundir, announce_resume=resume, callbacks=callbacks, train_only=train_only)
