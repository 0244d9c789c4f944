"""The run directory of one trial or fold: what the trial is given (`TrialSetup`), its recipe, whether an
earlier attempt finished it, and where its output goes."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftl.launcher.errors import FtlError, first_line
from ftl.launcher.files import atomic_write
from ftl.launcher.recipe.loader import PortableRecipe
from ftl.launcher.recipe.variants import objective, with_values
from ftl.launcher.train.rundir import RunDir

FINAL = "final"  # key of the last report: the run's final evaluation (the best weights when selecting best)


@dataclass
class TrialSetup:
    """Everything a trial needs besides its sampled values (shipped to the trial's Ray worker)."""

    base: PortableRecipe  # the validated base recipe, with its tune section
    trials_dir: str
    env: dict[str, str] = field(default_factory=dict)
    pbt: bool = False
    session: str = field(default_factory=lambda: uuid.uuid4().hex)  # one `ftl tune`/`ftl cv` invocation


def trial_recipe(base, values: dict[str, Any]):
    """The base recipe with a trial's values; the trial keeps its best checkpoint by the search's metric."""
    metric, _ = objective(base)
    return with_values(base, {"eval.metric": metric.removeprefix("eval_"), **values})


def finished_run(rundir_path: Path, recipe) -> dict[str, Any] | None:
    """The final metrics of a run directory that already finished this exact recipe, else None.

    A driver killed after a trial finished but before it recorded the result restarts that trial on resume;
    the finished run is then reported again instead of being trained again."""
    rundir = RunDir(rundir_path)
    metrics = rundir.read_json("metrics.json")
    if not metrics or not (rundir.model / "config.json").exists() or not rundir.recipe_file.exists():
        return None
    try:
        same = rundir.read_recipe() == recipe
    except Exception:  # noqa: BLE001 - an unreadable recipe means: train again
        return None
    return metrics if same else None


def trial_dir_name(config: dict[str, Any], trial_id: str) -> str:
    """trial-<id>, or fold-<i> for a cross-validation fold."""
    fold = config.get("data.fold")
    if isinstance(fold, dict) and "index" in fold and len(config) == 1:
        return f"fold-{fold['index']}"
    return f"trial-{trial_id}"


@contextlib.contextmanager
def output_to(path: Path):
    """Send this process's stdout and stderr (Python and native) to a file while the trial trains."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a", encoding="utf-8") as log_file:
        os.dup2(log_file.fileno(), 1)
        os.dup2(log_file.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


_FAILURE = "ftl-error.json"


@contextlib.contextmanager
def not_retrying_ftl_errors(rundir_path: Path, setup: TrialSetup, values: dict[str, Any]):
    """An ftl error (the recipe, data or model refused) fails the same way every time: Ray Tune's retry of such a
    trial re-raises it at once instead of training again `tune.max_failures` times. Only within one invocation:
    `ftl tune --resume` after a fix tries the trial again; a transient one (a full disk, the hub) is retried."""
    marker = rundir_path / _FAILURE
    attempt = {"session": setup.session, "values": json.dumps(values, sort_keys=True, default=str)}
    try:
        earlier = json.loads(marker.read_text())
    except (OSError, ValueError):
        earlier = None
    if isinstance(earlier, dict) and all(earlier.get(key) == value for key, value in attempt.items()):
        raise FtlError(f"{earlier.get('error', 'failed')} (as in this trial's first attempt; not retried)")
    try:
        yield
    except FtlError as exc:
        cause = getattr(exc, "cause", None)  # a fold's error arrives as Ray's RayTaskError(FtlError)
        if exc.transient or getattr(cause, "transient", False):  # a full disk, the hub: retried as any crash
            raise
        error = str(cause) if isinstance(cause, FtlError) else first_line(exc)
        atomic_write(marker, json.dumps({**attempt, "error": error}) + "\n")
        raise
