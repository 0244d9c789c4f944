"""A finished run, opened for use: its recipe, the task with its trained state (label names, ...), the
tokenizer, and on demand the model (a full model, or the base model with the run's LoRA adapter).

A staged run's model is its last stage's; a folder that is not a run but holds runs (a search, a folder of
runs) is named as such, with an example of a run inside it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftl.launcher.console import log
from ftl.launcher.errors import FtlError, first_line
from ftl.launcher.model.integrity import broken_file
from ftl.launcher.model.load import quiet_transformers
from ftl.launcher.model.saved import load_trained
from ftl.launcher.recipe.schema import Recipe
from ftl.launcher.tasks.base import Task
from ftl.launcher.tasks.registry import task_for
from ftl.launcher.train.rundir import TASK_STATE_FILE, RunDir
from ftl.launcher.use.runs import find_runs


@dataclass
class TrainedRun:
    rundir: RunDir
    recipe: Recipe
    task: Task
    tokenizer: Any
    device: str  # "cuda" when a GPU is visible (and the run did not ask for the CPU), else "cpu"

    def load_model(self):
        """The trained model on this run's device, in evaluation mode."""
        import warnings

        with warnings.catch_warnings(), damaged(self.rundir.model, "model"):
            warnings.simplefilter("ignore", FutureWarning)  # the libraries' deprecation notices
            model = load_trained(self.rundir.model, self.task.model_class())
        self.task.configure_model(model, self.tokenizer)
        return model.to(self.device).eval()


def open_trained(path: Path) -> TrainedRun:
    """Open a finished run directory (or a staged run's last stage); FtlError when `path` is none."""
    from transformers import AutoTokenizer

    rundir = RunDir.existing(run_root(path))
    recipe = rundir.read_recipe()
    quiet_transformers(recipe.log.level)
    task = task_for(recipe.task)
    state_file = rundir.model / TASK_STATE_FILE
    if not state_file.exists():
        raise FtlError(
            f"{state_file} is missing (the run's label names and task settings); the run folder is incomplete: "
            "run the recipe again"
        )
    with damaged(rundir.model, "tokenizer and task state"):
        task.restore(json.loads(state_file.read_text()))
        tokenizer = AutoTokenizer.from_pretrained(str(rundir.model))
        task.use_tokenizer(tokenizer)
    return TrainedRun(rundir, recipe, task, tokenizer, _device(recipe))


@contextmanager
def damaged(folder: Path, what: str) -> Iterator[None]:
    """A model folder that cannot be read (files missing, cut short, or not what they should be): one line.
    Shared by every verb that reads a run's model (eval, predict, generate, export)."""
    try:
        yield
    except FtlError:
        raise
    except Exception as exc:  # JSON, safetensors and tokenizer libraries raise their own types
        broken = broken_file(folder)
        reason = broken or f"{folder}: {first_line(exc)}"
        raise FtlError(
            f"cannot load the run's {what}: {reason}; the folder is incomplete or damaged: run the recipe again "
            "(or ftl run --resume from its checkpoints)"
        ) from None


def run_root(path: Path) -> Path:
    """The run directory to use for `path`: itself, or the last stage of a staged run."""
    if not path.exists():
        raise FtlError(f"{path}: no such directory; give a run directory (the --output of ftl run)")
    if not path.is_dir():
        raise FtlError(f"{path}: is a file; give a run directory (the --output of ftl run)")
    recipe_file = RunDir(path).recipe_file
    if not recipe_file.exists():
        inside = [run for run in find_runs(path) if (run / "model" / "config.json").exists()]
        if inside:
            raise FtlError(
                f"{path}: not a run directory but a folder of {len(inside)} run(s), e.g. {inside[0]}; "
                f"give one of them (list them with: ftl runs {path})"
            )
        return path  # RunDir.existing names what is missing
    stages = RunDir(path).read_recipe().stages
    if not stages:
        return path
    last = stages[-1].name
    if not (path / last / "model" / "config.json").exists():
        raise FtlError(
            f"{path}: a staged run whose last stage '{last}' has not finished; finish it with ftl run --resume"
        )
    log(f"{path}: a staged run; using the model of its last stage, {path / last}")
    return path / last


def _device(recipe: Recipe) -> str:
    import torch

    return "cuda" if torch.cuda.is_available() and recipe.train.device != "cpu" else "cpu"
