"""Settings that are valid one by one but not together: the recipe's catalogue of rules, grouped by concern.

Each rule returns the key it blames and why, or None (see catalogue.py); `rulebook.violations` runs this
catalogue and the search section's (search_rules.py).
"""

from __future__ import annotations

from ftl.launcher.recipe.catalogue import Catalogue, Violation, not_produced
from ftl.launcher.recipe.schema import Recipe

rule = Catalogue("recipe")


# --- evaluation and model selection -------------------------------------------------------------


@rule
def eval_metric_is_produced_by_the_task(recipe: Recipe) -> Violation | None:
    metric = recipe.eval.metric
    if metric is None:
        return None
    valid = recipe.task.metrics
    name = metric.removeprefix("eval_")
    if name not in valid:
        return ("eval", "metric"), not_produced(recipe.task, metric)
    return None


@rule
def early_stopping_needs_best_model_selection(recipe: Recipe) -> Violation | None:
    if recipe.train.early_stopping is not None and not recipe.eval.select_best:
        return (
            "train",
            "early_stopping",
        ), "early stopping needs eval.select_best: true (it tracks the best evaluation)"
    return None


@rule
def checkpoints_follow_evaluations_when_selecting_best(recipe: Recipe) -> Violation | None:
    every = recipe.train.checkpoint_every_steps
    if every is None or not recipe.eval.select_best:
        return None
    eval_every = recipe.eval.every_steps
    if eval_every is None:
        return ("train", "checkpoint_every_steps"), (
            "with eval.select_best the best weights must be on disk when an evaluation happens: set "
            "eval.every_steps too (checkpoint_every_steps a multiple of it), or leave checkpoint_every_steps unset"
        )
    if every % eval_every:
        return ("train", "checkpoint_every_steps"), (
            f"{every} is not a multiple of eval.every_steps={eval_every}; with eval.select_best every checkpoint "
            "must coincide with an evaluation"
        )
    return None


# --- model -----------------------------------------------------------------------------------------


@rule
def config_builds_from_scratch(recipe: Recipe) -> Violation | None:
    model = recipe.model
    if model.config is not None and (model.name_or_path or model.local_copies):
        source = "name_or_path" if model.name_or_path else "local_copies"
        return ("model", "config"), (
            f"model.config builds a randomly initialised model, model.{source} loads a pretrained one: give "
            "one (model.config=null); to change a pretrained model's settings use model.config_overrides"
        )
    return None


# --- optimisation ----------------------------------------------------------------------------------


@rule
def one_way_to_give_warmup(recipe: Recipe) -> Violation | None:
    if recipe.train.warmup_steps is not None and recipe.train.warmup_ratio > 0:
        return ("train", "warmup_steps"), "set either warmup_steps or warmup_ratio, not both"
    return None


@rule
def fp16_needs_a_gpu(recipe: Recipe) -> Violation | None:
    if recipe.train.precision == "fp16" and recipe.train.device == "cpu":
        return ("train", "precision"), "fp16 with loss scaling needs a CUDA GPU; on CPU use bf16 or fp32"
    return None


@rule
def bad_step_limit_belongs_to_stop(recipe: Recipe) -> Violation | None:
    train = recipe.train
    if train.max_bad_steps is not None and train.nan_policy != "stop":
        return (
            "train",
            "max_bad_steps",
        ), "applies to nan_policy: stop (skip never stops); remove one of them"
    return None


@rule
def skipping_bad_steps_needs_the_plain_optimizer(recipe: Recipe) -> Violation | None:
    train = recipe.train
    if recipe.distributed.uses_deepspeed and (train.nan_policy == "skip" or (train.max_bad_steps or 1) > 1):
        return ("train", "nan_policy"), (
            f"{train.nan_policy} needs a run without DeepSpeed, whose engine applies gradients itself; use "
            "nan_policy: stop with max_bad_steps 1 (the default)"
        )
    return None


# --- freezing --------------------------------------------------------------------------------------


@rule
def head_only_stands_alone(recipe: Recipe) -> Violation | None:
    freeze = recipe.freeze
    if freeze.head_only and freeze.freezes_by_part:
        return (
            "freeze",
            "head_only",
        ), "head_only already freezes the whole backbone; remove the other freeze keys"
    return None


