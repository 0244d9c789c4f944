"""What each Ray Train worker runs: the same `execute` as a single-process run, on its share of the data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. Restarted by Ray after a failure: `execute` resumes from the last checkpoint."""
    os.environ.update(config["env"])
    from ftl.launcher.console import log, quiet_library_notices
    from ftl.launcher.distributed.extensions import remove_stale_locks, use_private_extensions_dir

    quiet_library_notices()
    use_private_extensions_dir()
    remove_stale_locks(log=log if int(os.environ.get("RANK", "0")) == 0 else (lambda message: None))
    import ray.train

    from ftl.launcher.recipe.loader import LoadedRecipe
    from ftl.launcher.recipe.schema import Recipe
    from ftl.launcher.train.run import execute
    from ftl.launcher.train.rundir import RunDir

    recipe = Recipe.model_validate(config["recipe"])
    loaded = LoadedRecipe(
        recipe=recipe, path=Path(config["recipe_path"]), dirs=[Path(d) for d in config["search_dirs"]]
    )
    rundir = RunDir(Path(config["run"]))
    callbacks = list(config.get("callbacks", []))
    if recipe.distributed.storage_path:
        from ftl.launcher.distributed.storage import RayStorageReporter, restore_from_storage

        restore_from_storage(rundir)
        callbacks.append(RayStorageReporter())
    metrics = execute(
        loaded,
        rundir,
        announce_resume=config["resume"],
        callbacks=callbacks,
        train_only=config.get("train_only", False),
    )
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    ray.train.report(numbers)
