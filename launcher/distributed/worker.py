"""What each Ray Train worker runs: the same `execute` as a single-process run, on its share of the data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ftl.launcher.console import log, quiet_library_notices
from ftl.launcher.distributed.extensions import remove_stale_locks, use_private_extensions_dir
from ftl.launcher.distributed.storage import restore_from_storage
from ftl.launcher.files import is_main_process
from ftl.launcher.train.outcome import numeric
from ftl.launcher.train.rundir import RunDir


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. Restarted by Ray after a failure: `execute` resumes from the last checkpoint."""
    os.environ.update(config["env"])  # before the training libraries load: they read it at import
    quiet_library_notices()
    use_private_extensions_dir()
    remove_stale_locks(log=log if is_main_process() else (lambda message: None))
    import ray.train

    # the training libraries (torch, transformers) load only now, after the environment is set
    from ftl.launcher.distributed.storage_reporter import RayStorageReporter
    from ftl.launcher.train.execute import execute

    loaded = config["recipe"].load()
    rundir = RunDir(Path(config["run"]))
    callbacks = list(config.get("callbacks", []))
    if loaded.recipe.distributed.storage_path:
        restore_from_storage(rundir)
        callbacks.append(RayStorageReporter())
    metrics = execute(
        loaded,
        rundir,
        announce_resume=config["resume"],
        callbacks=callbacks,
        train_only=config.get("train_only", False),
    )
    ray.train.report(numeric(metrics))
