"""A checkpoint is complete under its name or absent: a kill inside a save leaves the newest checkpoint loadable,
and resuming picks the newest complete checkpoint, never a folder whose files do not match its marker."""

from __future__ import annotations

import json
import shutil

import pytest

from ftl.launcher.errors import FtlError
from ftl.launcher.train.checkpoints import MARKER, STAGING, is_complete, newest_complete, publish, seal
from ftl.launcher.train.resume import resume_point
from ftl.launcher.train.rundir import RunDir
from tests.reliability.conftest import assert_loadable, child_env, one_error_line
from tests.reliability.faults import run_in_child


def _checkpoint(root, step: int, *, sealed: bool = True):
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"w" * 100)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if sealed:
        seal(folder, step)
    return folder


def test_only_sealed_checkpoints_with_every_file_count(tmp_path):
    run = RunDir(tmp_path)
    _checkpoint(run.checkpoints, 2)
    four = _checkpoint(run.checkpoints, 4)
    _checkpoint(run.checkpoints, 6, sealed=False)  # written in place by a tool that does not seal
    eight = _checkpoint(run.checkpoints, 8)
    (eight / "model.safetensors").write_bytes(b"w" * 50)  # truncated after sealing
    ten = _checkpoint(run.checkpoints, 10)
    (ten / "model.safetensors").unlink()
    (run.checkpoints / "checkpoint-12").mkdir()  # an empty folder
    assert [is_complete(run.checkpoints / f"checkpoint-{n}") for n in (2, 4, 6, 8, 10, 12)] == [
        True,
        True,
        False,
        False,
        False,
        False,
    ]
    assert run.last_checkpoint() == four == newest_complete(run.checkpoints)
    assert json.loads((four / MARKER).read_text()) == {
        "step": 4,
        "files": {"model.safetensors": 100, "trainer_state.json": len(json.dumps({"global_step": 4}))},
    }


def test_resume_removes_what_interrupted_saves_left(tmp_path):
    run = RunDir(tmp_path)
    four = _checkpoint(run.checkpoints, 4)
    _checkpoint(run.checkpoints, 6, sealed=False)
    _checkpoint(run.checkpoints / STAGING, 8)  # sealed but never named
    assert resume_point(run, announce=False) == four
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["checkpoint-4"]


@pytest.mark.parametrize(
    "damage, named",
    [
        (
            lambda f: (f / "model.safetensors").write_bytes(b"w" * 50),
            "model.safetensors holds 50 bytes, 100 when",
        ),
        (lambda f: (f / "trainer_state.json").unlink(), "trainer_state.json is missing"),
        (lambda f: (f / MARKER).write_text("{"), f"its marker {MARKER} is unreadable"),
    ],
    ids=["truncated", "missing", "marker"],
)
def test_resume_refuses_a_checkpoint_damaged_after_it_was_sealed_and_keeps_it(tmp_path, damage, named):
    run = RunDir(tmp_path)
    _checkpoint(run.checkpoints, 4)
    six = _checkpoint(run.checkpoints, 6)
    damage(six)
    with pytest.raises(FtlError) as error:
        resume_point(run, announce=False)
    assert f"--resume: {six} was written whole, but {named}" in str(error.value)
    assert "to resume from checkpoint-4" in str(error.value)
    assert six.is_dir() and sorted(p.name for p in run.checkpoints.iterdir()) == [
        "checkpoint-4",
        "checkpoint-6",
    ]


def test_resume_of_a_finished_run_refuses_and_leaves_the_run_as_it_was(capsys, short_run, tmp_path):
    from ftl.launcher.cli import main

    out = tmp_path / "run"
    assert main(["run", str(short_run), "--output", str(out)]) == 0
    files = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    message = one_error_line(capsys, ["run", str(short_run), "--output", str(out), "--resume"])
    assert message == (
        f"error: --resume: {out} has finished (its model and metrics.json are written): nothing to resume; "
        "train again into a new --output"
    )
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == files


def test_resume_refuses_data_files_changed_since_the_run_started(capsys, short_run, tmp_path):
    from ftl.launcher.cli import main

    out = tmp_path / "run"
    assert main(["run", str(short_run), "--output", str(out)]) == 0
    (out / "metrics.json").unlink()  # as if killed after its last checkpoint
    shutil.rmtree(out / "model")
    data = short_run.parent / "train.tsv"
    original = data.read_text()
    data.write_text(original.replace("\t0\n", "\t1\n", 3))  # three labels changed
    message = one_error_line(capsys, ["run", str(short_run), "--output", str(out), "--resume"])
    assert message.startswith("error: --resume: the data files differ from those the run started on (train ")
    assert "resume with them as they were, or train again into a new --output" in message
    data.write_text(original)
    assert main(["run", str(short_run), "--output", str(out), "--resume"]) == 0


def test_publishing_replaces_a_leftover_of_the_same_name(tmp_path):
    old = _checkpoint(tmp_path, 4, sealed=False)
    staged = _checkpoint(tmp_path / STAGING, 4)
    publish(staged, old)
    assert is_complete(old) and not staged.exists()
    shutil.rmtree(old)


@pytest.mark.slow
@pytest.mark.parametrize("fault", [("kill-write", 4, "optimizer.pt"), ("kill-seal", 4)], ids=lambda f: f[0])
def test_a_kill_inside_a_save_leaves_the_newest_checkpoint_loadable(fault, short_run, tmp_path):
    out, log = tmp_path / "run", tmp_path / "log"
    env = child_env(tmp_path / "ftl-cache")
    code = run_in_child(["run", str(short_run), "--output", str(out)], fault, env=env, cwd=tmp_path, log=log)
    assert code == -9, log.read_text()
    staged = out / "checkpoints" / STAGING / "checkpoint-4"
    assert staged.is_dir() and not (out / "checkpoints" / "checkpoint-4").exists()
    assert is_complete(staged) == (fault[0] == "kill-seal")  # sealed, but a checkpoint only once named
    newest = RunDir(out).last_checkpoint()
    assert newest is not None and newest.name == "checkpoint-2"
    assert_loadable(newest)
