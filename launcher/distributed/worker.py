"""What each Ray Train worker runs: the same `execute` as a single-process run, on its share of the data."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from ftl.launcher.console import log, quiet_library_notices
from ftl.launcher.distributed.extensions import remove_stale_locks, use_private_extensions_dir
from ftl.launcher.distributed.reshard import for_this_group
from ftl.launcher.distributed.storage import restore_from_storage
from ftl.launcher.distributed.worker_output import send_output_to_log, worker_log
from ftl.launcher.errors import FtlError
from ftl.launcher.files import is_main_process
from ftl.launcher.train.outcome import numeric
from ftl.launcher.train.rundir import RunDir

FINAL = (
    "final"  # the checkpoint name of a run's results, reported to Ray storage for a driver on another node
)
_NOT_RESULTS = ("checkpoints", "ray", "logs", "base_model")


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. Restarted by Ray after a failure: `execute` resumes from the last checkpoint."""
    os.environ.update(config["env"])  # before the training libraries load: they read it at import
    import ray
    import ray.train

    context = ray.train.get_context()
    rank = context.get_world_rank()
    os.environ["FTL_NODE_ID"] = ray.get_runtime_context().get_node_id()  # for the manifest's placement
    loaded = config["recipe"].load()
    storage_path = loaded.recipe.distributed.storage_path
    rundir = RunDir(Path(config["run"]))
    if not rundir.recipe_file.exists():  # the driver wrote it: this node does not share the driver's disk
        if storage_path is None:
            raise FtlError(
                f"--output {rundir.root}: worker {rank} on node {os.environ['FTL_NODE_ID'][:12]} cannot see the run "
                "directory (its node shares no filesystem with the driver); put --output on a filesystem every node "
                "mounts, or set distributed.storage_path (a shared directory or s3://, gs://) for checkpoints and "
                "results"
            )
        rundir.write_recipe(loaded.recipe)  # this node's own run directory; storage carries what is shared
    send_output_to_log(worker_log(rundir.root, rank), config.get("console") if rank == 0 else None)
    quiet_library_notices()
    use_private_extensions_dir()
    remove_stale_locks(log=log if is_main_process() else (lambda message: None))
    # the training libraries (torch, transformers) load only now, after the environment is set
    from ftl.launcher.distributed.storage_reporter import RayStorageReporter
    from ftl.launcher.train.execute import execute

    callbacks = list(config.get("callbacks", []))
    if storage_path:
        restore_from_storage(rundir)
        callbacks.append(RayStorageReporter())
    if loaded.recipe.distributed.elastic:  # this group's size: its accumulation, a re-sharded checkpoint
        world = context.get_world_size()
        loaded = replace(loaded, recipe=for_this_group(loaded.recipe, rundir.last_checkpoint(), world, rank))
    metrics = execute(
        loaded,
        rundir,
        announce_resume=config["resume"],
        callbacks=callbacks,
        train_only=config.get("train_only", False),
    )
    if storage_path and not config.get("train_only", False):
        _report_results(rundir, metrics, rank)
    else:
        ray.train.report(numeric(metrics))


def _report_results(rundir: RunDir, metrics: dict, rank: int) -> None:
    """Rank 0's results (model, metrics, manifest, predictions) to Ray storage, so a driver on a node without
    the worker's disk still ends up with a complete run directory (launch copies them in)."""
    import ray.train

    if rank != 0:
        ray.train.report(numeric(metrics))
        return
    with tempfile.TemporaryDirectory(prefix="ftl-results-") as staging:
        for item in rundir.root.iterdir():
            if item.name in _NOT_RESULTS or item.name.startswith("."):
                continue
            target = Path(staging) / item.name
            shutil.copytree(item, target) if item.is_dir() else shutil.copy2(item, target)
        ray.train.report(
            numeric(metrics),
            checkpoint=ray.train.Checkpoint.from_directory(staging),
            checkpoint_dir_name=FINAL,
        )
