"""The Trainer of a run, made in one place: arguments from the recipe, the task's collator and metrics, the
run's callbacks, the layer schedule and the NaN guard, all given when the Trainer is made."""

from __future__ import annotations

from typing import Any

from ftl.launcher.console import console, log
from ftl.launcher.data.prepare import PreparedData
from ftl.launcher.recipe.schema import Recipe
from ftl.launcher.tasks.base import Task
from ftl.launcher.train.callbacks import (
    ProgressCallback,
    TensorBoardLogger,
    TrainOnly,
    WorkerCountLog,
    replace_default_printers,
)
from ftl.launcher.train.guard import NonFiniteGuard
from ftl.launcher.train.layer_schedule import LayerSchedule
from ftl.launcher.train.losses import class_weights, flat_labels, weighted_cross_entropy
from ftl.launcher.train.rundir import RunDir
from ftl.launcher.train.trainers import trainer_class


def make_trainer(
    recipe: Recipe,
    args,
    task: Task,
    model,
    tokenizer,
    data: PreparedData,
    rundir: RunDir,
    *,
    schedule: LayerSchedule | None,
    guard: NonFiniteGuard,
    callbacks: list,
    train_only: bool = False,
):
    """The Trainer for a run with its `args` (training_arguments); `callbacks` (e.g. a search's reporter)
    come after the run's own."""
    from transformers import EarlyStoppingCallback

    task.configure_model(model, tokenizer)
    run_callbacks: list[Any] = [
        ProgressCallback(
            interactive=recipe.log.progress and console.is_terminal, shown=set(recipe.task.metrics)
        )
    ]
    if recipe.log.uses("tensorboard"):
        run_callbacks.append(TensorBoardLogger(str(rundir.tensorboard)))
    if recipe.train.early_stopping:
        stop = recipe.train.early_stopping
        run_callbacks.append(EarlyStoppingCallback(stop.patience, stop.min_delta))
    run_callbacks += [guard, WorkerCountLog(), *callbacks]
    if train_only:
        run_callbacks.append(TrainOnly())
    trainer = trainer_class(task)(
        compute_loss_func=_class_weighted_loss(recipe, task, data),
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.validation,
        data_collator=task.collator(tokenizer),
        processing_class=tokenizer,
        compute_metrics=task.compute_metrics(data.validation, tokenizer),
        preprocess_logits_for_metrics=task.preprocess_logits_for_metrics(),
        callbacks=run_callbacks,
        layer_schedule=schedule,
        nonfinite_guard=guard,
    )
    replace_default_printers(trainer)
    if not task.loss_counts_items:
        _mean_loss_per_micro_batch(trainer)
    task.configure_trainer(trainer, data)
    return trainer


def _class_weighted_loss(recipe: Recipe, task: Task, data: PreparedData):
    """task.class_weights as a weighted cross entropy (None: the model's own loss)."""
    given = getattr(recipe.task, "class_weights", None)
    if given is None:
        return None
    weights = class_weights(given, flat_labels(data.train["labels"]), task.label_names() or [])
    names = task.label_names()
    log(f"class weights: {', '.join(f'{n} {w:.3g}' for n, w in zip(names, weights, strict=True))}")
    return weighted_cross_entropy(weights)


def _mean_loss_per_micro_batch(trainer) -> None:
    """Tell HF that this task's loss is a mean over its micro-batch, so gradient accumulation divides it by the
    accumulation steps. HF infers the opposite from any model whose forward takes **kwargs (BERT, T5, ftl's
    multitask model), or whenever a custom loss (class weights) is set, and would then add up the micro-batches'
    means: loss and gradients x grad_accum_steps (tested in test_run_e2e). Only the causal-LM loss really divides
    by num_items_in_batch."""
    trainer.model_accepts_loss_kwargs = False
    trainer.loss_is_scaled_for_ga = False
