"""`ftl eval`: score a finished run's model on another file with the run's own task settings."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from launcher.data.prepare import prepare_eval_file
from launcher.data.sources import load_file
from launcher.errors import FtlError
from launcher.recipe.data import DataSource
from launcher.train.callbacks import replace_default_printers
from launcher.train.device import plan_device
from launcher.train.outcome import outcomes
from launcher.use.trained import open_trained


def evaluate_run(run: Path, data_file: Path, *, batch_size: int | None = None) -> dict[str, Any]:
    from transformers import Seq2SeqTrainingArguments, TrainingArguments

    trained = open_trained(run)  # the run's recipe, task state and tokenizer (a staged run: its last stage)
    recipe, task, tokenizer = trained.recipe, trained.task, trained.tokenizer
    train_source = recipe.data.train
    source = DataSource(path=str(data_file), text_sample_by=train_source.text_sample_by)
    raw = load_file(data_file, "--data", source)
    model = trained.load_model()
    rows, dataset = prepare_eval_file(raw, task, tokenizer)
    if len(dataset) == 0:
        raise FtlError(f"--data: {data_file} gives no evaluation examples for task {recipe.task.type}")
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
        trainer = task.trainer_class()(
            model=model,
            args=args,
            data_collator=task.collator(tokenizer),
            processing_class=tokenizer,
            compute_metrics=task.compute_metrics(dataset, tokenizer),
            preprocess_logits_for_metrics=task.preprocess_logits_for_metrics(),
        )
        replace_default_printers(trainer)  # stdout carries only the JSON result
        metrics = trainer.evaluate(eval_dataset=dataset)
    result = outcomes(metrics)
    result["examples"] = len(rows)
    result["data"] = str(data_file)
    return result
