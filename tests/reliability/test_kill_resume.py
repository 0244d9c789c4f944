"""SIGKILL at 5 seeded random points of a tiny deterministic CPU run -- 2 between steps, 2 half-way through writing
a checkpoint file, 1 after sealing a checkpoint but before it gets its name -- and `--resume` ends with exactly
the weights and metrics of the run that was never interrupted (bitwise). Before each resume, the newest
checkpoint loads, and the killed save left nothing under a checkpoint name."""

from __future__ import annotations

import json
import random

import pytest
import torch

from ftl.launcher.train.checkpoints import STAGING, is_complete
from ftl.launcher.train.rundir import RunDir
from tests.conftest import write_classification_recipe
from tests.reliability.conftest import (
    CHECKPOINT_EVERY,
    STEPS,
    as_short_run,
    assert_loadable,
    child_env,
    weights,
)
from tests.reliability.faults import run_in_child

pytestmark = pytest.mark.slow

SAVES = range(CHECKPOINT_EVERY, STEPS + 1, CHECKPOINT_EVERY)
_rng = random.Random(8)
CHOSEN = (
    _rng.sample([("kill-step", step) for step in range(1, STEPS + 1)], 2)
    + _rng.sample(
        [("kill-write", step, name) for step in SAVES for name in ("optimizer.pt", "rng_state.pth")], 2
    )
    + _rng.sample([("kill-seal", step) for step in SAVES], 1)
)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The recipe, a shared tokenisation cache, and the weights and metrics of its uninterrupted run."""
    folder = tmp_path_factory.mktemp("reference")
    recipe = as_short_run(write_classification_recipe(folder))
    env = child_env(folder / "ftl-cache")
    whole = folder / "whole"
    code = run_in_child(
        ["run", str(recipe), "--output", str(whole)], None, env=env, cwd=folder, log=folder / "log"
    )
    assert code == 0, (folder / "log").read_text()
    return recipe, env, weights(whole), json.loads((whole / "metrics.json").read_text())


@pytest.mark.parametrize("point", CHOSEN, ids=["-".join(map(str, p)) for p in CHOSEN])
def test_sigkill_then_resume_equals_the_uninterrupted_run(point, reference, tmp_path):
    recipe, env, expected_weights, expected_metrics = reference
    killed, log = tmp_path / "killed", tmp_path / "killed.log"
    command = ["run", str(recipe), "--output", str(killed)]
    assert run_in_child(command, point, env=env, cwd=tmp_path, log=log) == -9, log.read_text()
    assert not (killed / "metrics.json").exists()
    newest = RunDir(killed).last_checkpoint()
    if newest is not None:
        assert_loadable(newest)
    assert all(is_complete(p) for p in (killed / "checkpoints").glob("checkpoint-*"))
    if point[0] != "kill-step":  # the killed save left only a staging folder
        assert not (killed / "checkpoints" / f"checkpoint-{point[1]}").exists()
        assert (killed / "checkpoints" / STAGING / f"checkpoint-{point[1]}").exists()
        assert (
            newest is not None and newest.name == f"checkpoint-{point[1] - CHECKPOINT_EVERY}" or point[1] == 2
        )

    assert run_in_child([*command, "--resume"], None, env=env, cwd=tmp_path, log=log) == 0, log.read_text()
    assert not (killed / "checkpoints" / STAGING).exists()
    resumed = weights(killed)
    assert resumed.keys() == expected_weights.keys()
    for name, tensor in expected_weights.items():
        assert torch.equal(resumed[name], tensor), name
    assert json.loads((killed / "metrics.json").read_text()) == expected_metrics
