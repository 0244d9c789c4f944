"""The Trainer callback that hands every checkpoint to Ray storage (see storage.py)."""

from __future__ import annotations

from pathlib import Path

from transformers import TrainerCallback

from ftl.launcher.distributed.storage import progress_metrics, train_report


class RayStorageReporter(TrainerCallback):
    """After each save, hand the checkpoint folder to Ray (a barrier in Ray Train: every worker reports).

    `report(metrics, folder)` defaults to Ray Train's; a Ray Tune trial passes Tune's. `folder` is the
    checkpoint directory, or None when this worker wrote none.
    """

    def __init__(self, report=None, *, best_of: str | None = None) -> None:
        self._report = report or train_report
        self._best_of = best_of

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self._report(progress_metrics(state, best_of=self._best_of), folder if folder.is_dir() else None)
