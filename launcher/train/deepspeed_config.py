"""The DeepSpeed config of a recipe: generated from the recipe, extended by validated expert keys."""

from __future__ import annotations

import copy
import importlib
from functools import lru_cache
from typing import Any

from ftl.launcher.errors import FtlError, did_you_mean
from ftl.launcher.recipe.schema import Recipe
from ftl.launcher.train.batching import batch_plan

_CONSTANT_MODULES = (
    "deepspeed.runtime.constants",
    "deepspeed.runtime.zero.constants",
    "deepspeed.monitor.constants",
    "deepspeed.profiling.constants",
    "deepspeed.autotuning.constants",
    "deepspeed.elasticity.constants",
    "deepspeed.compression.constants",
    "deepspeed.runtime.data_pipeline.constants",
    "deepspeed.runtime.swap_tensor.constants",
    "deepspeed.runtime.checkpoint_engine.constants",
    "deepspeed.nebula.constants",
    "deepspeed.comm.constants",
)
_EXTRA_TOP_LEVEL = {
    "activation_checkpointing",
    "zero_optimization",
    "flops_profiler",
    "tensorboard",
    "wandb",
    "csv_monitor",
    "comet",
    "comms_logger",
    "aio",
    "compression_training",
    "data_efficiency",
    "checkpoint",
    "pipeline",
    "amp",
    "autotuning",
    "elasticity",
    "nebula",
    "curriculum_learning",
    "sparse_attention",
    "weight_quantization",
    "hybrid_engine",
    "compile",
    "timers",
    "data_types",
    "torch_autocast",
    "tensor_parallel",
}


@lru_cache(maxsize=1)
def known_top_level_keys() -> frozenset[str]:
    """Top-level DeepSpeed config keys, collected from DeepSpeed's own constant modules."""
    keys = set(_EXTRA_TOP_LEVEL)
    for name in _CONSTANT_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        keys.update(
            v for k, v in vars(module).items() if k.isupper() and isinstance(v, str) and v.isidentifier()
        )
    return frozenset(keys)


def deepspeed_config(recipe: Recipe, *, device: str) -> dict[str, Any] | None:
    """A concrete DeepSpeed config (no "auto" values) or None when the recipe does not use DeepSpeed."""
    distributed, train = recipe.distributed, recipe.train
    if distributed.zero_stage is None:
        return None
    plan = batch_plan(recipe)
    zero: dict[str, Any] = {"stage": distributed.zero_stage}
    if distributed.offload_optimizer != "none":
        zero["offload_optimizer"] = _offload(distributed.offload_optimizer, distributed.nvme_path, device)
    if distributed.offload_params != "none":
        zero["offload_param"] = _offload(distributed.offload_params, distributed.nvme_path, device)
    if distributed.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": plan.micro,
        "gradient_accumulation_steps": plan.accumulation,
        "train_batch_size": plan.global_batch,
        "gradient_clipping": train.max_grad_norm or 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": train.precision == "bf16"},
        "fp16": {
            "enabled": train.precision == "fp16",
            "loss_scale": 0,  # dynamic loss scaling
            "initial_scale_power": 16,
            "loss_scale_window": 1000,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
        # HF Trainer builds AdamW (ftl's parameter groups: weight decay, layer-wise learning rates) and the
        # schedule from the recipe and hands them to DeepSpeed. An optimizer offloaded from a GPU is DeepSpeed's
        # vectorised CPU Adam (see wants_cpu_adam), and DeepSpeed is told to refuse anything slower.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": wants_cpu_adam(distributed.offload_optimizer, device),
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    return _merge_extras(config, distributed.deepspeed)


def wants_cpu_adam(offload_optimizer: str, device: str) -> bool:
    """An optimizer offloaded from a GPU steps on the CPU: DeepSpeed's vectorised CPUAdam there (torch's AdamW
    is several times slower, and DeepSpeed warns). A run on CPU keeps torch's AdamW: the same update, without
    compiling DeepSpeed's C++ op (~90 s per machine)."""
    return offload_optimizer != "none" and device == "cuda"


def join_deepspeed(device: str) -> None:
    """Put DeepSpeed's communication on the process group Ray Train set up. The Trainer would do it once it
    exists; ZeRO-3 needs it before: the model is built inside deepspeed.zero.Init, which reads the world size
    (for its batch-size check and the partitioning) from deepspeed.comm."""
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if device == "cuda" else "gloo")


def validate_deepspeed_config(config: dict[str, Any], workers: int) -> None:
    """Let DeepSpeed itself check the config (as for one worker); its complaint becomes a one-line error."""
    from deepspeed.runtime.config import DeepSpeedConfig

    single = copy.deepcopy(config)
    single["train_batch_size"] = config["train_batch_size"] // max(workers, 1)
    try:
        DeepSpeedConfig(single)
    except Exception as exc:  # DeepSpeed raises pydantic errors, ValueError, AssertionError
        reason = " ".join(str(exc).split())
        raise FtlError(f"distributed.deepspeed: DeepSpeed rejects the config: {reason[:300]}") from None


def _offload(target: str, nvme_path: str | None, device: str) -> dict[str, Any]:
    if target == "nvme":
        return {"device": "nvme", "nvme_path": nvme_path, "pin_memory": device == "cuda"}
    return {"device": "cpu", "pin_memory": device == "cuda"}


def _merge_extras(config: dict[str, Any], extras: dict[str, Any]) -> dict[str, Any]:
    known = known_top_level_keys()
    for key in extras:
        if key not in known:
            raise FtlError(
                f"distributed.deepspeed: '{key}' is not a DeepSpeed config key{did_you_mean(key, known)}"
            )
    merged = copy.deepcopy(config)
    for key, value in extras.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged
