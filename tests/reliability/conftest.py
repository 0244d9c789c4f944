"""A tiny deterministic CPU run to break: 8 optimizer steps of a 2-layer BERT, a checkpoint every 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ftl.launcher.train.checkpoints import MARKER
from tests.conftest import edit_recipe, env_without_hub, sentiment_rows, write_tsv

STEPS = 8
CHECKPOINT_EVERY = 2
RUN_SETTINGS = {
    "train": {
        "max_steps": STEPS,
        "batch_size": 8,
        "checkpoint_every_steps": CHECKPOINT_EVERY,
        "keep_checkpoints": 2,
        "log_every_steps": 1,
        "warmup_ratio": 0.0,
    },
    "eval": {"every_steps": 4, "select_best": False},
    "log": {"progress": False, "tensorboard": False},
}


@pytest.fixture
def short_run(classification_recipe) -> Path:
    """The tiny classification recipe as an 8-step run with a checkpoint every 2 steps."""
    return as_short_run(classification_recipe)


def as_short_run(recipe: Path) -> Path:
    write_tsv(recipe.parent / "train.tsv", sentiment_rows(120, seed=2))
    return edit_recipe(recipe, **RUN_SETTINGS)


def one_error_line(capsys, argv: list[str]) -> str:
    """Run the CLI in this process on a failure found while running: exit code 2, no traceback, and one error
    line (after whatever the run reported until then)."""
    from ftl.launcher.cli import main

    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    return errors[0]


def child_env(cache: Path, **extra: str) -> dict[str, str]:
    return {**env_without_hub(), "FTL_CACHE": str(cache), **extra}


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


def assert_loadable(checkpoint: Path) -> None:
    """Every file of a checkpoint reads back: its marker, the weights, optimizer, scheduler, RNG, state."""
    listed = json.loads((checkpoint / MARKER).read_text())["files"]
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"} <= set(listed)
    load_file(str(checkpoint / "model.safetensors"))
    for name in listed:
        if name.endswith((".pt", ".pth")):
            torch.load(checkpoint / name, weights_only=False)
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert f"checkpoint-{state['global_step']}" == checkpoint.name
