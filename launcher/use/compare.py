"""`ftl compare RUN RUN [RUN...]`: how runs differ and how they did.

* recipe differences: every dotted key of the resolved recipes whose values are not the same in all runs;
* a metric table: each run's final evaluation (best value of a row in bold), train steps and wall time;
* compare.png: one chart per quantity (training loss, evaluation loss, the tasks' main metrics and any
  --metric), one line per run, from each run's TensorBoard events (log_history.json without them).

Written to the output folder: compare.png, compare.md (the tables and the figure) and compare.json (the same
numbers, and every plotted point). Paths of the written files go to stdout, the tables to stderr.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftl.launcher import markdown
from ftl.launcher.console import console, log, out
from ftl.launcher.errors import FtlError
from ftl.launcher.files import atomic_write, make_dir
from ftl.launcher.recipe.loader import load_recipe
from ftl.launcher.use.curves import Curves, read_curves
from ftl.launcher.use.runs import RECIPE_FILE, RunInfo, describe, duration

MAX_CHARTS = 8
# matplotlib's tab10: a run's colour in every chart
RUN_COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
_MISSING = "(not set)"


@dataclass
class Comparison:
    names: list[str]
    runs: list[RunInfo]
    differences: dict[str, list[Any]]  # dotted key -> value per run
    metrics: dict[str, list[float | None]]  # metric -> value per run
    curves: dict[str, dict[str, list[tuple[int, float]]]]  # quantity -> run name -> points (what is plotted)
    sources: list[str] = field(
        default_factory=list
    )  # per run: where its curves come from (see Curves.source)
    files: dict[str, Path] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)  # run name -> why its curves could not be read


def compare_runs(paths: list[Path], output: Path, *, extra_metrics: list[str] | None = None) -> Comparison:
    if len(paths) < 2:
        raise FtlError("ftl compare: give at least two run directories")
    for path in paths:
        if not (path / RECIPE_FILE).is_file():
            what = "no such directory" if not path.exists() else f"not a run directory (no {RECIPE_FILE})"
            raise FtlError(f"{path}: {what}; give the --output of ftl run (list runs with: ftl runs DIR)")
    if len({path.resolve() for path in paths}) < len(paths):
        raise FtlError("ftl compare: a run is given twice; give different run directories")
    if output.exists() and not output.is_dir():
        raise FtlError(
            f"--output: {output} is a file; give a folder for compare.png, compare.md, compare.json"
        )
    names = short_names(paths)
    runs = [describe(path) for path in paths]
    recipes = [flatten(_resolved(path)) for path in paths]
    curves = [read_curves(path) for path in paths]
    comparison = Comparison(
        names=names,
        runs=runs,
        differences=differences(recipes),
        metrics=metric_rows(runs),
        curves=plotted(names, curves, runs, extra_metrics or []),
        sources=[c.source for c in curves],
        problems={name: c.problem for name, c in zip(names, curves, strict=True) if c.problem},
    )
    if output.exists() and not output.is_dir():
        raise FtlError(
            f"--output: {output} is a file; give a folder for compare.png, compare.md and compare.json"
        )
    make_dir(output, "--output")
    comparison.files = {
        "png": output / "compare.png",
        "md": output / "compare.md",
        "json": output / "compare.json",
    }
    for path in comparison.files.values():
        if path.exists():
            log(f"replacing {path}")
    draw(comparison, comparison.files["png"])
    atomic_write(comparison.files["md"], markdown_report(comparison, paths))
    atomic_write(comparison.files["json"], json.dumps(as_json(comparison), indent=2, default=str) + "\n")
    _print(comparison)
    for path in comparison.files.values():
        out.print(str(path), markup=False)
    return comparison


# ---- what differs ---------------------------------------------------------------------------------
def _resolved(run: Path) -> dict[str, Any]:
    """The run's recipe, validated, with every default (as `ftl run` wrote it)."""
    return load_recipe(run / RECIPE_FILE).recipe.model_dump(mode="json", exclude={"extends"})


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1e-3}} -> {'train.lr': 1e-3}; lists and empty mappings are values."""
    if isinstance(data, dict) and data:
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: data} if prefix else {}


def differences(recipes: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Dotted key -> each recipe's value, for the leaf keys whose values differ. A section one recipe leaves
    out (e.g. lora: null) shows as that value in each of the other recipes' keys below it."""
    keys = list(dict.fromkeys(key for recipe in recipes for key in recipe))
    interior = {
        key.rsplit(".", i)[0] for recipe in recipes for key in recipe for i in range(1, key.count(".") + 1)
    }
    rows = {}
    for key in keys:
        if key in interior:  # a section here, a leaf (e.g. null) elsewhere: its keys below say it
            continue
        values = [_lookup(recipe, key) for recipe in recipes]
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) > 1:
            rows[key] = values
    return rows


