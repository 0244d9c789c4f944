"""The tracker run of a tune.cv trial: a child of the search and the parent of its folds' runs (see
tune/tracking.py); it ends with the folds' means."""

from __future__ import annotations

from pathlib import Path

from ftl.launcher.track.params import flat_numbers, flat_params
from ftl.launcher.track.session import Tracking, external_trackers
from ftl.launcher.track.spec import Parent, RunSpec


def trial_tracking(recipe, rundir_path: Path) -> Tracking | None:
    """The run of a tune.cv trial (parent of its folds): opened before the folds, ended with their means."""
    if not external_trackers(recipe.log):
        return None
    parent = Parent.from_env()
    spec = RunSpec(
        name=rundir_path.name,
        kind="trial",
        recipe=recipe.name,
        params=flat_params(recipe.model_dump(mode="json", exclude={"extends"})),
        tags={"ftl.run_dir": str(rundir_path.resolve())},
    )
    tracking = Tracking.open(recipe.log, rundir_path, spec, parent=parent)
    tracking.wait()
    return tracking


def fold_means(tracking: Tracking | None, means: dict[str, float]) -> None:
    if tracking:
        tracking.finish(final=flat_numbers(means))
