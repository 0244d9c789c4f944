"""`ftl eval`: score a finished run's model on another file with the run's own task settings.

A multitask run is scored one task at a time (`--task NAME`): the file is read as that task's data and goes
through that task's head; the metrics carry the task's name as in the run's metrics.json
(eval_<task>_<metric>)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ftl.launcher.data.multitask import MultiTaskCollator, TaskView
from ftl.launcher.data.prepare import prepare_eval_file
from ftl.launcher.data.sources import load_file
from ftl.launcher.errors import FtlError
from ftl.launcher.recipe.data import DataSource
from ftl.launcher.tasks.base import EVAL_FILE
from ftl.launcher.train.callbacks import replace_default_printers
from ftl.launcher.train.device import plan_device
from ftl.launcher.train.outcome import outcomes
from ftl.launcher.train.trainers import trainer_class
from ftl.launcher.use.trained import open_trained


def evaluate_run(
    run: Path, data_file: Path, *, batch_size: int | None = None, task_name: str | None = None
) -> dict[str, Any]:
    from transformers import Seq2SeqTrainingArguments, TrainingArguments

    trained = open_trained(run)  # the run's recipe, task state and tokenizer (a staged run: its last stage)
    recipe, tokenizer = trained.recipe, trained.tokenizer
    task, head = _scored_task(trained.task, task_name)
    train_source = recipe.data.train if head is None else recipe.task.tasks[head].data.train
    source = DataSource(path=str(data_file), text_sample_by=train_source.text_sample_by)
    raw = load_file(data_file, EVAL_FILE, source)
    model = trained.load_model()
    rows, dataset = prepare_eval_file(raw, task, tokenizer)
    if len(dataset) == 0:
        raise FtlError(f"--data: {data_file} gives no evaluation examples for task {task.config.type}")
    collator, scored, prefix = task.collator(tokenizer), dataset, "eval"
    if head is not None:  # the rows go through the named head (its index in the saved model)
        index = model.task_names.index(head)
        collator, scored, prefix = (
            MultiTaskCollator({index: collator}),
            TaskView(dataset, index),
            f"eval_{head}",
        )
    device = plan_device(recipe.train.model_copy(update={"precision": "fp32"}))
    with tempfile.TemporaryDirectory(prefix="ftl-eval-") as scratch:
        arguments = Seq2SeqTrainingArguments if task.generates_in_evaluation else TrainingArguments
        extra = {"predict_with_generate": True} if task.generates_in_evaluation else {}
        task.configure_model(model, tokenizer)
        args = arguments(
            **extra,
            output_dir=scratch,
            per_device_eval_batch_size=batch_size or recipe.eval.batch_size,
            use_cpu=device.use_cpu,
            report_to="none",
            disable_tqdm=True,
            remove_unused_columns=False,
        )
        trainer = trainer_class(task)(
            model=model,
            args=args,
            data_collator=collator,
            processing_class=tokenizer,
            compute_metrics=task.compute_metrics(dataset, tokenizer),
            preprocess_logits_for_metrics=task.preprocess_logits_for_metrics(),
        )
        replace_default_printers(trainer)  # stdout carries only the JSON result
        task.configure_evaluation(trainer, trained)
        metrics = trainer.evaluate(eval_dataset=scored, metric_key_prefix=prefix)
    result = outcomes(metrics)
    result["examples"] = len(rows)
    result["data"] = str(data_file)
    if head is not None:
        result["task"] = head
    return result


def _scored_task(task, name: str | None):
    """The task that scores the file and, for a multitask run, the name of its head (--task, checked by the
    run's task with the same messages as ftl predict)."""
    chosen = task.prediction_task(name)
    if chosen is task:
        return task, None
    return chosen.task, chosen.name
