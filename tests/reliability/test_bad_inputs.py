"""User mistakes that need more than a row of the corpus (test_bad_input_corpus.py): models that are not there,
unreachable hubs and clusters, distributed settings; each one line on stderr with exit code 2."""

from __future__ import annotations

import pytest

from tests.conftest import edit_recipe, fails


def test_freezing_too_many_bottom_layers(capsys, classification_recipe):
    edit_recipe(classification_recipe, freeze={"bottom_layers": 5})
    assert "more than the model's 2 layers" in fails(capsys, ["check", str(classification_recipe)])


def test_model_package_not_installed_and_no_hub_id(capsys, classification_recipe):
    edit_recipe(
        classification_recipe,
        model={"name_or_path": "package:no_such_model_pkg", "config": None, "tokenizer": None},
    )
    assert "none of 'package:no_such_model_pkg' is available locally" in fails(
        capsys, ["check", str(classification_recipe)]
    )


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