def _lookup(recipe: dict[str, Any], key: str) -> Any:
    """The value of a dotted key, or of the nearest enclosing key that is a leaf here (a section set to null)."""
    if key in recipe:
        return recipe[key]
    parts = key.split(".")
    for end in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in recipe:
            return recipe[prefix]
    return _MISSING


def metric_rows(runs: list[RunInfo]) -> dict[str, list[float | None]]:
    names = list(dict.fromkeys(metric for run in runs for metric in run.metrics))
    main = list(dict.fromkeys(m for run in runs for m in run.main_metrics))
    ordered = [m for m in main if m in names] + [m for m in names if m not in main]
    rows: dict[str, list[float | None]] = {m: [run.metrics.get(m) for run in runs] for m in ordered}
    rows["train_steps"] = [None if run.steps is None else float(run.steps) for run in runs]
    rows["wall_seconds"] = [run.seconds for run in runs]
    return rows


def short_names(paths: list[Path]) -> list[str]:
    """The folder names, with as many parent folders as it takes to tell them apart."""
    parts = [path.resolve().parts for path in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(path) for path in paths]  # the same directory twice


# ---- curves ---------------------------------------------------------------------------------------
def plotted(
    names: list[str], curves: list[Curves], runs: list[RunInfo], extra: list[str]
) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """quantity -> run -> points, for the quantities worth a chart that at least one run has."""
    wanted = ["train/loss", "eval/loss"]
    for run in runs:
        wanted += [f"eval/{m}" for m in run.main_metrics]
    wanted += [m if "/" in m else f"eval/{m.removeprefix('eval_')}" for m in extra]
    available = {tag for c in curves for tag in c.series}
    for metric in extra:
        tag = metric if "/" in metric else f"eval/{metric.removeprefix('eval_')}"
        if tag not in available:
            from ftl.launcher.errors import did_you_mean, one_of

            raise FtlError(
                f"--metric: no run has a curve '{tag}'{did_you_mean(tag, available)}; curves: {one_of(sorted(available))}"
            )
    chosen = [tag for tag in dict.fromkeys(wanted) if tag in available][:MAX_CHARTS]
    return {
        tag: {name: c.series[tag] for name, c in zip(names, curves, strict=True) if tag in c.series}
        for tag in chosen
    }


def draw(comparison: Comparison, path: Path) -> None:
    """One chart per quantity, a line per run (RUN_COLOURS, in order), each chart with a legend. Drawn in
    matplotlib's default style whatever the process set before (optuna's plots switch to ggplot)."""
    from matplotlib import style

    with style.context("default"):
        _draw(comparison, path)


