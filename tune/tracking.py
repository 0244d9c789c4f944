"""A search's (or cross-validation's) tracker runs: one parent run for the search, one child run per trial or fold.

Trial-side logging, not Ray Tune's MLflowLoggerCallback / WandbLoggerCallback: those log from the driver only what
trials report to Tune (an evaluation's numbers and the sampled values), while a trial here is an ftl run whose
own tracking (launcher/train/tracking.py) already logs the whole recipe, the loss at every logging step, the
final metrics, manifest and model, and continues the same run when Tune restarts the trial from its checkpoint.
The driver adds what only it knows: the parent run (the base recipe with its search space), which trial was best,
and which ones ASHA stopped early or failed (Tune ends a stopped trial's process, so the trial cannot say so).

Trials find their parent through FTL_TRACKING_PARENT in the environment the trial is given (TrialSetup.env),
which ray_launch forwards to a trial's own Ray Train workers; the trial of a tune.cv search is itself the parent
of its folds.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from ftl.launcher.recipe.loader import LoadedRecipe
from ftl.launcher.track.params import flat_params
from ftl.launcher.track.session import TRACKERS_FILE, Tracking, external_trackers
from ftl.launcher.track.spec import RunSpec
from ftl.tune.results import TrialOutcome
from ftl.tune.tuner import Interrupted


class SearchTracking:
    """The parent run of `ftl tune` (kind search) or `ftl cv` (kind cv); nothing when the recipe lists no tracker."""

    def __init__(self, tracking: Tracking | None, kind: str) -> None:
        self.tracking = tracking
        self.kind = kind

    @classmethod
    def open(cls, loaded: LoadedRecipe, root: Path, kind: str, extra: dict[str, Any]) -> SearchTracking:
        recipe = loaded.recipe
        if not external_trackers(recipe.log):
            return cls(None, kind)
        data = recipe.model_dump(mode="json", exclude={"extends"})
        if data.get("tune"):  # the space as given: train.lr.loguniform, without the kinds it does not use
            space = data["tune"]["space"]
            data["tune"]["space"] = {
                key: {k: v for k, v in d.items() if v is not None} for key, d in space.items()
            }
        spec = RunSpec(
            name=f"{kind}-{recipe.name}",
            kind=kind,
            recipe=recipe.name,
            params={**flat_params(data), **flat_params(extra)},
            tags={"ftl.output": str(root.resolve())},
            group=f"{kind}-{recipe.name}-{root.resolve().name}",
        )
        tracking = Tracking.open(recipe.log, root, spec, parent=None)
        tracking.wait()  # the trials need the parent's ids
        return cls(tracking, kind)

    @contextlib.contextmanager
    def ended_on_failure(self):
        """A search that fails ends its parent run FAILED (KILLED on Ctrl+C: --resume continues it)."""
        try:
            yield
        except BaseException as exc:
            if self.tracking:
                interrupted = isinstance(exc, (KeyboardInterrupt, Interrupted))
                self.tracking.finish(status="KILLED" if interrupted else "FAILED")
            raise

    def trial_env(self) -> dict[str, str]:
        """What the trials' environment adds: where their parent runs are."""
        if not self.tracking:
            return {}
        return self.tracking.parent_for_children(self.kind).to_env()

    def finish(
        self,
        trials: list[TrialOutcome],
        best: TrialOutcome | None,
        metric: str,
        files: list[Path],
        summary: dict[str, float] | None = None,
    ) -> None:
        """Mark each child by its outcome, record the best trial (or the folds' means) and end the parent."""
        if not self.tracking:
            return
        for trial in trials:
            ids = _child_ids(trial)
            if ids:
                self.tracking.mark_child(ids, trial.status, best=trial is best, label=trial.trial_id)
        counts = {
            status: sum(t.status == status for t in trials)
            for status in ("completed", "stopped early", "error")
        }
        tags = {f"ftl.trials.{status.replace(' ', '_')}": str(n) for status, n in counts.items()}
        final = dict(summary or {})
        if best is not None:
            tags.update({"ftl.best_trial": best.trial_id, "ftl.best_run_dir": best.run_dir or ""})
            tags.update({f"ftl.best.{key}": json.dumps(value) for key, value in best.values.items()})
            score = best.score(metric)
            if score is not None:
                final[f"best_{metric}"] = score
        self.tracking.tags(tags)
        self.tracking.finish(final=final, files=[path for path in files if path.exists()])


def _child_ids(trial: TrialOutcome) -> dict[str, dict[str, Any]]:
    if not trial.run_dir:
        return {}
    path = Path(trial.run_dir) / TRACKERS_FILE
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        return {}
