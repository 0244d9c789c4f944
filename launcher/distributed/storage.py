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

from transformers import TrainerCallback

from ftl.launcher.train.rundir import RunDir

_STEP = re.compile(r"checkpoint-(\d+)$")


class RayStorageReporter(TrainerCallback):
    """After each save, hand the checkpoint folder to Ray (a barrier in Ray Train: every worker reports).

    `report(metrics, folder)` defaults to Ray Train's; a Ray Tune trial passes Tune's. `folder` is the
    checkpoint directory, or None when this worker wrote none.
    """

    def __init__(self, report=None, *, best_of: str | None = None) -> None:
        self._report = report or _train_report
        self._best_of = best_of

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self._report(progress_metrics(state, best_of=self._best_of), folder if folder.is_dir() else None)


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


def _train_report(metrics, folder: Path | None) -> None:
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