def _draw(comparison: Comparison, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    charts = comparison.curves
    count = max(len(charts), 1)
    columns = 1 if count == 1 else 2
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(6.4 * columns, 3.8 * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    colours = {name: RUN_COLOURS[i % len(RUN_COLOURS)] for i, name in enumerate(comparison.names)}
    if not charts:
        axes = figure.add_subplot(1, 1, 1)
        axes.text(0.5, 0.5, "no curves: the runs have no TensorBoard events or log_history.json", ha="center")
        axes.set_axis_off()
    for index, (tag, per_run) in enumerate(charts.items()):
        axes = figure.add_subplot(rows, columns, index + 1)
        for name, points in per_run.items():
            steps, values = zip(*points, strict=True) if points else ((), ())
            axes.plot(
                steps,
                values,
                label=name,
                color=colours[name],
                marker="o" if len(points) <= 30 else None,
                markersize=3,
                linewidth=1.5,
            )
        axes.set_title(tag)
        axes.set_xlabel("step")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    figure.savefig(temporary, format="png")
    temporary.replace(path)


# ---- reports --------------------------------------------------------------------------------------
def _best(metric: str, values: list[float | None], runs: list[RunInfo]) -> int | None:
    present = [(i, v) for i, v in enumerate(values) if v is not None and not math.isnan(v)]
    if len(present) < 2 or metric in ("train_steps", "wall_seconds"):
        return None
    mode = next((r.modes[metric] for r in runs if metric in r.modes), "min" if "loss" in metric else "max")
    pick = max if mode == "max" else min
    return pick(present, key=lambda item: item[1])[0]


def _cell(metric: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if metric == "wall_seconds":
        return duration(value)
    if metric == "train_steps":
        return str(int(value))
    return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"


def _value(value: Any) -> str:
    if value == _MISSING:
        return value
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def markdown_report(comparison: Comparison, paths: list[Path]) -> str:
    names = comparison.names
    runs = [
        [name, run.task, run.model, run.status, path]
        for name, run, path in zip(names, comparison.runs, paths, strict=True)
    ]
    lines = ["# ftl compare", "", markdown.table(["run", "task", "model", "status", "path"], runs)]
    lines += ["", "## Recipe differences", ""]
    if comparison.differences:
        differences = [[key, *(_value(v) for v in values)] for key, values in comparison.differences.items()]
        lines.append(markdown.table(["key", *names], differences))
    else:
        lines.append("The resolved recipes are the same.")
    metrics = []
    for metric, values in comparison.metrics.items():
        best = _best(metric, values, comparison.runs)
        metrics.append(
            [
                metric,
                *(f"**{_cell(metric, v)}**" if i == best else _cell(metric, v) for i, v in enumerate(values)),
            ]
        )
    lines += [
        "",
        "## Metrics",
        "",
        markdown.table(["metric", *names], metrics, align=["left"] + ["right"] * len(names)),
    ]
    lines += ["", "## Curves", "", "![curves](compare.png)", ""]
    return "\n".join(lines)


def as_json(comparison: Comparison) -> dict[str, Any]:
    return {
        "runs": [
            {
                **run.as_json(),
                "label": name,
                "curves_from": source,
                **({"curves_problem": comparison.problems[name]} if name in comparison.problems else {}),
            }
            for name, run, source in zip(comparison.names, comparison.runs, comparison.sources, strict=True)
        ],
        "differences": comparison.differences,
        "metrics": comparison.metrics,
        "curves": {
            tag: {name: [list(p) for p in points] for name, points in per_run.items()}
            for tag, per_run in comparison.curves.items()
        },
    }


def _print(comparison: Comparison) -> None:
    from rich.markup import escape
    from rich.table import Table

    names = [escape(name) for name in comparison.names]
    table = Table(title="recipe differences", title_justify="left")
    table.add_column("key")
    for name in names:
        table.add_column(name)
    for key, values in comparison.differences.items():
        table.add_row(key, *[escape(_value(v)) for v in values])
    if comparison.differences:
        console.print(table)
    else:
        log("the resolved recipes are the same")
    table = Table(title="metrics", title_justify="left")
    table.add_column("metric")
    for name in names:
        table.add_column(name, justify="right")
    for metric, values in comparison.metrics.items():
        best = _best(metric, values, comparison.runs)
        table.add_row(
            metric,
            *[
                f"[bold]{_cell(metric, v)}[/]" if i == best else _cell(metric, v)
                for i, v in enumerate(values)
            ],
        )
    console.print(table)
    for name, problem in comparison.problems.items():
        log(f"[yellow]note[/]: no curves for {escape(name)}: {escape(problem)}")
    missing = [
        escape(name)
        for name in comparison.names
        if name not in comparison.problems
        and not any(name in per_run for per_run in comparison.curves.values())
    ]
    if missing:
        log(
            f"[yellow]note[/]: no curves for {', '.join(missing)} (no TensorBoard events or log_history.json)"
        )
