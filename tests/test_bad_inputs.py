"""Every user mistake is one line on stderr naming what and where, exit code 2, no traceback, nothing overwritten."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launcher.cli import main
from tests.conftest import edit_recipe, env_without_hub, write_tsv


def fails(capsys, argv: list[str]) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.strip().splitlines() if line.strip()]
    assert code == 2, captured.err
    assert "Traceback" not in captured.err
    assert len(lines) == 1, captured.err
    return lines[0]


def test_unknown_key_suggests_the_closest(capsys, classification_recipe):
    edit_recipe(classification_recipe, train={"lerning_rate": 1e-3})
    message = fails(capsys, ["check", str(classification_recipe)])
    assert "tiny-cls.yaml:" in message and "unknown key 'lerning_rate' in train" in message


def test_wrong_type_names_the_key(capsys, classification_recipe):
    edit_recipe(classification_recipe, train={"batch_size": "many"})
    message = fails(capsys, ["check", str(classification_recipe)])
    assert "train.batch_size" in message and "valid integer" in message and "'many'" in message


def test_missing_data_file_says_where_it_looked(capsys, classification_recipe):
    edit_recipe(classification_recipe, data={"train": "nowhere/train.tsv"})
    message = fails(capsys, ["check", str(classification_recipe)])
    assert (
        "data.train.path: 'nowhere/train.tsv' not found (looked in" in message and "FTL_DATA_HOME" in message
    )


def test_missing_column_lists_the_columns(capsys, classification_recipe):
    edit_recipe(classification_recipe, task={"text_column": "sentense"})
    message = fails(capsys, ["check", str(classification_recipe)])
    assert "no column 'sentense' (task.text_column) (did you mean 'sentence'?)" in message
    assert "columns are: sentence, label" in message


def test_unknown_label_points_at_file_and_line(capsys, tmp_path, classification_recipe):
    rows = [("good film", "positive"), ("bad film", "negative"), ("so so", "neutral"), ("fine", "positive")]
    write_tsv(tmp_path / "train.tsv", rows)
    message = fails(capsys, ["check", str(classification_recipe)])
    assert f"{tmp_path / 'train.tsv'}:4: unknown label 'neutral'" in message
    assert "known labels: negative, positive" in message


def test_empty_data_file(capsys, tmp_path, classification_recipe):
    (tmp_path / "train.tsv").write_text("")
    message = fails(capsys, ["check", str(classification_recipe)])
    assert "train.tsv is empty" in message


def test_header_only_file_has_no_rows(capsys, tmp_path, classification_recipe):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\n")
    message = fails(capsys, ["check", str(classification_recipe)])
    assert "holds no rows" in message


def test_invalid_layer_index_lists_the_valid_ones(capsys, classification_recipe):
    edit_recipe(classification_recipe, freeze={"layers": [0, 7]})
    message = fails(capsys, ["check", str(classification_recipe)])
    assert "freeze.layers: layer 7 does not exist; the model has 2 layers: 0-1" in message


def test_freezing_too_many_bottom_layers(capsys, classification_recipe):
    edit_recipe(classification_recipe, freeze={"bottom_layers": 5})
    assert "more than the model's 2 layers" in fails(capsys, ["check", str(classification_recipe)])


def test_freeze_pattern_that_matches_nothing(capsys, classification_recipe):
    edit_recipe(classification_recipe, freeze={"patterns": ["encoder\\.layr"]})
    message = fails(capsys, ["check", str(classification_recipe)])
    assert (
        "freeze.patterns: 'encoder\\.layr' matches no parameter" in message and "names look like" in message
    )


def test_unknown_task_suggests_a_valid_one(capsys, classification_recipe):
    edit_recipe(classification_recipe, task={"type": "sequence_clasification"})
    message = fails(capsys, ["check", str(classification_recipe)])
    assert "unknown task type 'sequence_clasification' (did you mean 'sequence_classification'?)" in message


def test_bad_override_syntax(capsys, classification_recipe):
    message = fails(capsys, ["check", str(classification_recipe), "train.lr:3e-5"])
    assert "expected KEY=VALUE" in message


def test_override_of_unknown_key(capsys, classification_recipe):
    message = fails(capsys, ["check", str(classification_recipe), "trian.lr=1e-4"])
    assert "override 'trian.lr=1e-4': unknown key 'trian' in the recipe (did you mean 'train'?)" in message


def test_missing_recipe_file(capsys, tmp_path):
    assert "recipe file not found" in fails(capsys, ["check", str(tmp_path / "nope.yaml")])


def test_invalid_yaml_names_the_line(capsys, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ntrain:\n  lr: [1e-4\n  epochs: 2\n")
    message = fails(capsys, ["check", str(path)])
    assert "broken.yaml:" in message and "invalid YAML" in message


def test_duplicate_key(capsys, tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("name: x\ntrain:\n  lr: 1.0e-4\n  lr: 2.0e-4\n")
    assert "dup.yaml:4: key 'lr' appears twice in train (first on line 3)" in fails(
        capsys, ["check", str(path)]
    )


def test_missing_section(capsys, tmp_path):
    path = tmp_path / "nodata.yaml"
    path.write_text("name: x\nmodel: {name_or_path: org/model}\ntask: {type: causal_lm}\n")
    assert "missing required key 'data'" in fails(capsys, ["check", str(path)])


def test_extends_cycle_and_missing_base(capsys, tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nname: b\n")
    assert "extends forms a cycle" in fails(capsys, ["check", str(tmp_path / "a.yaml")])
    (tmp_path / "c.yaml").write_text("extends: missing.yaml\nname: c\n")
    assert "c.yaml:1: extends: base recipe 'missing.yaml' not found" in fails(
        capsys, ["check", str(tmp_path / "c.yaml")]
    )


def test_metric_the_task_does_not_produce(capsys, classification_recipe):
    message = fails(capsys, ["check", str(classification_recipe), "eval.metric=perplexity"])
    assert "does not produce 'perplexity'" in message and "accuracy, f1_macro, loss" in message


def test_fp16_on_cpu_is_refused(capsys, classification_recipe):
    message = fails(capsys, ["check", str(classification_recipe), "train.precision=fp16"])
    assert "fp16 (with loss scaling) needs a CUDA GPU" in message


def test_model_package_not_installed_and_no_hub_id(capsys, classification_recipe):
    edit_recipe(
        classification_recipe,
        model={"name_or_path": "package:no_such_model_pkg", "config": None, "tokenizer": None},
    )
    assert "none of 'package:no_such_model_pkg' is available locally" in fails(
        capsys, ["check", str(classification_recipe)]
    )


def test_existing_output_is_never_overwritten(capsys, tmp_path, classification_recipe):
    output = tmp_path / "precious"
    output.mkdir()
    (output / "notes.txt").write_text("keep me")
    message = fails(capsys, ["run", str(classification_recipe), "--output", str(output)])
    assert "already holds files; pass --resume" in message
    assert (output / "notes.txt").read_text() == "keep me" and sorted(p.name for p in output.iterdir()) == [
        "notes.txt"
    ]


def test_resume_without_a_run(capsys, tmp_path, classification_recipe):
    assert "holds no run to resume" in fails(
        capsys, ["run", str(classification_recipe), "--output", str(tmp_path / "new"), "--resume"]
    )


def test_eval_of_a_directory_that_is_not_a_run(capsys, tmp_path):
    (tmp_path / "data.tsv").write_text("sentence\tlabel\nx\t1\n")
    assert "not a run directory" in fails(
        capsys, ["eval", str(tmp_path), "--data", str(tmp_path / "data.tsv")]
    )


def test_unknown_cli_option_is_one_line(capsys, classification_recipe):
    message = fails(capsys, ["run", str(classification_recipe), "--outptu", "x"])
    assert "No such option" in message and "ftl run --help" in message


def test_a_real_process_prints_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "name": "x",
                "model": {"name_or_path": "a/b"},
                "task": {"type": "causal_lm"},
                "data": {"train": "t.txt"},
                "trian": {},
            }
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "launcher.cli", "check", str(bad)],
        capture_output=True,
        text=True,
        env=env_without_hub(),
        cwd=Path(__file__).parents[1],
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert "unknown key 'trian' in the recipe (did you mean 'train'?)" in result.stderr


@pytest.mark.parametrize("bad", ["-1", "0"])
def test_eval_batch_size_must_be_positive(capsys, tmp_path, bad):
    message = fails(capsys, ["eval", str(tmp_path), "--data", "x.tsv", "--batch-size", bad])
    assert "--batch-size" in message


def test_hub_fallback_failure_names_both_places(capsys, classification_recipe):
    edit_recipe(
        classification_recipe, data={"train": {"path": "missing.tsv", "hub": "nobody/no-such-dataset"}}
    )
    message = fails(capsys, ["check", str(classification_recipe)])
    assert "'missing.tsv' not found locally" in message
    assert "hub dataset 'nobody/no-such-dataset' could not be loaded" in message


def test_unreachable_hub_model_is_one_line(capsys, classification_recipe):
    edit_recipe(
        classification_recipe,
        model={"name_or_path": "nobody/no-such-model", "config": None, "tokenizer": None},
    )
    message = fails(capsys, ["check", str(classification_recipe)])
    assert "cannot load the tokenizer from nobody/no-such-model" in message and "offline?" in message


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_ray_address_fails_fast(capsys, classification_recipe):
    import time

    started = time.time()
    message = fails(
        capsys,
        [
            "run",
            str(classification_recipe),
            "--address",
            f"127.0.0.1:{_free_port()}",
            "--output",
            str(classification_recipe.parent / "out"),
        ],
    )
    assert "distributed.address: cannot reach the Ray cluster at 127.0.0.1:" in message
    assert time.time() - started < 60


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("distributed.workers=0", "distributed.workers: Input should be greater than or equal to 1"),
        ("distributed.offload_optimizer=cpu", "optimizer offload needs distributed.zero_stage 1, 2 or 3"),
        ("train.device=tpu", "train.device: 'tpu' is not allowed"),
        ("distributed.gpus_per_worker=1", "distributed.gpus_per_worker: this process sees no CUDA GPU"),
        (
            "distributed.deepspeed={zero_optimisation: {}}",
            "is not a DeepSpeed config key (did you mean 'zero_optimization'?)",
        ),
    ],
)
def test_bad_distributed_settings(capsys, classification_recipe, override, expected):
    extra = ["distributed.zero_stage=1"] if "deepspeed" in override else []
    message = fails(
        capsys,
        [
            "run",
            str(classification_recipe),
            override,
            *extra,
            "--output",
            str(classification_recipe.parent / "out"),
        ],
    )
    assert expected in message
