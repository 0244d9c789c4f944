"""The Run: a validated recipe becomes data, a model, a training loop and a self-describing run directory.

Read top to bottom: plan the device -> tokenizer -> data -> model and freezing -> train (or resume)
-> final evaluation -> model, predictions, metrics and manifest.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from launcher.console import console, log
from launcher.data.prepare import PreparedData, prepare_data
from launcher.errors import FtlError
from launcher.model.freeze import apply_freezing, block_counts
from launcher.model.load import load_model, load_tokenizer, quiet_transformers, save_pretrained
from launcher.model.locate import locate_model
from launcher.recipe.loader import LoadedRecipe
from launcher.report import freeze_table, human
from launcher.tasks.registry import task_for
from launcher.train.arguments import training_arguments
from launcher.train.callbacks import ProgressCallback, TensorBoardLogger, replace_default_printers
from launcher.train.device import plan_device
from launcher.train.outcome import outcomes
from launcher.train.rundir import TASK_STATE_FILE, RunDir, atomic_write, manifest


def run_recipe(loaded: LoadedRecipe, output: Path, *, resume: bool = False) -> dict[str, Any]:
    """Train a recipe into `output`; returns the final metrics (also in <output>/metrics.json)."""
    started = time.perf_counter()
    recipe = loaded.recipe
    rundir = RunDir.open_for_run(output, resume=resume)
    if resume:
        _check_same_recipe(rundir, loaded)
    device = plan_device(recipe.train)
    quiet_transformers(recipe.log.level)

    from transformers import set_seed

    set_seed(recipe.seed)
    task = task_for(recipe.task)
    location = locate_model(recipe.model, loaded.search_dirs)
    log(
        f"[bold]{recipe.name}[/]: {recipe.task.type} on {device.name}, {device.precision}; model {location} {location.note}"
    )
    tokenizer = load_tokenizer(loaded, location)
    data = prepare_data(loaded, task, tokenizer, log=log)
    _log_data(data)

    loaded_model = load_model(loaded, task, tokenizer)
    model = loaded_model.model
    apply_freezing(model, recipe.freeze, loaded_model.head_names)
    console.print(freeze_table(block_counts(model, loaded_model.head_names), title=f"{type(model).__name__}"))

    if not resume:
        rundir.write_recipe(recipe)
    trainer = _build_trainer(loaded, task, model, tokenizer, data, rundir, device)

    before = rundir.read_json("metrics_before.json")
    if recipe.eval.before_training and not before:
        log("evaluating the model before fine-tuning")
        before = trainer.evaluate()
        rundir.write_json("metrics_before.json", before)

    checkpoint = _resume_point(rundir) if resume else None
    try:
        train_output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except KeyboardInterrupt:
        last = rundir.last_checkpoint()
        where = f"the last checkpoint is {last.name}" if last else "no checkpoint was written yet"
        raise FtlError(f"interrupted; {where}: continue with the same command plus --resume") from None

    final = trainer.evaluate()
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardLogger):
            callback.close()
    save_pretrained(trainer.model, tokenizer, rundir.model)
    (rundir.model / TASK_STATE_FILE).write_text(
        json.dumps({"task": recipe.task.type, **task.state()}, indent=1)
    )
    _write_jsonl(rundir.root / "validation.jsonl", task.export_rows(data.validation_rows))
    predictions = None
    if recipe.eval.save_predictions:
        predictions = task.write_predictions(trainer, data.validation, data.validation_rows, rundir.root)

    metrics = outcomes(final)
    metrics["train_steps"] = train_output.global_step
    if before:
        metrics["before"] = outcomes(before)
        _add_changes(metrics, recipe.task.main_metric)
    rundir.write_json("metrics.json", metrics)
    rundir.write_json(
        "manifest.json",
        manifest(
            recipe,
            data_fingerprint=data.fingerprint,
            sources=data.sources,
            device=f"{device.name} {device.precision}",
            extra={
                "model_location": str(location),
                "resumed_from": checkpoint.name if checkpoint else None,
                "data_stats": data.stats,
                "data_prep_seconds": round(data.seconds, 3),
                "data_from_cache": data.from_cache,
                "wall_seconds": round(time.perf_counter() - started, 1),
                # this process's share of training (after a resume: the steps since the checkpoint)
                "session": {
                    k: v for k, v in train_output.metrics.items() if k in ("train_loss", "train_runtime")
                },
                "predictions": predictions.name if predictions else None,
            },
        ),
    )
    _log_summary(metrics, rundir, predictions)
    return metrics


def _build_trainer(loaded, task, model, tokenizer, data: PreparedData, rundir: RunDir, device):
    from transformers import EarlyStoppingCallback, Trainer

    recipe = loaded.recipe
    args = training_arguments(recipe, rundir.checkpoints, device)
    callbacks: list[Any] = [ProgressCallback(interactive=recipe.log.progress and console.is_terminal)]
    if recipe.log.tensorboard:
        callbacks.append(TensorBoardLogger(str(rundir.tensorboard)))
    if recipe.train.early_stopping:
        stop = recipe.train.early_stopping
        callbacks.append(EarlyStoppingCallback(stop.patience, stop.min_delta))
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.validation,
        data_collator=task.collator(tokenizer),
        processing_class=tokenizer,
        compute_metrics=task.compute_metrics(),
        preprocess_logits_for_metrics=task.preprocess_logits_for_metrics(),
        callbacks=callbacks,
    )
    replace_default_printers(trainer)
    return trainer


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """The exact validation rows of this run (carved or given), for `ftl eval RUN --data RUN/validation.jsonl`."""
    atomic_write(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def _resume_point(rundir: RunDir) -> Path | None:
    """The newest complete checkpoint; half-written newer ones (a kill during saving) are removed."""
    last = rundir.last_checkpoint()
    newest = int(last.name.split("-")[1]) if last else -1
    for partial in rundir.checkpoints.glob("checkpoint-*") if rundir.checkpoints.exists() else []:
        step = partial.name.split("-")[-1]
        if step.isdigit() and int(step) > newest:
            log(f"[yellow]removing incomplete {partial.name} (interrupted while saving)[/]")
            shutil.rmtree(partial, ignore_errors=True)
    if last is None:
        log("[yellow]no complete checkpoint yet: starting from the beginning[/]")
    else:
        log(f"resuming from {last}")
    return last


def _check_same_recipe(rundir: RunDir, loaded: LoadedRecipe) -> None:
    """Exact resume needs the recipe the run started with (logging settings may differ)."""
    stored = rundir.read_recipe().model_dump(mode="json", exclude={"extends", "log"})
    current = loaded.recipe.model_dump(mode="json", exclude={"extends", "log"})
    differing = sorted(_diff(stored, current))
    if differing:
        shown = ", ".join(differing[:4]) + (" ..." if len(differing) > 4 else "")
        raise FtlError(
            f"--resume: the recipe differs from {rundir.recipe_file} at {shown}; resume with the same recipe and "
            "overrides, or start a new --output"
        )


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        found: list[str] = []
        for key in sorted(set(a) | set(b)):
            found.extend(_diff(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key))
        return found
    return [] if a == b else [prefix]


def _add_changes(metrics: dict[str, Any], main: str) -> None:
    key = f"eval_{main}"
    before = metrics["before"].get(key)
    after = metrics.get(key)
    if isinstance(before, (int, float)) and isinstance(after, (int, float)) and before:
        metrics[f"{main}_relative_change"] = (after - before) / before


def _log_data(data: PreparedData) -> None:
    stats = data.stats
    train, val = stats.get("train", {}), stats.get("validation", {})
    origin = "cache" if data.from_cache else "prepared"
    log(
        f"data: train {train.get('rows', 0):,} rows / {human(train.get('tokens', 0))} tokens, validation "
        f"{val.get('rows', 0):,} rows ({data.sources['validation']}); {origin} in {data.seconds:.2f}s"
    )


def _log_summary(metrics: dict[str, Any], rundir: RunDir, predictions: Path | None) -> None:
    shown = "  ".join(
        f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith("eval_") and isinstance(v, float)
    )
    console.print(f"[bold green]done[/]: {shown}")
    if "before" in metrics:
        before = "  ".join(
            f"{k} {v:.4f}"
            for k, v in metrics["before"].items()
            if k.startswith("eval_") and isinstance(v, float)
        )
        console.print(f"before fine-tuning: {before}")
    console.print(
        f"run directory: {rundir.root}" + (f"  (predictions: {predictions.name})" if predictions else "")
    )
