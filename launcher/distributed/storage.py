"""Checkpoints through Ray storage (`distributed.storage_path`: a shared directory or s3://, gs://, ...).

Without a storage path, workers write checkpoints into <run>/checkpoints, which multi-node runs must put
on a shared filesystem. With one, every checkpoint HF/DeepSpeed writes is also reported to Ray Train, which
merges the workers' files into one checkpoint in storage; a restarted or resumed run downloads the latest
one into <run>/checkpoints when it has nothing newer locally.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from ftl.launcher.train.rundir import RunDir

_STEP = re.compile(r"checkpoint-(\d+)$")


def progress_metrics(state, *, best_of: str | None = None) -> dict[str, float]:
    """The latest evaluation's numbers, with how far training is: evaluation count, step and epoch.

    best_of: the model-selection metric (eval.select_best), reported as the best value so far -- the model
    the run keeps -- with the latest value as <metric>_last. HF tracks that best across resumes."""
    metrics: dict[str, float] = {"step": state.global_step, "epoch": float(state.epoch or 0.0)}
    evaluations = _evaluations(state.log_history)
    metrics["evaluation"] = evaluation_count(state.log_history)
    if evaluations:
        metrics.update(
            {
                k: v
                for k, v in evaluations[-1].items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "epoch")
            }
        )
    if best_of is not None and best_of in metrics and state.best_metric is not None:
        metrics[f"{best_of}_last"] = metrics[best_of]
        metrics[best_of] = float(state.best_metric)
    return metrics


def evaluation_count(log_history: list[dict]) -> int:
    """Evaluations during training (distinct steps; the final evaluation at the last step counts once)."""
    return len({entry["step"] for entry in _evaluations(log_history)})


def _evaluations(log_history: list[dict]) -> list[dict]:
    return [
        entry
        for entry in log_history
        if entry.get("step", 0) > 0 and any(key.startswith("eval_") for key in entry)
    ]


def train_report(metrics, folder: Path | None) -> None:
    import ray.train

    checkpoint = ray.train.Checkpoint.from_directory(str(folder)) if folder else None
    ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=folder.name if folder else None)


def restore_from_storage(rundir: RunDir) -> Path | None:
    """Download Ray's latest checkpoint into the run directory when it is newer than any local one."""
    import ray.train
    import torch.distributed as dist

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    match = _STEP.search(checkpoint.path.rstrip("/"))
    name = match.group(0) if match else Path(checkpoint.path).name
    local = rundir.last_checkpoint()
    target = rundir.checkpoints / name
    newer = local is None or (match is not None and int(match.group(1)) > int(local.name.split("-")[1]))
    if newer and ray.train.get_context().get_local_rank() == 0:
        target.parent.mkdir(parents=True, exist_ok=True)
        # download beside it and rename: a half-downloaded folder must never look like a complete checkpoint
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
        checkpoint.to_directory(str(staging))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # the other workers on this node wait for the download
    return target if newer else local


def fetch_from_storage(rundir: RunDir, experiment: str) -> Path | None:
    """On the driver, before it decides anything about a resume (e.g. re-sharding to another worker count):
    the latest checkpoint Ray storage holds for this run (`experiment`: <storage_path>/<run name>), downloaded
    into <run>/checkpoints when it is newer than the newest local one. The run directory may sit on a node of
    its own, so the driver cannot rely on seeing the workers' checkpoints there. Returns the newest checkpoint."""
    from ray.train import Result

    local = rundir.last_checkpoint()
    try:
        stored = Result.from_path(experiment).checkpoint
    except (RuntimeError, OSError, ValueError):  # nothing in storage yet (a new run, or none reported)
        return local
    if stored is None:
        return local
    match = _STEP.search(stored.path.rstrip("/"))
    if match is None or (local is not None and int(match.group(1)) <= int(local.name.split("-")[1])):
        return local
    target = rundir.checkpoints / match.group(0)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
    stored.to_directory(str(staging))
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target


def push_to_storage(checkpoint: Path, experiment: str, names: list[str]) -> None:
    """Copy files the driver added to a checkpoint (a re-sharded universal copy) into the same checkpoint in
    Ray storage, where workers on other nodes download it from."""
    import pyarrow.fs

    filesystem, root = pyarrow.fs.FileSystem.from_uri(_as_uri(experiment))
    destination = f"{root.rstrip('/')}/{checkpoint.name}"
    for name in names:
        source = checkpoint / name
        if source.is_dir():
            pyarrow.fs.copy_files(str(source), f"{destination}/{name}", destination_filesystem=filesystem)
        else:
            with filesystem.open_output_stream(f"{destination}/{name}") as stream:
                stream.write(source.read_bytes())


def _as_uri(path: str) -> str:
    return path if "://" in path else Path(path).resolve().as_uri()
