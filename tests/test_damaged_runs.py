"""Finished runs damaged afterwards. `ftl compare` on a run whose log_history.json is empty, cut short or not a
training log (and no TensorBoard events): the comparison is still written, with a note saying what is wrong with
the file, never a traceback. `ftl export` of a damaged model folder: the same one line as `ftl eval` and
`ftl predict`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ftl.launcher.cli import main
from ftl.launcher.use.curves import read_curves
from tests.conftest import fails


def _run(root: Path, name: str, history: str | None, config: str = "{}") -> Path:
    run = root / name
    (run / "model").mkdir(parents=True)
    recipe = {
        "name": name,
        "seed": 1,
        "model": {"name_or_path": "org/model"},
        "task": {"type": "sequence_classification", "labels": ["a", "b"]},
        "data": {"train": "train.tsv"},
        "train": {"lr": 1.0e-4, "epochs": 1},
    }
    (run / "recipe.resolved.yaml").write_text(yaml.safe_dump(recipe))
    (run / "metrics.json").write_text(json.dumps({"eval_accuracy": 0.5, "train_steps": 2}))
    (run / "manifest.json").write_text(
        json.dumps({"created": "2026-01-02T03:04:05+00:00", "wall_seconds": 6})
    )
    (run / "model" / "config.json").write_text(config)
    (run / "model" / "ftl_task.json").write_text("{}")
    if history is not None:
        (run / "log_history.json").write_text(history)
    return run


GOOD = json.dumps({"log_history": [{"step": 1, "loss": 0.7}, {"step": 2, "loss": 0.6, "eval_accuracy": 0.5}]})


@pytest.mark.parametrize(
    ("content", "said"),
    [
        ("", "log_history.json: empty"),
        ("[1,2", "log_history.json: not valid JSON (line 1"),
        ("[1, 2]", "log_history.json: not a training log"),
        ('{"log_history": 3}', "log_history.json: not a training log"),
    ],
)
def test_a_damaged_log_history_is_named_not_a_traceback(tmp_path, capsys, content, said):
    broken = _run(tmp_path, "broken", content)
    good = _run(tmp_path, "good", GOOD)
    capsys.readouterr()
    assert main(["compare", str(broken), str(good), "-o", str(tmp_path / "cmp")]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"no curves for broken: {broken / 'log_history.json'}"[:40] in err
    assert said in err
    assert "no TensorBoard events or log_history.json" not in err  # the file is there: say what is wrong
    report = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert said in report["runs"][0]["curves_problem"]


def test_odd_entries_of_a_log_history_are_skipped(tmp_path):
    history = {"log_history": [1, {"step": "x", "loss": 1.0}, {"step": 2, "loss": 0.5}, {"loss": 0.4}]}
    run = _run(tmp_path, "odd", json.dumps(history))
    curves = read_curves(run)
    assert curves.source == "log_history.json" and curves.problem is None
    assert curves.series == {"train/loss": [(2, 0.5)]}


def test_empty_event_files_fall_back_to_log_history(tmp_path):
    run = _run(tmp_path, "empty-events", GOOD)
    (run / "tensorboard").mkdir()
    (run / "tensorboard" / "events.out.tfevents.1.host").write_bytes(b"")
    curves = read_curves(run)
    assert curves.source == "log_history.json"
    assert curves.series["train/loss"] == [(1, 0.7), (2, 0.6)]


def test_export_of_a_corrupt_config_is_one_line(tmp_path, capsys):
    run = _run(tmp_path, "run", None, config="{")
    line = fails(capsys, ["export", str(run), "-o", str(tmp_path / "exported")])
    assert "cannot load the run's model" in line
    assert "config.json" in line and "not valid JSON" in line
    assert "run the recipe again" in line
    assert not (tmp_path / "exported").exists()
    assert not list(tmp_path.glob(".exported*"))


def test_export_of_a_model_folder_without_weights_is_one_line(tmp_path, capsys):
    run = _run(tmp_path, "run", None, config=json.dumps({"model_type": "bert"}))
    line = fails(capsys, ["export", str(run), "-o", str(tmp_path / "exported")])
    assert "cannot load the run's model" in line
