"""`ftl export` on a run whose model folder is damaged: the same one line as `ftl eval` and `ftl predict`."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.conftest import fails


def _run(root: Path, config: str) -> Path:
    run = root / "run"
    (run / "model").mkdir(parents=True)
    recipe = {
        "name": "run",
        "seed": 1,
        "model": {"name_or_path": "org/model"},
        "task": {"type": "sequence_classification", "labels": ["a", "b"]},
        "data": {"train": "train.tsv"},
        "train": {"lr": 1.0e-4, "epochs": 1},
    }
    (run / "recipe.resolved.yaml").write_text(yaml.safe_dump(recipe))
    (run / "metrics.json").write_text(json.dumps({"eval_accuracy": 0.5}))
    (run / "model" / "config.json").write_text(config)
    (run / "model" / "ftl_task.json").write_text("{}")
    return run


def test_export_of_a_corrupt_config_is_one_line(tmp_path, capsys):
    run = _run(tmp_path, "{")
    line = fails(capsys, ["export", str(run), "-o", str(tmp_path / "exported")])
    assert "cannot load the run's model" in line
    assert "config.json" in line and "not valid JSON" in line
    assert "run the recipe again" in line
    assert not (tmp_path / "exported").exists()
    assert not list(tmp_path.glob(".exported*"))


def test_export_of_a_model_folder_without_weights_is_one_line(tmp_path, capsys):
    run = _run(tmp_path, json.dumps({"model_type": "bert"}))
    line = fails(capsys, ["export", str(run), "-o", str(tmp_path / "exported")])
    assert "cannot load the run's model" in line
