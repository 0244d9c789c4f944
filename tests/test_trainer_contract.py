"""What ftl's Trainer (launcher/train/trainer.py) relies on in HF's Trainer, checked against the installed
transformers: a new release that renames or reshapes one of these fails here, loudly, instead of silently
dropping atomic checkpoints, the layer schedule or longest-first evaluation.

pyproject.toml bounds transformers below its next major version for the same reason."""

from __future__ import annotations

import inspect

import pytest
from transformers import Seq2SeqTrainer, Trainer, trainer_utils

# method -> the parameters (after self) ftl's override passes on, in order
OVERRIDDEN = {
    "_save_checkpoint": ["model", "trial"],
    "_get_output_dir": ["trial"],
    "_get_eval_sampler": ["eval_dataset"],
    "evaluation_loop": [
        "dataloader",
        "description",
        "prediction_loss_only",
        "ignore_keys",
        "metric_key_prefix",
    ],
    "training_step": ["model", "inputs", "num_items_in_batch"],
    "create_optimizer": ["model"],
    "create_scheduler": ["num_training_steps", "optimizer"],
    "compute_loss": ["model", "inputs", "return_outputs", "num_items_in_batch"],
    "get_train_dataloader": [],
    "evaluate": ["eval_dataset", "ignore_keys", "metric_key_prefix"],
}


def _parameters(function) -> list[str]:
    return [p for p in inspect.signature(function).parameters if p != "self"]


@pytest.mark.parametrize("trainer", [Trainer, Seq2SeqTrainer])
@pytest.mark.parametrize("method", sorted(OVERRIDDEN))
def test_the_methods_ftl_overrides_keep_their_parameters(trainer, method):
    found = _parameters(getattr(trainer, method))
    assert found[: len(OVERRIDDEN[method])] == OVERRIDDEN[method]


def test_checkpoints_are_written_below_the_output_dir_that_ftl_redirects_to_its_staging_folder():
    source = inspect.getsource(Trainer._save_checkpoint)
    assert "self._get_output_dir(" in source and "PREFIX_CHECKPOINT_DIR" in source
    assert trainer_utils.PREFIX_CHECKPOINT_DIR == "checkpoint"


def test_checkpoint_rotation_takes_the_arguments_ftl_passes():
    parameters = _parameters(trainer_utils.rotate_checkpoints)
    assert parameters[:4] == ["output_dir", "save_total_limit", "best_model_checkpoint", "use_mtime"]


def test_the_loss_scaling_flags_ftl_sets_are_read_by_the_trainer():
    source = inspect.getsource(Trainer)
    assert "self.model_accepts_loss_kwargs" in source and "self.loss_is_scaled_for_ga" in source


def test_the_helpers_ftl_calls_exist_with_their_parameters():
    assert _parameters(Trainer.get_decay_parameter_names) == ["model"]
    assert _parameters(Trainer.get_optimizer_cls_and_kwargs)[:2] == ["args", "model"]
    assert set(_parameters(trainer_utils.EvalLoopOutput)) >= {
        "predictions",
        "label_ids",
        "metrics",
        "num_samples",
    }
