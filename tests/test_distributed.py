"""Ray Train workers on gloo with DeepSpeed ZeRO 0-3: the same math as one worker, checkpoints, retries."""

from __future__ import annotations

import json

import pytest

from launcher.cli import main
from tests.conftest import edit_recipe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _ray_shutdown_after_module():
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def no_dropout_recipe(classification_recipe):
    """Dropout draws per-worker random numbers; without it 1 and 2 workers compute the same thing."""
    edit_recipe(
        classification_recipe,
        model={
            "config": {
                "model_type": "bert",
                "hidden_size": 32,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "intermediate_size": 64,
                "max_position_embeddings": 128,
                "hidden_dropout_prob": 0.0,
                "attention_probs_dropout_prob": 0.0,
            }
        },
        train={
            "max_steps": 5,
            "log_every_steps": 1,
            "lr": 1e-3,
            "warmup_ratio": 0.0,
            "group_by_length": False,
        },
        eval={"every_steps": 5},
    )
    return classification_recipe


def _losses(run) -> list[float]:
    history = json.loads((run / "log_history.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry][:5]


def test_two_workers_equal_one_worker_for_every_zero_stage(tmp_path, no_dropout_recipe):
    single = tmp_path / "single"
    assert (
        main(
            [
                "run",
                str(no_dropout_recipe),
                "distributed.zero_stage=0",
                "train.batch_size=8",
                "--output",
                str(single),
            ]
        )
        == 0
    )
    reference = _losses(single)
    assert len(reference) == 5
    for stage in (0, 1, 2, 3):
        out = tmp_path / f"zero{stage}"
        assert (
            main(
                [
                    "run",
                    str(no_dropout_recipe),
                    f"distributed.zero_stage={stage}",
                    "distributed.workers=2",
                    "train.batch_size=4",
                    "--output",
                    str(out),
                ]
            )
            == 0
        )
        losses = _losses(out)
        assert losses == pytest.approx(reference, rel=1e-3), f"ZeRO-{stage}: {losses} vs {reference}"
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["workers"] == 2 and manifest["deepspeed"]["zero_optimization"]["stage"] == stage
        assert (out / "model" / "model.safetensors").exists()
