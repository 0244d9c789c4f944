"""`ftl tune`: the recipe's search space explored by Optuna inside Ray Tune, trials in parallel.

Story: validate the space (every choice and bound gives a valid recipe) -> open the output directory -> start
or join Ray -> Optuna sampler (tpe, random or grid) with its study in SQLite or PostgreSQL -> scheduler
(fifo, asha, median, pbt) -> run or resume the Tuner with a live table -> trials.csv, best.yaml, plots.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from ftl.launcher.console import log
from ftl.launcher.errors import FtlError
from ftl.launcher.recipe.loader import LoadedRecipe, where
from ftl.launcher.recipe.variants import check_space, objective
from ftl.tune import tuner as setup
from ftl.tune.results import SearchResults, all_failed, write_outputs
from ftl.tune.space import grid_size
from ftl.tune.study import open_storage, study_name, study_storage
from ftl.tune.tracking import SearchTracking

DEFAULT_SAMPLES = 8


@setup.removes_unused_output
def run_search(
    loaded: LoadedRecipe,
    output: Path,
    *,
    resume: bool = False,
    samples: int | None = None,
    address: str | None = None,
) -> SearchResults:
    recipe = loaded.recipe
    tune_section = recipe.tune
    if tune_section is None or not tune_section.space:
        raise FtlError(
            f"{loaded.path}: the recipe has no tune.space to search; add e.g. tune: {{space: {{train.lr: "
            "{loguniform: [1.0e-5, 1.0e-4]}}}}"
        )
    check_space(recipe, where(loaded.origins, ("tune", "space"), loaded.path))
    if tune_section.storage and tune_section.scheduler_type != "pbt":
        open_storage(tune_section.storage)  # a shared study's database must answer before any trial starts
    metric, mode = objective(recipe)

    total = samples or tune_section.samples
    if all(d.is_finite for d in tune_section.space.values()):
        size = grid_size(tune_section)
        total = total or (size if tune_section.search == "grid" else DEFAULT_SAMPLES)
        if total > size:  # more would only repeat combinations
            log(f"the space holds {size} combination(s): running {size} trial(s), not {total}")
            total = size
    total = total or DEFAULT_SAMPLES
    if not resume:
        setup.preflight_data(loaded, recipe)
    search = setup.SearchDir.open(
        output,
        resume=resume,
        record={
            "kind": "tune",
            "metric": metric,
            "mode": mode,
            "samples": total,
            "recipe": recipe.model_dump(mode="json", exclude={"extends"}),
        },
        verb="search",
    )
    scheduler = tune_section.scheduler_type
    folds = f", each the mean of {tune_section.cv.folds} folds" if tune_section.cv else ""
    setup.announce(
        "tune",
        search,
        f"{total} trial(s){folds}, {tune_section.search} sampler, {scheduler} scheduler, {mode}imise {metric}",
    )
    tracking = SearchTracking.open(
        loaded, search.root, "search", {"search": {"metric": metric, "mode": mode, "samples": total}}
    )
    setup.start_ray(loaded, address or recipe.distributed.address)
    pbt = tune_section.scheduler_type == "pbt"
    function = setup.trainable(setup.trial_setup(loaded, search, pbt=pbt, env=tracking.trial_env()), recipe)
    keys = list(tune_section.space)
    from ftl.tune.live import TrialTable

    table = TrialTable(
        metric, mode, keys, title=f"ftl tune {recipe.name}", interactive=setup.is_interactive()
    )
    tuner = setup.restore(search, function, table) if resume else None
    if tuner is None:
        tuner = _new_tuner(loaded, search, function, metric, mode, total, table)
    with tracking.ended_on_failure():
        grid = setup.fit(tuner, table, search, "search")
        results = write_outputs(loaded, search, grid, metric=metric, mode=mode)
        raise_if_all_failed(results, search.trials)
    files = [
        search.record,
        search.root / "trials.csv",
        *([results.best_recipe] if results.best_recipe else []),
    ]
    tracking.finish(results.trials, results.best, metric, files)
    return results


def raise_if_all_failed(results: SearchResults, trials_dir: Path) -> None:
    """Exit 2 (as ftl cv and ftl bench do) when trials ran and every one of them failed."""
    trials = results.trials
    if trials and all(trial.status == "error" for trial in trials):
        failures = [(f"trial {trial.trial_id}", trial.error) for trial in trials]
        raise all_failed("tune", "trial", len(trials), failures, f"{trials_dir}/*/train.log")


def _new_tuner(loaded: LoadedRecipe, search, function, metric: str, mode: str, total: int, table) -> Any:
    from ray.tune import TuneConfig, Tuner

    recipe = loaded.recipe
    tune_section = recipe.tune
    pbt = tune_section.scheduler_type == "pbt"
    if pbt:  # PBT samples and perturbs itself; Ray Tune allows no searcher beside it
        from ray.tune.search.basic_variant import BasicVariantGenerator

        from ftl.tune.space import tune_domains

        param_space, searcher = (
            tune_domains(tune_section),
            BasicVariantGenerator(random_state=tune_section.seed),
        )
    else:
        param_space, searcher = None, _searcher(recipe, search, metric, mode, total)
    return Tuner(
        function,
        param_space=param_space,
        tune_config=TuneConfig(
            metric=metric,
            mode=mode,
            search_alg=searcher,
            scheduler=_scheduler(recipe),
            num_samples=total,
            max_concurrent_trials=setup.concurrency(recipe, tune_section.max_concurrent),
            time_budget_s=tune_section.time_budget_s,
        ),
        run_config=setup.run_config(
            search, max_failures=tune_section.max_failures, callbacks=[table], keep_all=pbt
        ),
    )


def _searcher(recipe, search, metric: str, mode: str, total: int):
    import optuna

    from ftl.tune.resumable import ResumableOptunaSearch
    from ftl.tune.space import grid_space, optuna_space

    tune_section = recipe.tune
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if tune_section.search == "grid":
        sampler = optuna.samplers.GridSampler(grid_space(tune_section), seed=tune_section.seed)
    elif tune_section.search == "random":
        sampler = optuna.samplers.RandomSampler(seed=tune_section.seed)
    else:
        startup = tune_section.startup_trials or min(10, max(2, total // 4))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # Trials run in parallel: constant_liar keeps concurrent trials apart (Optuna's advice for parallel
            # optimisation) and multivariate TPE models the dimensions jointly.
            sampler = optuna.samplers.TPESampler(
                seed=tune_section.seed, n_startup_trials=startup, constant_liar=True, multivariate=True
            )
    storage = open_storage(study_storage(recipe, search))
    return ResumableOptunaSearch(
        search_id=str(search.root.resolve()),
        space=optuna_space(tune_section),
        metric=metric,
        mode=mode,
        sampler=sampler,
        study_name=study_name(recipe),
        storage=storage,
    )


def _scheduler(recipe):
    from ray.tune.schedulers import (
        ASHAScheduler,
        FIFOScheduler,
        MedianStoppingRule,
        PopulationBasedTraining,
    )

    tune_section = recipe.tune
    scheduler = tune_section.scheduler
    if tune_section.scheduler_type == "asha":
        return ASHAScheduler(
            time_attr="evaluation",
            max_t=scheduler.max_evaluations or 10**6,
            grace_period=scheduler.grace_period,
            reduction_factor=scheduler.reduction_factor,
        )
    if tune_section.scheduler_type == "median":
        return MedianStoppingRule(
            time_attr="evaluation",
            grace_period=scheduler.grace_period,
            min_samples_required=scheduler.min_samples,
        )
    if tune_section.scheduler_type == "pbt":
        from ftl.tune.space import tune_domains

        return PopulationBasedTraining(
            time_attr="evaluation",
            perturbation_interval=scheduler.perturbation_interval,
            quantile_fraction=scheduler.quantile_fraction,
            hyperparam_mutations=tune_domains(tune_section),
        )
    return FIFOScheduler()
