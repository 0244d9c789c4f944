"""The Run: a validated recipe becomes data, a model, a training loop and a self-describing run directory.

Read top to bottom: plan the device -> tokenizer -> data -> model and freezing -> train (or resume)
-> final evaluation -> model, predictions, metrics and manifest.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ftl.launcher.console import console, log
from ftl.launcher.data.prepare import PreparedData
from ftl.launcher.errors import FtlError
from ftl.launcher.model.adapters import write_base_record
from ftl.launcher.model.freeze import apply_freezing, block_counts
from ftl.launcher.model.load import load_tokenizer, quiet_transformers, remote_code_warning
from ftl.launcher.model.locate import locate_model
from ftl.launcher.recipe.loader import LoadedRecipe
from ftl.launcher.report import freeze_table, human, schedule_table
from ftl.launcher.tasks.registry import task_for
from ftl.launcher.train.arguments import training_arguments
from ftl.launcher.train.callbacks import (
    ProgressCallback,
    TensorBoardLogger,
    TrainOnly,
    replace_default_printers,
)
from ftl.launcher.train.device import plan_device
from ftl.launcher.train.guard import NonFiniteGuard
from ftl.launcher.train.layer_schedule import layer_schedule, never_unfrozen
from ftl.launcher.train.losses import class_weights, flat_labels, weighted_cross_entropy
from ftl.launcher.train.outcome import outcomes
from ftl.launcher.train.resume import check_same_recipe, resume_point
from ftl.launcher.train.rundir import TASK_STATE_FILE, RunDir, honour_umask, is_main_process, manifest


def run_recipe(
    loaded: LoadedRecipe,
    output: Path,
    *,
    resume: bool = False,
    train_only: bool = False,
    callbacks: list | None = None,
) -> dict[str, Any]:
    """Train a recipe into `output`: in this process, or on Ray Train workers when the recipe scales out.

    `callbacks` are Trainer callbacks added in every process (picklable: Ray ships them to its workers);
    `train_only` trains without evaluations, checkpoints or a final model (see `execute`)."""
    created = next((p for p in reversed([output, *output.parents]) if not p.exists()), None)
    rundir = RunDir.open_for_run(output, resume=resume)
    try:
        return _run(loaded, rundir, resume=resume, train_only=train_only, callbacks=callbacks)
    except FtlError:
        if created is not None and not rundir.training_started:  # a mistake found before training
            rundir.remove_if_unused(up_to=created)
        raise


def _run(
    loaded: LoadedRecipe, rundir: RunDir, *, resume: bool, train_only: bool, callbacks
) -> dict[str, Any]:
    if loaded.stages:
        from ftl.launcher.train.stages import run_stages

        if not resume:
            rundir.write_recipe(loaded.recipe)
        return run_stages(loaded, rundir, resume=resume)
    if resume and rundir.last_checkpoint() is not None:
        check_same_recipe(rundir, loaded)
    else:  # a new run, or one that never reached a checkpoint: its recipe may still change
        rundir.write_recipe(loaded.recipe)
    if needs_workers(loaded.recipe):
        from ftl.launcher.distributed.ray_launch import launch

        return launch(loaded, rundir, resume=resume, train_only=train_only, trainer_callbacks=callbacks)
    return execute(loaded, rundir, announce_resume=resume, callbacks=callbacks, train_only=train_only)


def needs_workers(recipe) -> bool:
    """DeepSpeed, several workers or a cluster address run through Ray Train (even a single worker)."""
    return recipe.distributed.needs_workers


def execute(
    loaded: LoadedRecipe,
    rundir: RunDir,
    *,
    announce_resume: bool = False,
    callbacks: list | None = None,
    train_only: bool = False,
) -> dict[str, Any]:
    """The story of a run, the same in one process and in every Ray Train worker (rank 0 writes the files).

    train_only (`ftl bench`): the same data, model and Trainer, but the schedule's evaluations and checkpoints
    are cancelled, and the run ends after training with its training numbers in metrics.json: no evaluation,
    no final model, no predictions."""
    started = time.perf_counter()
    recipe = loaded.recipe
    device = plan_device(recipe.train, recipe.distributed)
    quiet_transformers(recipe.log.level)

    from transformers import set_seed

    set_seed(recipe.seed)
    main = is_main_process()
    say = log if main else _silent
    task = task_for(recipe.task)
    location = locate_model(recipe.model, loaded.search_dirs)
    say(
        f"[bold]{recipe.name}[/]: {recipe.task.type} on {device.name}, {device.precision}; model {location} {location.note}"
    )
    warning = remote_code_warning(loaded)
    if warning:  # before any of the model's code runs
        say(warning)
    tokenizer = load_tokenizer(loaded, location)
    data = task.prepare(loaded, tokenizer, say)
    say(data_summary(data))

    loaded_model = task.build_model(loaded, tokenizer, rundir.root / "base_model")
    model = loaded_model.model
    if recipe.lora is None:  # with LoRA, peft has already frozen everything but the adapters
        apply_freezing(model, recipe.freeze, loaded_model.head_names)
    if main:
        console.print(
            freeze_table(block_counts(model, loaded_model.head_names), title=f"{type(model).__name__}")
        )
    schedule = layer_schedule(model, recipe)
    if schedule is not None and main:
        console.print(schedule_table(schedule, set(schedule.depth_of.values())))
        for warning in never_unfrozen(schedule, recipe, set(schedule.depth_of.values())):
            log(f"[bold yellow]warning[/]: {warning} (freeze.gradual)")
    trainer = _build_trainer(loaded, task, model, tokenizer, data, rundir, device)
    trainer.layer_schedule = schedule
    guard = trainer.nonfinite_guard = NonFiniteGuard(recipe.train.nan_policy, recipe.train.max_bad_steps)
    trainer.add_callback(guard)
    for callback in callbacks or []:
        trainer.add_callback(callback)
    if train_only:
        trainer.add_callback(TrainOnly())
        return _train_only(trainer, rundir, main)

    before = rundir.read_json("metrics_before.json")
    if recipe.eval.before_training and not before:
        say("evaluating the model before fine-tuning")
        before = trainer.evaluate()
        if main:
            rundir.write_json("metrics_before.json", before)

    checkpoint = resume_point(rundir, announce=announce_resume and main)
    rundir.training_started = True
    try:
        train_output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except KeyboardInterrupt:
        last = rundir.last_checkpoint()
        where = f"the last checkpoint is {last.name}" if last else "no checkpoint was written yet"
        raise FtlError(f"interrupted; {where}: continue with the same command plus --resume") from None
    if guard.stopped:
        last = rundir.last_checkpoint()
        kept = f"the last good checkpoint is {last.name}" if last else "no checkpoint was written before it"
        raise FtlError(
            f"{guard.stopped}; {kept} (continue with --resume once the cause is fixed, e.g. a lower train.lr or "
            "cleaned data; or set train.nan_policy: skip)"
        )

    final = _evaluation_of_final_weights(trainer) or trainer.evaluate()
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardLogger):
            callback.close()
    trainer.save_model(str(rundir.model))  # collective under DeepSpeed (ZeRO-3 gathers); rank 0 writes
    predictions = None
    if recipe.eval.save_predictions:
        predictions = task.write_predictions(trainer, data.validation, data.validation_rows, rundir.root)
    metrics = outcomes(final)
    if predictions is not None:
        metrics.update({f"eval_{name}": value for name, value in predictions.metrics.items()})
    metrics["train_steps"] = train_output.global_step
    if guard.skipped:
        metrics["skipped_steps"] = guard.skipped
    if before:
        metrics["before"] = outcomes(before)
        _add_changes(metrics, recipe.task.main_metric)
    if not main:
        return metrics
    tokenizer.save_pretrained(str(rundir.model))
    if recipe.lora is not None:
        write_base_record(rundir.model, model, loaded_model.location, loaded_model.base_weights)
    (rundir.model / TASK_STATE_FILE).write_text(
        json.dumps({"task": recipe.task.type, **task.state()}, indent=1)
    )
    task.write_validation_rows(rundir.root, data.validation_rows)
    honour_umask(rundir.model)
    rundir.write_json("log_history.json", {"log_history": trainer.state.log_history})
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
                "workers": trainer.args.world_size,
                "deepspeed": trainer.args.deepspeed if isinstance(trainer.args.deepspeed, dict) else None,
                "resumed_from": checkpoint.name if checkpoint else None,
                "data_stats": data.stats,
                "data_prep_seconds": round(data.seconds, 3),
                "data_from_cache": data.from_cache,
                "wall_seconds": round(time.perf_counter() - started, 1),
                # this process's share of training (after a resume: the steps since the checkpoint)
                "session": {
                    k: v for k, v in train_output.metrics.items() if k in ("train_loss", "train_runtime")
                },
                "predictions": predictions.path.name if predictions else None,
            },
        ),
    )
    _log_summary(metrics, rundir, predictions)
    return metrics


def _evaluation_of_final_weights(trainer) -> dict[str, Any] | None:
    """The logged evaluation of exactly the weights the run ends with, when training made one: at the last step,
    or (eval.select_best) at the step of the best checkpoint, which HF has just reloaded. Evaluating again would
    repeat the same numbers at the cost of a pass over the validation set; None when there is no such entry."""
    state = trainer.state
    step = state.global_step
    if trainer.args.load_best_model_at_end and state.best_model_checkpoint:
        step = int(Path(state.best_model_checkpoint).name.rsplit("-", 1)[-1])
    for entry in reversed(state.log_history):
        if entry.get("step") == step and "eval_loss" in entry:
            return {k: v for k, v in entry.items() if k != "step"}
    return None


def _silent(message: str) -> None:
    return None


def _train_only(trainer, rundir: RunDir, main: bool) -> dict[str, Any]:
    output = trainer.train()
    metrics = {"train_steps": output.global_step, **outcomes(output.metrics)}
    metrics.update({k: v for k, v in output.metrics.items() if k == "train_runtime"})
    if main:
        rundir.write_json("metrics.json", metrics)
    return metrics


def _build_trainer(loaded, task, model, tokenizer, data: PreparedData, rundir: RunDir, device):
    from transformers import EarlyStoppingCallback

    recipe = loaded.recipe
    args = training_arguments(
        recipe,
        rundir.checkpoints,
        device,
        loss_counts_items=task.loss_counts_items,
        generate=task.generates_in_evaluation,
    )
    task.configure_model(model, tokenizer)
    callbacks: list[Any] = [
        ProgressCallback(
            interactive=recipe.log.progress and console.is_terminal, shown=set(recipe.task.metrics)
        )
    ]
    if recipe.log.tensorboard:
        callbacks.append(TensorBoardLogger(str(rundir.tensorboard)))
    if recipe.train.early_stopping:
        stop = recipe.train.early_stopping
        callbacks.append(EarlyStoppingCallback(stop.patience, stop.min_delta))
    loss = None
    weights = (
        class_weights(
            getattr(recipe.task, "class_weights", None),
            flat_labels(data.train["labels"]),
            task.label_names() or [],
        )
        if getattr(recipe.task, "class_weights", None) is not None
        else None
    )
    if weights is not None:
        loss = weighted_cross_entropy(weights)
        log(
            f"class weights: {', '.join(f'{n} {w:.3g}' for n, w in zip(task.label_names(), weights, strict=True))}"
        )
    trainer = task.trainer_class()(
        compute_loss_func=loss,
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.validation,
        data_collator=task.collator(tokenizer),
        processing_class=tokenizer,
        compute_metrics=task.compute_metrics(data.validation, tokenizer),
        preprocess_logits_for_metrics=task.preprocess_logits_for_metrics(),
        callbacks=callbacks,
    )
    replace_default_printers(trainer)
    if not task.loss_counts_items:
        _mean_loss_per_micro_batch(trainer)
    task.configure_trainer(trainer, data)
    return trainer


def _mean_loss_per_micro_batch(trainer) -> None:
    """Tell HF that this task's loss is a mean over its micro-batch, so gradient accumulation divides it by the
    accumulation steps. HF infers the opposite from any model whose forward takes **kwargs (BERT, T5, ftl's
    multitask model), or whenever a custom loss (class weights) is set, and would then add up the micro-batches'
    means: loss and gradients x grad_accum_steps (tested in test_run_e2e). Only the causal-LM loss really divides
    by num_items_in_batch."""
    trainer.model_accepts_loss_kwargs = False
    trainer.loss_is_scaled_for_ga = False


def _add_changes(metrics: dict[str, Any], main: str) -> None:
    key = f"eval_{main}"
    before = metrics["before"].get(key)
    after = metrics.get(key)
    if isinstance(before, (int, float)) and isinstance(after, (int, float)) and before:
        metrics[f"{main}_relative_change"] = (after - before) / before


def data_summary(data: PreparedData) -> str:
    stats = data.stats
    train, val = stats.get("train", {}), stats.get("validation", {})
    origin = "cache" if data.from_cache else "prepared"
    return (
        f"data: train {train.get('rows', 0):,} rows / {human(train.get('tokens', 0))} tokens, validation "
        f"{val.get('rows', 0):,} rows ({data.sources['validation']}); {origin} in {data.seconds:.2f}s"
    )


def _log_summary(metrics: dict[str, Any], rundir: RunDir, predictions) -> None:
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
        f"run directory: {rundir.root}" + (f"  (predictions: {predictions.path.name})" if predictions else "")
    )
