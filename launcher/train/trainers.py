"""The Trainer class each task's training loop needs: the train layer chooses it from `Task.trainer_kind`, so
tasks never import training code."""

from __future__ import annotations

from ftl.launcher.train.masked_positions import MaskedLMTrainer
from ftl.launcher.train.multitask import MultiTaskTrainer
from ftl.launcher.train.preference_trainer import PreferenceTrainer
from ftl.launcher.train.trainer import FtlSeq2SeqTrainer, FtlTrainer

TRAINERS: dict[str, type] = {
    "plain": FtlTrainer,
    "seq2seq": FtlSeq2SeqTrainer,  # evaluation generates text
    "masked_lm": MaskedLMTrainer,  # decodes only the masked positions in training
    "multitask": MultiTaskTrainer,  # batches of one task at a time, every task evaluated
    "preference": PreferenceTrainer,  # chosen/rejected pairs, a loss against a reference model
}


def trainer_class(task) -> type:
    """The Trainer for a task (its `trainer_kind`)."""
    return TRAINERS[task.trainer_kind]
