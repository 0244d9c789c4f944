"""A full disk while writing a checkpoint (ENOSPC from the real writer's call) is one clear line; the checkpoint
being written never appears, the previous one is intact, and --resume finishes the run once there is space."""

from __future__ import annotations

import errno
import json

import pytest
import torch

from ftl.launcher.cli import main
from ftl.launcher.train import rundir
from ftl.launcher.train.checkpoints import STAGING
from tests.reliability.conftest import assert_loadable, one_error_line
from tests.reliability.faults import failing_torch_save

pytestmark = pytest.mark.slow


def test_disk_full_during_a_checkpoint(capsys, monkeypatch, short_run, tmp_path):
    monkeypatch.setattr(torch, "save", failing_torch_save("enospc", 4, "optimizer.pt"))
    out = tmp_path / "run"
    message = one_error_line(capsys, ["run", str(short_run), "--output", str(out)])
    assert "no space left on the device while writing checkpoint-4 in" in message
    assert "the previous checkpoint checkpoint-2 is intact" in message and "--resume" in message
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2"]  # no staging left
    assert_loadable(out / "checkpoints" / "checkpoint-2")

    monkeypatch.undo()  # space was freed
    assert main(["run", str(short_run), "--output", str(out), "--resume"]) == 0
    assert json.loads((out / "metrics.json").read_text())["train_steps"] == 8
    assert json.loads((out / "manifest.json").read_text())["resumed_from"] == "checkpoint-2"
    assert not (out / "checkpoints" / STAGING).exists()


def test_disk_full_while_writing_the_results(capsys, monkeypatch, short_run, tmp_path):
    write = rundir.atomic_write

    def full_for_metrics(path, text):
        if path.name == "metrics.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        write(path, text)

    monkeypatch.setattr(rundir, "atomic_write", full_for_metrics)
    out = tmp_path / "run"
    message = one_error_line(capsys, ["run", str(short_run), "--output", str(out)])
    assert f"no space left on the device writing {out / 'metrics.json'}" in message
    assert not (out / "metrics.json").exists()
    assert_loadable(out / "checkpoints" / "checkpoint-8")
