"""The story of one run in one process: build -> train -> finish. The same in a single-process run and in
every Ray Train worker (rank 0 writes the run directory).

build:  device -> tokenizer -> data -> model (freezing or adapters) -> Trainer (schedule, NaN guard, callbacks)
train:  (an evaluation before training) -> train or resume -> stop on non-finite losses
finish: the evaluation of the final weights -> model, predictions, metrics and manifest in the run directory
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftl.launcher.console import console, log
from ftl.launcher.data.prepare import PreparedData
from ftl.launcher.errors import FtlError
from ftl.launcher.files import is_main_process
from ftl.launcher.model.freeze import apply_freezing, block_counts, parameter_count
from ftl.launcher.model.integrity import check_fits
from ftl.launcher.model.load import (
    LoadedModel,
    ModelSpec,
    load_tokenizer,
    quiet_transformers,
    remote_code_warning,
)
from ftl.launcher.model.locate import ModelLocation, locate_model
from ftl.launcher.recipe.loader import LoadedRecipe
from ftl.launcher.tasks.base import Task
from ftl.launcher.tasks.registry import task_for
from ftl.launcher.train.arguments import training_arguments
from ftl.launcher.train.callbacks import WorkerCountLog
from ftl.launcher.train.deepspeed_config import join_deepspeed
from ftl.launcher.train.device import DevicePlan, plan_device
from ftl.launcher.train.guard import NonFiniteGuard
from ftl.launcher.train.layer_schedule import layer_schedule, never_unfrozen
from ftl.launcher.train.outcome import outcomes
from ftl.launcher.train.resume import check_same_data, resume_point
from ftl.launcher.train.rundir import RunDir, manifest
from ftl.launcher.train.tables import freeze_table, human, schedule_table
from ftl.launcher.train.tracking import run_tracking
from ftl.launcher.train.trainer_setup import make_trainer


@dataclass
class Built:
    """Everything a run trains with, made by `build`."""

    loaded: LoadedRecipe
    device: DevicePlan
    task: Task
    location: ModelLocation  # where the recipe's model was found
    tokenizer: Any
    data: PreparedData
    model: LoadedModel
    trainer: Any
    guard: NonFiniteGuard
    say: Any  # log on rank 0, silence elsewhere
    loading: dict[str, Any]  # what this process held right after the model was loaded (after_loading)
    placement: list[dict[str, Any]]  # each rank's node and host
    started: float = field(default_factory=time.perf_counter)


def execute(
    loaded: LoadedRecipe,
    rundir: RunDir,
    *,
    announce_resume: bool = False,
    callbacks: list | None = None,
    train_only: bool = False,
) -> dict[str, Any]:
    """Run a recipe in this process into `rundir`; its final metrics.

    `callbacks` are Trainer callbacks added to the run's own. train_only (`ftl bench`): the same data, model
    and Trainer, but the schedule's evaluations and checkpoints are cancelled, and the run ends after training
    with its training numbers in metrics.json: no evaluation, no final model, no predictions."""
    with run_tracking(loaded, rundir) as tracking:  # log.trackers (rank 0): a tracker never stops the run
        built = build(
            loaded, rundir, callbacks=[*(callbacks or []), *tracking.callbacks], train_only=train_only
        )
        if train_only:
            return tracking.done(train_without_evaluating(built, rundir))
        before = evaluate_before_training(built, rundir)
        checkpoint, train_output = train(built, rundir, announce_resume=announce_resume)
        return tracking.done(finish(built, rundir, train_output, before=before, resumed_from=checkpoint))


# ---- build ------------------------------------------------------------------------------------------
def build(loaded: LoadedRecipe, rundir: RunDir, *, callbacks: list, train_only: bool) -> Built:
    from transformers import set_seed

    recipe = loaded.recipe
    started = time.perf_counter()
    device = plan_device(recipe.train, recipe.distributed)
    quiet_transformers(recipe.log.level)
    set_seed(recipe.seed)
    say = log if is_main_process() else _silent
    where = placement()
    if len(where) > 1:
        nodes = sorted({rank["node"] for rank in where})
        say(
            f"{len(where)} workers on {len(nodes)} node(s): "
            + ", ".join(f"rank {r['rank']} on {(r['node'] or r['host'])[:12]}" for r in where)
        )
    task = task_for(recipe.task)
    location = locate_model(recipe.model, loaded.search_dirs)
    say(
        f"[bold]{recipe.name}[/]: {recipe.task.type} on {device.name}, {device.precision}; model {location} {location.note}"
    )
    warning = remote_code_warning(recipe.model)
    if warning:  # before any of the model's code runs
        say(warning)
    tokenizer = load_tokenizer(recipe.model, loaded.search_dirs, location)
    data = task.prepare(recipe.data, tokenizer, dirs=loaded.search_dirs, log=say)
    say(data_summary(data))
    # The Trainer's arguments exist before the model: under ZeRO-3 they make transformers build and load the
    # model inside deepspeed.zero.Init, so each rank only ever holds its partition of the weights.
    args = training_arguments(
        recipe,
        rundir.checkpoints,
        device,
        loss_counts_items=task.loss_counts_items,
        generate=task.generates_in_evaluation,
    )
    if recipe.distributed.uses_deepspeed:
        join_deepspeed(device.device)  # zero.Init reads the world size from deepspeed.comm
    model = build_model(loaded, task, tokenizer, rundir)
    check_fits(model.model, tokenizer, recipe.model, recipe.task)  # before the first step fails on it
    loading = after_loading(model.model)
    schedule = layer_schedule(model.model, recipe)
    if schedule is not None and is_main_process():
        console.print(schedule_table(schedule, set(schedule.depth_of.values())))
        for problem in never_unfrozen(schedule, recipe, set(schedule.depth_of.values())):
            log(f"[bold yellow]warning[/]: {problem} (freeze.gradual)")
    guard = NonFiniteGuard(recipe.train.nan_policy, recipe.train.max_bad_steps)
    trainer = make_trainer(
        recipe,
        args,
        task,
        model.model,
        tokenizer,
        data,
        rundir,
        schedule=schedule,
        guard=guard,
        callbacks=callbacks,
        train_only=train_only,
    )
    return Built(
        loaded, device, task, location, tokenizer, data, model, trainer, guard, say, loading, where, started
    )


def placement() -> list[dict[str, Any]]:
    """Where every rank runs: its Ray node (FTL_NODE_ID, set by the Ray Train worker), host and pid."""
    import torch.distributed as dist

    me = {
        "rank": int(os.environ.get("RANK", "0")),
        "node": os.environ.get("FTL_NODE_ID"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [me]
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, me)
    return everyone


def weights_held(model) -> dict[str, int]:
    """The model's parameters, the elements its weight tensors store (fewer than the parameters for packed
    4-bit weights) and how many of those this process holds (a partition under ZeRO-3)."""
    parameters = storage = held = 0
    for parameter in model.parameters():
        parameters += parameter_count(parameter)
        storage += int(getattr(parameter, "ds_numel", None) or parameter.numel())
        partition = getattr(parameter, "ds_tensor", None)  # ZeRO-3: this rank's share
        held += int(partition.numel()) if partition is not None else int(parameter.numel())
    return {"parameters": parameters, "storage_elements": storage, "held_by_this_process": held}


def after_loading(model) -> dict[str, Any]:
    """What this process holds right after loading (weights_held: ZeRO-3 loads only a partition per rank), its
    memory now and at its peak so far (resident, and CUDA's peak when it is in use) and the attention
    implementation transformers chose: for the manifest."""
    import resource

    import psutil
    import torch

    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    found: dict[str, Any] = {
        **weights_held(model),
        "rss_mib": round(psutil.Process().memory_info().rss / 2**20, 1),  # now, with the model loaded
        "peak_rss_mib": round(peak_kib / 1024, 1),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        found["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    config = getattr(model, "config", None)
    found["attention"] = getattr(config, "_attn_implementation", None)  # sdpa, eager, flash_attention_2
    return found


def build_model(loaded: LoadedRecipe, task: Task, tokenizer, rundir: RunDir) -> LoadedModel:
    """The task's model, frozen as the recipe says (with LoRA, peft has frozen all but the adapters)."""
    recipe = loaded.recipe
    built = task.build_model(ModelSpec.of(recipe, loaded.search_dirs), tokenizer, rundir.root / "base_model")
    if recipe.lora is None:
        apply_freezing(built.model, recipe.freeze, built.head_names)
    if is_main_process():
        console.print(
            freeze_table(block_counts(built.model, built.head_names), title=type(built.model).__name__)
        )
    return built


# ---- train ------------------------------------------------------------------------------------------
def evaluate_before_training(built: Built, rundir: RunDir) -> dict[str, Any]:
    """eval.before_training: the untouched model's metrics (kept from an earlier session of a resumed run)."""
    before = rundir.read_json("metrics_before.json")
    if built.loaded.recipe.eval.before_training and not before:
        built.say("evaluating the model before fine-tuning")
        before = built.trainer.evaluate()
        if is_main_process():
            rundir.write_json("metrics_before.json", before)
    return before


def train(built: Built, rundir: RunDir, *, announce_resume: bool):
    """Train from the start or the newest complete checkpoint; (that checkpoint, the Trainer's output)."""
    checkpoint = resume_point(rundir, announce=announce_resume and is_main_process())
    check_same_data(rundir, built.data, resuming=checkpoint is not None)
    rundir.training_started = True
    try:
        output = built.trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except KeyboardInterrupt:
        last = rundir.last_checkpoint()
        where = f"the last checkpoint is {last.name}" if last else "no checkpoint was written yet"
        raise FtlError(f"interrupted; {where}: continue with the same command plus --resume") from None
    if built.guard.stopped:
        last = rundir.last_checkpoint()
        kept = f"the last good checkpoint is {last.name}" if last else "no checkpoint was written before it"
        raise FtlError(
            f"{built.guard.stopped}; {kept} (continue with --resume once the cause is fixed, e.g. a lower train.lr or "
            "cleaned data; or set train.nan_policy: skip)"
        )
    return checkpoint, output


def train_without_evaluating(built: Built, rundir: RunDir) -> dict[str, Any]:
    output = built.trainer.train()
    metrics = {"train_steps": output.global_step, **outcomes(output.metrics)}
    metrics.update({k: v for k, v in output.metrics.items() if k == "train_runtime"})
    if is_main_process():
        rundir.write_json("metrics.json", metrics)
    return metrics


# ---- finish -----------------------------------------------------------------------------------------
def finish(
    built: Built, rundir: RunDir, train_output, *, before: dict[str, Any], resumed_from: Path | None
) -> dict[str, Any]:
    """Evaluate the final weights, save the model and predictions; rank 0 writes the results."""
    recipe, trainer, task, data = built.loaded.recipe, built.trainer, built.task, built.data
    final = evaluation_of_final_weights(trainer) or trainer.evaluate()
    trainer.close_loggers()
    trainer.save_model(str(rundir.model))  # collective under DeepSpeed (ZeRO-3 gathers); rank 0 writes
    predictions = None
    if recipe.eval.save_predictions:
        predictions = task.write_predictions(trainer, data.validation, data.validation_rows, rundir.root)
    metrics = outcomes(final)
    if predictions is not None:
        metrics.update({f"eval_{name}": value for name, value in predictions.metrics.items()})
    metrics["train_steps"] = train_output.global_step
    if built.guard.skipped:
        metrics["skipped_steps"] = built.guard.skipped
    if before:
        metrics["before"] = outcomes(before)
        _add_changes(metrics, recipe.task.main_metric)
    if not is_main_process():
        return metrics
    rundir.write_model_files(
        built.tokenizer,
        task_state={"task": recipe.task.type, **task.state()},
        adapter=built.model if recipe.lora is not None else None,
    )
    task.write_validation_rows(rundir.root, data.validation_rows)
    rundir.write_results(
        metrics,
        log_history=trainer.state.log_history,
        manifest=manifest(
            recipe,
            data_fingerprint=data.fingerprint,
            sources=data.sources,
            device=f"{built.device.name} {built.device.precision}",
            extra={
                "model_location": str(built.location),
                "workers": trainer.args.world_size,
                "after_loading": built.loading,  # rank 0's share of the weights and its peak memory then
                "after_training": weights_held(trainer.model),  # and once DeepSpeed partitioned them
                "placement": built.placement,
                "workers_over_time": next(
                    (c.history for c in trainer.callback_handler.callbacks if isinstance(c, WorkerCountLog)),
                    [],
                ),
                "deepspeed": trainer.args.deepspeed if isinstance(trainer.args.deepspeed, dict) else None,
                "resumed_from": resumed_from.name if resumed_from else None,
                "data_stats": data.stats,
                "data_prep_seconds": round(data.seconds, 3),
                "data_from_cache": data.from_cache,
                "wall_seconds": round(time.perf_counter() - built.started, 1),
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


def evaluation_of_final_weights(trainer) -> dict[str, Any] | None:
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