@rule
def gradual_unfreezing_needs_a_backbone_to_unfreeze(recipe: Recipe) -> Violation | None:
    if recipe.freeze.gradual is not None and recipe.freeze.head_only:
        return ("freeze", "gradual"), (
            "head_only keeps the backbone frozen for the whole run, so there is nothing to unfreeze; remove one of them"
        )
    return None


# --- task and data ---------------------------------------------------------------------------------


@rule
def label_names_are_unique(recipe: Recipe) -> Violation | None:
    labels = getattr(recipe.task, "labels", None)
    if labels and len(set(labels)) != len(labels):
        duplicates = sorted({name for name in labels if labels.count(name) > 1})
        return ("task", "labels"), f"label names must be unique; repeated: {', '.join(duplicates)}"
    return None


@rule
def stratified_split_needs_labels(recipe: Recipe) -> Violation | None:
    if recipe.data is None:
        return None
    if recipe.data.validation_split.method == "stratified" and recipe.task.type != "sequence_classification":
        return ("data", "validation_split", "method"), (
            f"stratified splits need class labels; task {recipe.task.type} has none: use random or tail"
        )
    return None


@rule
def oversampling_needs_classes(recipe: Recipe) -> Violation | None:
    if recipe.data is not None and recipe.data.oversample and recipe.task.type != "sequence_classification":
        return ("data", "oversample"), (
            f"oversampling repeats rows of rare classes; task {recipe.task.type} has no class per row "
            "(for token classification use task.class_weights)"
        )
    return None


@rule
def class_weights_match_the_labels(recipe: Recipe) -> Violation | None:
    weights = getattr(recipe.task, "class_weights", None)
    labels = getattr(recipe.task, "labels", None)
    if isinstance(weights, list):
        if any(w <= 0 for w in weights):
            return ("task", "class_weights"), "weights must be > 0"
        if labels and len(weights) != len(labels):
            return ("task", "class_weights"), (
                f"{len(weights)} weight(s) for {len(labels)} labels; give one per label, in the order of task.labels"
            )
    return None


@rule
def multitask_trains_full_heads(recipe: Recipe) -> Violation | None:
    if recipe.task.type != "multitask":
        return None
    for key in ("lora", "quantization"):
        if getattr(recipe, key) is not None:
            return (
                key,
            ), "a multitask model trains its heads and encoder directly; remove lora and quantization"
    if recipe.tune is not None and recipe.tune.cv is not None:
        return ("tune", "cv"), "cross-validation folds one dataset; a multitask recipe has one per task"
    return None


@rule
def text_is_not_the_label(recipe: Recipe) -> Violation | None:
    task = recipe.task
    if task is not None and task.type == "sequence_classification" and task.text_column == task.label_column:
        return ("task", "text_column"), (
            f"'{task.text_column}' is also task.label_column: the model would read the answer; name the column "
            "that holds the text"
        )
    return None


@rule
def text_pair_differs_from_text(recipe: Recipe) -> Violation | None:
    task = recipe.task
    if getattr(task, "text_pair_column", None) and task.text_pair_column == task.text_column:
        return (
            "task",
            "text_pair_column",
        ), "is the same column as text_column; give the second text's column"
    return None


# --- distributed training and DeepSpeed --------------------------------------------------------------

# DeepSpeed keys that ftl derives from the recipe; `distributed.deepspeed` may not set them.
DERIVED_DEEPSPEED_KEYS = {
    "train_batch_size": "distributed.global_batch_size",
    "train_micro_batch_size_per_gpu": "train.batch_size",
    "gradient_accumulation_steps": "train.grad_accum_steps or distributed.global_batch_size",
    "gradient_clipping": "train.max_grad_norm",
    "bf16": "train.precision",
    "fp16": "train.precision",
    "optimizer": "train.lr, train.weight_decay, train.adam_betas",
    "scheduler": "train.scheduler",
}


@rule
def offload_needs_zero(recipe: Recipe) -> Violation | None:
    d = recipe.distributed
    if d.offload_optimizer != "none" and (d.zero_stage is None or d.zero_stage < 1):
        return (
            "distributed",
            "offload_optimizer",
        ), "optimizer offload needs distributed.zero_stage 1, 2 or 3"
    if d.offload_params != "none" and d.zero_stage != 3:
        return ("distributed", "offload_params"), "parameter offload needs distributed.zero_stage: 3"
    return None


