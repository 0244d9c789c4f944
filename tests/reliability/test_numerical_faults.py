"""A NaN loss (injected into the real training loop) never reaches the weights: `train.nan_policy: stop` ends the
run after `train.max_bad_steps` such steps in a row with one clear line, its newest checkpoint a good one;
`skip` steps over them and finishes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import Trainer

from ftl.launcher.cli import main
from ftl.launcher.train.checkpoints import STAGING
from tests.reliability.conftest import assert_loadable, one_error_line
from tests.reliability.faults import nan_losses

pytestmark = pytest.mark.slow


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    capsys, monkeypatch, short_run, tmp_path
):
    monkeypatch.setattr(Trainer, "compute_loss", nan_losses([5]))
    out = tmp_path / "run"
    message = one_error_line(capsys, ["run", str(short_run), "--output", str(out)])
    assert "train.nan_policy: the loss was nan for 1 step(s) in a row (up to step 5" in message
    assert "the last good checkpoint is checkpoint-4" in message and "--resume" in message
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert_loadable(out / "checkpoints" / "checkpoint-4")
    assert not (out / "metrics.json").exists() and not (out / "model").exists()


def test_bad_steps_are_never_applied_and_the_limit_is_configurable(capsys, monkeypatch, short_run, tmp_path):
    monkeypatch.setattr(Trainer, "compute_loss", nan_losses([5, 6, 7]))
    out = tmp_path / "run"
    message = one_error_line(capsys, ["run", str(short_run), "train.max_bad_steps=3", "--output", str(out)])
    assert "for 3 step(s) in a row (up to step 7; train.max_bad_steps 3)" in message
    assert "the last good checkpoint is checkpoint-6" in message
    four, six = (
        load_file(str(out / "checkpoints" / f"checkpoint-{n}" / "model.safetensors")) for n in (4, 6)
    )
    assert all(torch.equal(four[name], six[name]) for name in four)  # steps 5 and 6 changed nothing


def test_skip_policy_steps_over_bad_losses_and_finishes(capsys, monkeypatch, short_run, tmp_path):
    monkeypatch.setattr(Trainer, "compute_loss", nan_losses([3, 4]))
    out = tmp_path / "run"
    assert main(["run", str(short_run), "train.nan_policy=skip", "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert "step 3: the loss is nan; the step was not applied (1 in a row" in err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped_steps"] == 2 and metrics["train_steps"] == 8
    final = load_file(str(out / "model" / "model.safetensors"))
    assert all(torch.isfinite(tensor).all() for tensor in final.values())
    assert not (out / "checkpoints" / STAGING).exists()
