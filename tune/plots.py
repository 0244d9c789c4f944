"""PNG plots of a search from its Optuna study: optimisation history, parameter importances, parallel
coordinates. Plots that need more trials than the search has are skipped with a note, not an error."""

from __future__ import annotations

import warnings
from pathlib import Path

from ftl.launcher.console import log
from ftl.tune.study import study_name, study_storage

_PLOTS = {
    "history.png": "plot_optimization_history",
    "importances.png": "plot_param_importances",
    "parallel_coordinates.png": "plot_parallel_coordinate",
}


def write_plots(recipe, search) -> list[Path]:
    """Write the plots into <search>/plots; returns the files written."""
    if recipe.tune.scheduler_type == "pbt":
        return []  # PBT runs without a searcher, so there is no Optuna study to plot
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as optuna_plots

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=study_name(recipe), storage=study_storage(recipe, search))
    except Exception as exc:  # noqa: BLE001 - a missing or unreachable study: no plots, the rest stands
        log(f"[yellow]no plots: the Optuna study could not be read ({exc})[/]")
        return []
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    folder = search.root / "plots"
    folder.mkdir(exist_ok=True)
    written = []
    for name, function in _PLOTS.items():
        if len(finished) < 2 and name != "history.png":
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna marks its matplotlib backend experimental
                axes = getattr(optuna_plots, function)(study)
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
            figure.set_size_inches(9, 5.5)
            figure.tight_layout()
            figure.savefig(folder / name, dpi=110)
            plt.close(figure)
            written.append(folder / name)
        except Exception as exc:  # noqa: BLE001 - a plot must never cost the search its other outputs
            log(f"[yellow]plot {name} skipped: {exc}[/]")
    return written