@rule
def nvme_offload_needs_a_path(recipe: Recipe) -> Violation | None:
    d = recipe.distributed
    if "nvme" in (d.offload_optimizer, d.offload_params) and not d.nvme_path:
        return (
            "distributed",
            "nvme_path",
        ), "NVMe offload needs a directory on a fast local disk in nvme_path"
    return None


@rule
def global_batch_divides_evenly(recipe: Recipe) -> Violation | None:
    d, train = recipe.distributed, recipe.train
    if d.global_batch_size is None:
        return None
    per_step = train.batch_size * d.workers
    if d.global_batch_size % per_step:
        return ("distributed", "global_batch_size"), (
            f"{d.global_batch_size} is not a multiple of train.batch_size x workers = {per_step}; "
            f"try {max(per_step, round(d.global_batch_size / per_step) * per_step)}"
        )
    if train.grad_accum_steps != 1 and train.grad_accum_steps != d.global_batch_size // per_step:
        return ("train", "grad_accum_steps"), (
            f"conflicts with distributed.global_batch_size (which implies {d.global_batch_size // per_step}); set one"
        )
    return None


@rule
def elastic_training_keeps_the_global_batch(recipe: Recipe) -> Violation | None:
    """With fewer workers a step accumulates more micro batches: the global batch must divide for every size."""
    d, train = recipe.distributed, recipe.train
    if d.min_workers is None:
        return None
    if d.min_workers > d.workers:
        return (
            "distributed",
            "min_workers",
        ), f"{d.min_workers} is more than distributed.workers ({d.workers})"
    if d.min_workers == d.workers:
        return None
    if d.global_batch_size is None:
        return ("distributed", "min_workers"), (
            "elastic training keeps the global batch when workers come and go: set distributed.global_batch_size "
            f"(e.g. {train.batch_size * d.workers})"
        )
    uneven = [n for n in range(d.min_workers, d.workers + 1) if d.global_batch_size % (train.batch_size * n)]
    if uneven:
        return ("distributed", "global_batch_size"), (
            f"{d.global_batch_size} cannot be split evenly over {uneven[0]} worker(s) of train.batch_size "
            f"{train.batch_size}; choose a multiple of batch_size x every worker count from {d.min_workers} to "
            f"{d.workers}"
        )
    if d.max_failures == 0:
        return ("distributed", "max_failures"), (
            "elastic training restarts the workers after a lost node: allow restarts (e.g. max_failures: 10, or -1)"
        )
    if recipe.eval.select_best:
        return ("eval", "select_best"), (
            "an elastic run's checkpoints come from different numbers of workers, so the best one cannot be "
            "reloaded at the end: set eval.select_best: false (it keeps its last weights)"
        )
    return None


@rule
def one_gpu_per_worker(recipe: Recipe) -> Violation | None:
    """Each Ray Train worker is one rank, and DDP, DeepSpeed and NCCL give a rank exactly one device: a fraction
    puts two ranks on one GPU (NCCL fails with 'duplicate GPU'), more than one leaves the extra GPUs idle."""
    gpus = recipe.distributed.gpus_per_worker
    if gpus not in (0, 1):
        more = f"distributed.workers={int(gpus) * recipe.distributed.workers} with " if gpus > 1 else ""
        return ("distributed", "gpus_per_worker"), (
            f"{gpus:g}: a worker trains on exactly one GPU or none; use 0 (CPU) or 1 "
            f"({more}one GPU each to use more GPUs)"
        )
    return None


@rule
def deepspeed_extras_do_not_override_the_recipe(recipe: Recipe) -> Violation | None:
    extras = recipe.distributed.deepspeed
    if extras and recipe.distributed.zero_stage is None:
        return ("distributed", "deepspeed"), "DeepSpeed keys need DeepSpeed: set distributed.zero_stage (0-3)"
    for key in extras:
        if key in DERIVED_DEEPSPEED_KEYS:
            return (
                "distributed",
                "deepspeed",
                key,
            ), f"is derived from {DERIVED_DEEPSPEED_KEYS[key]}; set it there"
    stage = extras.get("zero_optimization", {})
    if isinstance(stage, dict) and "stage" in stage:
        return (
            "distributed",
            "deepspeed",
            "zero_optimization",
            "stage",
        ), "set distributed.zero_stage instead"
    return None


# --- quantization and adapters -----------------------------------------------------------------------


