"""Discriminative learning rates and gradual unfreezing: which parameters train at which step, and the learning
rate of every layer group, in one process and under DeepSpeed ZeRO-2 with two workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftl.launcher.cli import main
from tests.conftest import edit_recipe

LR, DECAY, EVERY = 1e-2, 0.5, 2
# tiny BERT (2 layers): depth 0 head (+ pooler), 1 layer 1, 2 layer 0, 3 embeddings; group d trains after d x 2 steps
GROUPS = {"head": 0, "layer 1": 1, "layer 0": 2, "embeddings": 3}


def _group_of(name: str) -> str:
    if ".encoder.layer.1." in name:
        return "layer 1"
    if ".encoder.layer.0." in name:
        return "layer 0"
    if ".embeddings." in name:
        return "embeddings"
    return "head"


def _schedule_recipe(recipe: Path, **distributed) -> Path:
    return edit_recipe(
        recipe,
        freeze={"gradual": {"every_steps": EVERY}},
        train={
            "max_steps": 8,
            "batch_size": 16,
            "lr": LR,
            "layer_lr_decay": DECAY,
            "scheduler": "constant",
            "warmup_ratio": 0.0,
            "log_every_steps": 1,
            "checkpoint_every_steps": 1,
            "keep_checkpoints": 10,
        },
        eval={"every_steps": 8, "select_best": False},
        distributed=distributed,
    )


def _weights(checkpoint: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(checkpoint / "model.safetensors"))


def _check_schedule(out: Path) -> None:
    history = json.loads((out / "log_history.json").read_text())["log_history"]
    logged = {entry["step"]: entry for entry in history if "loss" in entry}
    for step, entry in logged.items():  # logged after `step` optimizer steps: the rates of the next step
        for group, depth in GROUPS.items():
            expected = LR * DECAY**depth if step >= depth * EVERY else 0.0
            assert entry[f"lr/{group}"] == pytest.approx(expected, rel=1e-9, abs=1e-15), (step, group)
    checkpoints = {int(p.name.split("-")[1]): p for p in (out / "checkpoints").glob("checkpoint-*")}
    assert set(checkpoints) >= set(range(1, 9))
    for step in range(2, 9):  # optimizer step `step` ran with the rates logged after step - 1
        before, after = _weights(checkpoints[step - 1]), _weights(checkpoints[step])
        changed = {_group_of(name) for name in after if not before[name].equal(after[name])}
        trains = {group for group, depth in GROUPS.items() if step - 1 >= depth * EVERY}
        assert changed == trains, (step, changed, trains)


@pytest.mark.slow
def test_gradual_unfreezing_and_layer_rates_in_one_process(tmp_path, classification_recipe):
    recipe = _schedule_recipe(classification_recipe)
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--output", str(out)]) == 0
    _check_schedule(out)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_after_module")
def test_gradual_unfreezing_and_layer_rates_under_zero2_on_two_workers(tmp_path, classification_recipe):
    recipe = _schedule_recipe(classification_recipe, workers=2, zero_stage=2)
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--output", str(out)]) == 0
    _check_schedule(out)


def test_plan_shows_the_schedule_and_warns_about_groups_the_run_never_reaches(classification_recipe, capsys):
    recipe = edit_recipe(
        classification_recipe,
        freeze={"gradual": {"every_steps": 5}},
        train={"max_steps": 12, "layer_lr_decay": 0.5},
    )
    assert main(["plan", str(recipe)]) == 0
    shown = capsys.readouterr().err
    rows = {
        line.split("│")[0].strip(): [c.strip() for c in line.split("│")[1:]]
        for line in shown.splitlines()
        if "│" in line
    }
    assert rows["head"] == ["1", "the start"]
    assert rows["layer 1"] == ["0.5", "after 5 steps"]
    assert rows["layer 0"] == ["0.25", "after 10 steps"]
    assert rows["embeddings"] == ["0.125", "after 15 steps"]
    assert "embeddings never train: the run (train.max_steps 12) ends before their turn" in shown
