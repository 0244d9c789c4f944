"""The Trainer callback that hands every checkpoint to Ray storage (see storage.py)."""

from __future__ import annotations

from pathlib import Path

from transformers import TrainerCallback

from ftl.launcher.distributed.storage import progress_metrics, train_report


class RayStorageReporter(TrainerCallback):
    """After each save, hand the checkpoint folder to Ray (a barrier in Ray Train: every worker reports).

    `report(metrics, folder)` defaults to Ray Train's; a Ray Tune trial passes Tune's. `folder` is the
    checkpoint directory, or None when this worker wrote none. `final_report_follows`: the caller reports the
    finished run itself (a Tune trial), so the last save is not reported.
    """

    def __init__(
        self, report=None, *, best_of: str | None = None, final_report_follows: bool = False
    ) -> None:
        self._report = report or train_report
        self._best_of = best_of
        self._final_only = final_report_follows

    def on_save(self, args, state, control, **kwargs):
        if self._final_only and (state.global_step >= state.max_steps or control.should_training_stop):
            return  # the last save: the run's final report follows once its model is written (a scheduler
            # stopping the trial here would stop nothing, and lose the model)
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self._report(progress_metrics(state, best_of=self._best_of), folder if folder.is_dir() else None)