@rule
def quantized_weights_need_adapters(recipe: Recipe) -> Violation | None:
    if recipe.quantization is not None and recipe.lora is None:
        return ("quantization",), (
            "quantized weights cannot be fine-tuned directly (full fine-tuning of 4/8-bit weights is not supported); "
            "add a lora: section (QLoRA) or remove quantization"
        )
    return None


@rule
def quantized_weights_shard_in_one_dtype(recipe: Recipe) -> Violation | None:
    """ZeRO-3 partitions 4-bit weights stored in the compute dtype (bnb_4bit_quant_storage), which must then be
    the dtype DeepSpeed trains in; 8-bit weights have no such storage."""
    q = recipe.quantization
    if q is None or recipe.distributed.zero_stage != 3:
        return None
    if q.bits == 8:
        return ("distributed", "zero_stage"), (
            "ZeRO-3 cannot partition bitsandbytes 8-bit weights; use quantization.bits: 4, or zero_stage 0-2"
        )
    if q.compute_dtype != recipe.train.precision:
        return ("quantization", "compute_dtype"), (
            f"{q.compute_dtype}: under ZeRO-3 the 4-bit weights are stored in the compute dtype and every weight "
            f"must share DeepSpeed's dtype ({recipe.train.precision}); set quantization.compute_dtype and "
            "train.precision to the same (bf16 on an Ampere GPU)"
        )
    return None


@rule
def lora_replaces_freezing(recipe: Recipe) -> Violation | None:
    freeze = recipe.freeze
    if recipe.lora is not None and (freeze.freezes_by_part or freeze.head_only):
        return (
            "freeze",
        ), "with lora the base model is frozen and only adapters train; remove the freeze settings"
    return None


# --- attention and packing ----------------------------------------------------------------------

# Model types (transformers 5) whose attention lets examples packed into one row attend to each other, found by
# the probe of model/attention.py: ALiBi models take no position ids (BLOOM, MPT); OPT builds its causal mask
# without them. Every other model is tried on the loaded model before training.
_MIXES_PACKED_EXAMPLES = ("bloom", "mpt", "opt")


@rule
def flash_attention_needs_a_gpu(recipe: Recipe) -> Violation | None:
    if recipe.model.attn_implementation == "flash_attention_2" and recipe.train.device == "cpu":
        return ("model", "attn_implementation"), "flash_attention_2 runs on a CUDA GPU only; use sdpa on CPU"
    return None


@rule
def examples_packing_needs_position_ids(recipe: Recipe) -> Violation | None:
    mode = getattr(recipe.task, "packing_mode", None)
    model_type = str((recipe.model.config or {}).get("model_type", ""))
    if mode == "examples" and model_type in _MIXES_PACKED_EXAMPLES:
        return ("task", "packing"), (
            f"{model_type} models ignore restarting position ids, so packed examples would attend to each other; "
            "set packing: false (or stream for paragraphs of one text)"
        )
    return None


# --- preference tuning -----------------------------------------------------------------------------


@rule
def preference_reference_fits_the_model(recipe: Recipe) -> Violation | None:
    """task.reference: adapters exist only with lora; a copy beside adapters is a second model for nothing; a
    reference-free loss takes none; ZeRO-3 partitions the weights before a copy or a pass over the data could be made
    from them (with lora the engine's forward with adapters disabled serves)."""
    task = recipe.task
    if task.type != "preference":
        return None
    where = ("task", "reference")
    if task.reference_free:
        if task.reference != "auto":
            return where, f"{task.reference}: loss {task.loss} is reference-free; remove task.reference"
        return None
    if task.reference == "adapters_disabled" and recipe.lora is None:
        return where, (
            "adapters_disabled needs a lora: section (the reference is the base with the adapters switched off); "
            "without lora use copy or precomputed"
        )
    if task.reference == "copy" and recipe.lora is not None:
        return where, (
            "copy holds a second model in memory, but with lora the base with its adapters disabled is the "
            "reference already; use adapters_disabled (or auto)"
        )
    if recipe.lora is None and recipe.distributed.zero_stage == 3:
        return where, (
            f"{task.reference}: ZeRO-3 partitions the weights before training, so neither a frozen copy nor the "
            "reference log-probs of the whole model are made from them here; use lora (the reference is the base "
            "with adapters disabled), or distributed.zero_stage 2"
        )
    return None
