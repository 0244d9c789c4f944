"""Recipe -> HF `TrainingArguments`: the one place where recipe names meet Trainer names."""

from __future__ import annotations

from pathlib import Path

from ftl.launcher.recipe.schema import Recipe
from ftl.launcher.train.batching import batch_plan
from ftl.launcher.train.deepspeed_config import deepspeed_config
from ftl.launcher.train.device import DevicePlan


def best_metric(recipe: Recipe) -> tuple[str, bool]:
    """(metric name without prefix, greater_is_better) for model selection and early stopping."""
    task = recipe.task
    name = (recipe.eval.metric or task.main_metric).removeprefix("eval_")
    return name, task.metrics[name] == "max"


def training_arguments(
    recipe: Recipe,
    checkpoints: Path,
    device: DevicePlan,
    *,
    loss_counts_items: bool = False,
    generate: bool = False,
):
    """generate: evaluation generates text (Seq2SeqTrainingArguments with predict_with_generate)."""
    from transformers import Seq2SeqTrainingArguments, TrainingArguments

    train, evaluation = recipe.train, recipe.eval
    eval_strategy = "steps" if evaluation.every_steps else "epoch"
    if train.checkpoint_every_steps:
        save_strategy, save_steps = "steps", train.checkpoint_every_steps
    else:
        save_strategy, save_steps = eval_strategy, evaluation.every_steps or 500
    metric, greater = best_metric(recipe)
    warmup = train.warmup_steps if train.warmup_steps is not None else train.warmup_ratio
    deepspeed = None
    if recipe.distributed.uses_deepspeed:
        deepspeed = deepspeed_config(recipe, device=device.device)
    arguments, extra = (
        (Seq2SeqTrainingArguments, {"predict_with_generate": True}) if generate else (TrainingArguments, {})
    )
    return arguments(
        **extra,
        output_dir=str(checkpoints),
        seed=recipe.seed,
        data_seed=recipe.seed,
        num_train_epochs=train.epochs,
        max_steps=train.max_steps or -1,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=evaluation.batch_size,
        gradient_accumulation_steps=batch_plan(recipe).accumulation,
        learning_rate=train.lr,
        weight_decay=train.weight_decay,
        adam_beta1=train.adam_betas[0],
        adam_beta2=train.adam_betas[1],
        adam_epsilon=train.adam_eps,
        optim="adamw_torch",
        lr_scheduler_type=train.scheduler,
        warmup_steps=warmup,
        max_grad_norm=train.max_grad_norm if train.max_grad_norm is not None else 0.0,
        bf16=device.precision == "bf16",
        fp16=device.precision == "fp16",
        use_cpu=device.use_cpu,
        activation_checkpointing=train.gradient_checkpointing,
        train_sampling_strategy="group_by_length"
        if train.group_by_length and _groupable(recipe)
        else "random",
        eval_strategy=eval_strategy,
        eval_steps=evaluation.every_steps,
        save_strategy=save_strategy,
        save_steps=save_steps,
        save_total_limit=train.keep_checkpoints,
        load_best_model_at_end=evaluation.select_best,
        metric_for_best_model=f"eval_{metric}",
        greater_is_better=greater,
        logging_strategy="steps",
        logging_steps=train.log_every_steps,
        logging_first_step=True,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=train.dataloader_workers,
        dataloader_pin_memory=device.device == "cuda",
        include_num_input_tokens_seen="non_padding",
        save_only_model=False,
        restore_callback_states_from_checkpoint=True,
        deepspeed=deepspeed,
        # Token-weighted averaging across workers is right only for losses that divide by the item count;
        # for per-example mean losses HF would otherwise multiply the loss (and gradients) by the world size.
        average_tokens_across_devices=loss_counts_items,
        ddp_backend=_backend(device),
        # a multi-task step runs one head: the others get no gradient in it
        ddp_find_unused_parameters=True if recipe.task.type == "multitask" else None,
    )


def _backend(device: DevicePlan) -> str | None:
    """The collective backend of a multi-process run (Ray Train sets WORLD_SIZE); None in a single process."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return "nccl" if device.device == "cuda" else "gloo"


def _groupable(recipe: Recipe) -> bool:
    """Length grouping only helps when rows have different lengths (not for packed LM blocks)."""
    return not getattr(recipe.task, "packs", False)
