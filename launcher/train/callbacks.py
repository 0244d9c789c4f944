"""Trainer callbacks: a rich progress bar (or plain log lines off a terminal) with throughput."""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone

from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback
from transformers.trainer_callback import ExportableState

from ftl.launcher.console import console
from ftl.launcher.train.outcome import is_outcome


def _fmt(value) -> str:
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e4:
            return f"{value:.4f}"
        return f"{value:.3e}"
    return str(value)


class ProgressCallback(TrainerCallback):
    """Progress bar with loss and tokens/s on a terminal; one line per logging step otherwise."""

    def __init__(self, interactive: bool, shown: set[str] | None = None) -> None:
        """shown: the metric names an evaluation line prints (default all); the rest (e.g. per-entity-type F1)
        still go to TensorBoard, log_history.json and metrics.json."""
        self.interactive = interactive
        self.shown = shown
        self.progress = None
        self.task_id = None
        self._last = (0.0, 0)

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = (time.perf_counter(), state.num_input_tokens_seen or 0)
        if self.interactive and state.is_world_process_zero:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"),
                console=console,
                transient=False,
            )
            self.progress.start()
            self.task_id = self.progress.add_task(
                "train", total=state.max_steps, completed=state.global_step, status=""
            )

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task_id, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero:
            return
        logs = dict(logs or {})
        now, tokens = time.perf_counter(), state.num_input_tokens_seen or 0
        if "loss" in logs:
            elapsed = now - self._last[0]
            if elapsed > 0 and tokens > self._last[1]:
                logs["tokens_per_s"] = (tokens - self._last[1]) / elapsed
            self._last = (now, tokens)
            status = f"loss {logs['loss']:.4f}  lr {logs.get('learning_rate', 0):.2e}"
            if "tokens_per_s" in logs:
                status += f"  {logs['tokens_per_s']:,.0f} tok/s"
            if self.progress is not None:
                self.progress.update(self.task_id, status=status)
            else:
                console.print(f"step {state.global_step}/{state.max_steps}  {status}")
        elif any(key.startswith("eval_") for key in logs):
            shown = "  ".join(
                f"{k.removeprefix('eval_')} {_fmt(v)}"
                for k, v in logs.items()
                if k.startswith("eval_")
                and is_outcome(k)
                and (self.shown is None or k.removeprefix("eval_") in self.shown)
                and not (isinstance(v, float) and math.isnan(v))
            )
            console.print(f"[cyan]eval[/] step {state.global_step}: {shown}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class TensorBoardLogger(TensorBoardCallback):
    """HF's TensorBoard callback pinned to <run>/tensorboard, kept open for the final evaluation."""

    def __init__(self, log_dir: str) -> None:
        super().__init__()
        self.logging_dir = log_dir

    def on_train_end(self, args, state, control, **kwargs):
        if self.tb_writer is not None:
            self.tb_writer.flush()

    def close(self) -> None:
        if self.tb_writer is not None:
            self.tb_writer.close()
            self.tb_writer = None


def replace_default_printers(trainer) -> None:
    """Drop HF's dict-printing and tqdm callbacks: ProgressCallback above reports instead."""
    from transformers.trainer_callback import PrinterCallback
    from transformers.trainer_callback import ProgressCallback as HFProgress

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(HFProgress)


class TrainOnly(TrainerCallback):
    """Cancel every evaluation and checkpoint the schedule asks for (a train-only run, e.g. a bench cell)."""

    def on_step_end(self, args, state, control, **kwargs):
        control.should_evaluate = False
        control.should_save = False
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        return self.on_step_end(args, state, control)


class WorkerCountLog(TrainerCallback, ExportableState):
    """How many workers trained from which step. An elastic run restarts with fewer workers when a node is lost
    and with more when it returns; the history travels in every checkpoint (HF's stateful callbacks) and ends
    in the manifest (`workers_over_time`)."""

    def __init__(self, history: list[dict] | None = None) -> None:
        self.history = list(history or [])

    def on_train_begin(self, args, state, control, **kwargs):
        if self.history and self.history[-1]["workers"] == args.world_size:
            return
        if self.history and state.is_world_process_zero:
            console.print(
                f"[yellow]resized[/]: {self.history[-1]['workers']} -> {args.world_size} workers, continuing from "
                f"step {state.global_step} with the same global batch"
            )
        self.history.append(
            {
                "workers": args.world_size,
                "step": state.global_step,
                "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
        )

    def state(self) -> dict:
        return {"args": {"history": self.history}, "attributes": {}}
