"""A run's experiment trackers (log.trackers: mlflow, wandb): opened before the Trainer is made, fed every log of
the Trainer (loss, learning rate, evaluations) by step, closed with the final metrics, the manifest and, when
the recipe asks, the model. Rank 0 only: the other workers of a multi-worker run track nothing.

Why not transformers' MLflowCallback / WandbCallback: they are configured through process-wide environment
variables (MLFLOW_RUN_ID, WANDB_PROJECT, ...) and the trackers' global active run, log TrainingArguments rather
than the recipe, end the run in on_train_end (before ftl's final evaluation and model), and let a tracker's
exception stop training. ftl drives the trackers' clients directly (launcher/track/).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

from transformers import TrainerCallback

from ftl.launcher.files import is_main_process
from ftl.launcher.recipe.loader import LoadedRecipe
from ftl.launcher.track.params import flat_numbers, flat_params
from ftl.launcher.track.session import Tracking, external_trackers
from ftl.launcher.track.spec import Parent, RunSpec
from ftl.launcher.train.rundir import RunDir, git_sha

CHILD_KIND = {"search": "trial", "cv": "fold", "trial": "fold"}
MANIFEST_TAGS = ("git_sha", "data_fingerprint", "device", "workers", "model_location", "host", "resumed_from")


class TrackerLogger(TrainerCallback):
    """Every number the Trainer logs, at its global step, to the run's trackers."""

    def __init__(self, tracking: Tracking) -> None:
        self.tracking = tracking

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        values = {
            key: float(value)
            for key, value in logs.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        }
        if values:
            self.tracking.metrics(values, state.global_step)


class RunTracking:
    """The trackers of one `execute`: `callbacks` for the Trainer, `done(metrics)` at the end."""

    def __init__(self, tracking: Tracking | None, rundir: RunDir, loaded: LoadedRecipe) -> None:
        self.tracking = tracking
        self.rundir = rundir
        self.loaded = loaded

    @property
    def callbacks(self) -> list:
        return [TrackerLogger(self.tracking)] if self.tracking else []

    def done(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Final metrics, the manifest's facts as tags, the run's files and (log.*.log_model) its model."""
        if not self.tracking:
            return metrics
        manifest = self.rundir.read_json("manifest.json")
        tags = {f"ftl.{key}": str(manifest[key]) for key in MANIFEST_TAGS if manifest.get(key) is not None}
        tags.update({f"ftl.version.{k}": v for k, v in manifest.get("versions", {}).items()})
        self.tracking.tags(tags)
        root = self.rundir.root
        files = [root / name for name in ("recipe.resolved.yaml", "manifest.json", "metrics.json")]
        log = self.loaded.recipe.log
        model = self.rundir.model if (self.rundir.model / "config.json").exists() else None
        self.tracking.finish(
            final=flat_numbers(metrics),
            step=int(metrics.get("train_steps", 0) or 0),
            files=[path for path in files if path.exists()],
            model=model,
            log_model={"mlflow": log.mlflow.log_model, "wandb": log.wandb.log_model},
        )
        return metrics

    def failed(self, exc: BaseException) -> None:
        if self.tracking:
            # ftl turns Ctrl+C into a one-line FtlError ("interrupted; ... --resume")
            interrupted = isinstance(exc, KeyboardInterrupt) or isinstance(exc.__context__, KeyboardInterrupt)
            self.tracking.finish(status="KILLED" if interrupted else "FAILED")


@contextlib.contextmanager
def run_tracking(loaded: LoadedRecipe, rundir: RunDir):
    """The run's trackers, ended FAILED (KILLED on Ctrl+C) when the run raises."""
    recipe = loaded.recipe
    tracking = None
    if is_main_process() and external_trackers(recipe.log):
        parent = Parent.from_env()
        kind = CHILD_KIND.get(parent.kind, "run") if parent else "run"
        spec = RunSpec(
            name=rundir.root.name if parent else recipe.name,
            kind=kind,
            recipe=recipe.name,
            params=flat_params(recipe.model_dump(mode="json", exclude={"extends"})),
            tags={"ftl.run_dir": str(rundir.root.resolve()), "ftl.git_sha": git_sha() or "unknown"},
        )
        tracking = Tracking.open(recipe.log, rundir.root, spec, parent=parent)
    run = RunTracking(tracking, rundir, loaded)
    try:
        yield run
    except BaseException as exc:
        run.failed(exc)
        raise
