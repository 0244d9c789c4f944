"""Running a staged recipe: each stage is an ordinary run in <output>/<stage>/, started from the model the
stage it names trained (see `launcher/recipe/stages.py`).

<output>/recipe.resolved.yaml   the whole staged recipe
<output>/<stage>/               each stage's run directory (its recipe names the model it started from)
<output>/stages.json            each stage's run directory and final metrics
<output>/metrics.json           the last stage's metrics (the model the stages end with)

With --resume, finished stages are kept and the first unfinished one continues from its last checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ftl.launcher.console import log
from ftl.launcher.errors import FtlError
from ftl.launcher.recipe.loader import STARTING_MODEL_KEYS, LoadedRecipe, StagePlan
from ftl.launcher.train.resume import check_same_recipe
from ftl.launcher.train.rundir import RunDir


def run_stages(
    loaded: LoadedRecipe, rundir: RunDir, *, resume: bool, run: Callable[..., dict[str, Any]]
) -> dict[str, Any]:
    """Each stage's recipe through `run` (`ftl run`'s own function: a stage may scale out)."""
    finished: dict[str, Path] = {}
    summary: list[dict[str, Any]] = []
    metrics: dict[str, Any] = {}
    for index, plan in enumerate(loaded.stages):
        folder = rundir.root / plan.stage.name
        stage = _starting_from(plan, index, loaded, finished)
        if resume and RunDir(folder).finished():
            # kept only if the recipe still says what it trained
            check_same_recipe(RunDir(folder), _as_stored(stage, folder))
            log(f"[bold]stage {plan.stage.name}[/]: finished before; kept")
            metrics = RunDir(folder).read_json("metrics.json")
        else:
            log(
                f"[bold]stage {index + 1}/{len(loaded.stages)}: {plan.stage.name}[/] ({stage.recipe.task.type})"
            )
            again = resume and (folder / "recipe.resolved.yaml").exists()
            try:
                metrics = run(stage, folder, resume=again)
            except FtlError as exc:
                raise FtlError(f"stage {plan.stage.name}: {exc}") from None
        finished[plan.stage.name] = folder
        summary.append({"stage": plan.stage.name, "run_dir": str(folder), "metrics": metrics})
        rundir.write_json("stages.json", {"stages": summary})
    rundir.write_json("metrics.json", metrics)
    return metrics


def _starting_from(
    plan: StagePlan, index: int, loaded: LoadedRecipe, finished: dict[str, Path]
) -> LoadedRecipe:
    """The stage's recipe with its model pointed at the model it starts from."""
    source = plan.stage.init_from
    if source == "base" or (source == "previous" and index == 0):
        return plan.loaded
    name = loaded.stages[index - 1].stage.name if source == "previous" else source
    model_dir = finished[name] / "model"  # whole, not LoRA adapters: the loader refuses a start from those
    stage_recipe = plan.loaded.recipe
    unread = {key: None for key in STARTING_MODEL_KEYS}  # the keys the loader refuses in such a stage's model
    model = stage_recipe.model.model_copy(
        update={**unread, "name_or_path": str(model_dir.resolve()), "local_copies": []}
    )
    recipe = stage_recipe.model_copy(update={"model": model})
    return LoadedRecipe(recipe, plan.loaded.path, plan.loaded.origins, plan.loaded.overrides)


def _as_stored(stage: LoadedRecipe, folder: Path) -> LoadedRecipe:
    """The stage's recipe with the earlier stage's model named as the finished stage recorded it: the same
    <stage>/model of this run, at another absolute path when the run folder was moved since."""
    stored = RunDir(folder).read_recipe().model.name_or_path
    current = stage.recipe.model.name_or_path
    if not (stored and current) or Path(stored).parts[-2:] != Path(current).parts[-2:]:
        return stage
    if Path(current).parent.parent.resolve() != folder.parent.resolve():
        return stage
    model = stage.recipe.model.model_copy(update={"name_or_path": stored})
    return LoadedRecipe(
        stage.recipe.model_copy(update={"model": model}), stage.path, stage.origins, stage.overrides
    )
