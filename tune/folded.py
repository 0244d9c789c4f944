"""A search trial whose objective is the mean over k folds (`tune.cv`): the folds run as parallel Ray tasks.

The trial itself reserves nothing; each fold task reserves tune.resources and trains one fold as an ftl run
in <trial>/fold-<i>. Ray retries a fold whose worker died, and the fold resumes from its last checkpoint in
its run directory. The trial reports once, when every fold has finished: the mean of each metric over the
folds, and <metric>_std.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

from ftl.launcher.files import atomic_write
from ftl.launcher.recipe.variants import objective as objective_of
from ftl.launcher.train.outcome import is_outcome, numeric
from ftl.launcher.train.rundir import RunDir
from ftl.tune.trial_runs import TrialSetup, finished_run, output_to, trial_recipe


def run_folds(setup: TrialSetup, base, values: dict[str, Any], trial_dir: Path) -> dict[str, float]:
    """Train every fold of the base recipe (with tune.cv) with a trial's values, in parallel; the mean metrics."""
    import ray

    recipe = base
    objective, _ = objective_of(base)
    cv = recipe.tune.cv
    resources = recipe.tune.trial_resources
    task = ray.remote(_train_fold).options(
        num_cpus=resources.cpus,
        num_gpus=resources.gpus,
        max_retries=recipe.tune.max_failures,
        scheduling_strategy="DEFAULT",  # not inside the trial's (memory-only) placement group
    )
    spec = cv.model_dump()
    pending = [
        task.remote(setup, {**values, "data.fold": {**spec, "index": i}}, str(trial_dir / f"fold-{i}"))
        for i in range(cv.folds)
    ]
    per_fold = ray.get(pending)
    summary = {}
    for name in sorted(per_fold[0]):
        if not name.startswith("eval_") or not is_outcome(name):
            continue
        folds = [metrics[name] for metrics in per_fold if isinstance(metrics.get(name), (int, float))]
        if len(folds) == len(per_fold):
            summary[name] = statistics.fmean(folds)
            summary[f"{name}_std"] = statistics.stdev(folds) if len(folds) > 1 else 0.0
    atomic_write(trial_dir / "cv.json", json.dumps({"per_fold": per_fold, "mean": summary}, indent=2) + "\n")
    missing = [i for i, metrics in enumerate(per_fold) if objective not in metrics]
    if missing:  # a report without the objective would stop the whole search; fail this trial instead
        raise RuntimeError(f"fold(s) {missing} reported no {objective}; see {trial_dir}/fold-*/train.log")
    return summary


def _train_fold(setup: TrialSetup, values: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """Ray task: one fold as an ftl run (resumes from its own checkpoint when Ray retries it)."""
    os.environ.update(setup.env)  # before the training libraries load: they read it at import
    from ftl.launcher.train.execute import execute  # torch, transformers: after the environment

    recipe = trial_recipe(setup.base.load().recipe, values)
    rundir = RunDir(Path(run_dir))
    metrics = finished_run(rundir.root, recipe)
    if metrics is None:
        rundir.root.mkdir(parents=True, exist_ok=True)
        rundir.write_recipe(recipe)
        with output_to(rundir.root / "train.log"):
            metrics = execute(setup.base.load(recipe), rundir, announce_resume=True)
    return numeric(metrics)
