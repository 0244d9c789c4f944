"""A live table of trials while a search runs (rich), or one line per trial event off a terminal."""

from __future__ import annotations

import math
import time
from typing import Any

from ray.tune import Callback

from ftl.launcher.console import console
from ftl.tune.space import short_names, shown

_STATUS = {
    "PENDING": "[dim]pending[/]",
    "RUNNING": "[cyan]running[/]",
    "TERMINATED": "[green]done[/]",
    "ERROR": "[red]error[/]",
    "PAUSED": "[yellow]paused[/]",
}


class TrialTable(Callback):
    """Ray Tune callback: trial status, values, progress and the objective, best marked."""

    def __init__(
        self, metric: str, mode: str, keys: list[str], *, title: str, interactive: bool, label=None
    ) -> None:
        self.metric, self.mode, self.keys, self.title = metric, mode, keys, title
        self.label = label or (lambda trial: trial.trial_id)  # how a trial is named in lines and the table
        self.interactive = interactive
        self._live = None
        self._trials: dict[str, Any] = {}
        self._stopped_early: set[str] = set()
        self._started = time.monotonic()

    # ---- Tune events ----------------------------------------------------------------------------
    def setup(self, **info):
        if self.interactive:
            from rich.live import Live

            self._live = Live(self._render(), console=console, refresh_per_second=2, transient=False)
            self._live.start()

    def on_trial_start(self, iteration, trials, trial, **info):
        self._trials[trial.trial_id] = trial
        self._say(f"started {self.label(trial)}  {self._values(trial)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._trials[trial.trial_id] = trial
        self._refresh()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._trials[trial.trial_id] = trial
        result = trial.last_result or {}
        if "final" not in result:
            self._stopped_early.add(trial.trial_id)
        verb = "finished" if "final" in result else "stopped early"
        self._say(f"{verb} {self.label(trial)}  {self._metric_text(result)}  after {self._progress(result)}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._trials[trial.trial_id] = trial
        self._say(f"[red]failed[/] {self.label(trial)}: {_last_line(trial.error_file)}")

    def on_experiment_end(self, trials, **info):
        for trial in trials:
            self._trials[trial.trial_id] = trial
        self.close()

    def close(self) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.stop()
            self._live = None

    # ---- rendering ------------------------------------------------------------------------------
    def _say(self, message: str) -> None:
        if self._live is not None:
            self._refresh()
        else:
            console.print(f"[dim]{time.monotonic() - self._started:6.0f}s[/] {message}", soft_wrap=True)

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render())

    def _render(self):
        from rich.table import Table

        table = Table(title=self.title, title_justify="left")
        for column in [
            "trial",
            "status",
            *short_names(self.keys),
            "evals",
            self.metric.removeprefix("eval_"),
        ]:
            table.add_column(
                column, justify="right" if column not in ("trial", "status") else "left", no_wrap=True
            )
        best = self._best_id()
        for trial_id, trial in sorted(self._trials.items()):
            result = trial.last_result or {}
            status = _STATUS.get(trial.status, trial.status.lower())
            if trial_id in self._stopped_early and trial.status == "TERMINATED":
                status = "[yellow]stopped early[/]"
            value = result.get(self.metric)
            cell = f"{value:.4f}" if isinstance(value, float) else "-"
            if trial_id == best:
                cell = f"[bold green]{cell} *[/]"
            table.add_row(
                self.label(trial),
                status,
                *[shown(trial.config.get(key, "-")) for key in self.keys],
                str(result.get("evaluation", "-")),
                cell,
            )
        return table

    def _best_id(self) -> str | None:
        """The best trial so far; ties go to the first trial id, as in the final summary."""
        scored = [
            (trial.last_result[self.metric], trial_id)
            for trial_id, trial in sorted(self._trials.items())
            if isinstance((trial.last_result or {}).get(self.metric), (int, float))
            and not math.isnan(trial.last_result[self.metric])
        ]
        if not scored:
            return None
        sign = 1 if self.mode == "max" else -1
        return max(scored, key=lambda pair: sign * pair[0])[1]

    def _values(self, trial) -> str:
        return "  ".join(f"{key}={shown(trial.config.get(key))}" for key in self.keys)

    def _metric_text(self, result: dict[str, Any]) -> str:
        value = result.get(self.metric)
        return f"{self.metric} {value:.4f}" if isinstance(value, float) else f"{self.metric} -"

    @staticmethod
    def _progress(result: dict[str, Any]) -> str:
        evaluations = result.get("evaluation", 0)
        return (
            f"{evaluations} evaluation{'s' if evaluations != 1 else ''}, epoch {result.get('epoch', 0):.2f}"
        )


def _last_line(error_file: str | None) -> str:
    if not error_file:
        return "see the trial's train.log"
    try:
        with open(error_file, encoding="utf-8", errors="replace") as handle:
            lines = [line.strip() for line in handle if line.strip()]
    except OSError:
        return "see the trial's train.log"
    return lines[-1] if lines else "see the trial's train.log"
