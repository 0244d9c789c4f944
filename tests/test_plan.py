"""`ftl plan`: model-state memory agrees with DeepSpeed's own estimators; activations and offload behave."""

from __future__ import annotations

import pytest

from ftl.launcher.cli import main
from ftl.launcher.model.freeze import apply_freezing
from ftl.launcher.model.load import ModelSpec, load_model, load_tokenizer
from ftl.launcher.plan import (
    CUDA_CONTEXT_BYTES,
    NCCL_CHANNELS,
    NCCL_PROTOCOL_BYTES,
    parse_memory,
    plan_memory,
    shape_of,
)
from ftl.launcher.plan_report import headroom
from ftl.launcher.recipe import load_recipe
from ftl.launcher.tasks.registry import task_for


def _plan(recipe_path, *overrides):
    loaded = load_recipe(recipe_path, list(overrides))
    task = task_for(loaded.recipe.task)
    built = load_model(
        ModelSpec.of(loaded.recipe, loaded.search_dirs),
        task,
        load_tokenizer(loaded.recipe.model, loaded.search_dirs),
        meta=True,
    )
    apply_freezing(built.model, loaded.recipe.freeze, built.head_names)
    shape = shape_of(built.model, loaded.recipe)
    return shape, plan_memory(shape, loaded.recipe)


@pytest.mark.parametrize("workers", [1, 4])
def test_zero2_model_states_equal_deepspeed_estimator(lm_recipe, workers):
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    shape, plan = _plan(
        lm_recipe, "distributed.zero_stage=2", f"distributed.workers={workers}", "train.precision=bf16"
    )
    ours = plan.parts["weights"] + plan.parts["gradients"] + plan.parts["optimizer states"]
    _, deepspeed_gpu = estimate_zero2_model_states_mem_needs(
        shape.total, num_gpus_per_node=workers, cpu_offload=False
    )
    assert ours == pytest.approx(deepspeed_gpu, rel=1e-6)


def test_zero3_model_states_equal_deepspeed_estimator(lm_recipe):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    shape, plan = _plan(
        lm_recipe, "distributed.zero_stage=3", "distributed.workers=8", "train.precision=bf16"
    )
    ours = sum(v for k, v in plan.parts.items() if k != "activations")
    _, deepspeed_gpu, _ = estimate_zero3_model_states_mem_needs(
        shape.total, shape.largest_layer, num_gpus_per_node=8, cpu_offload=False, cpu_offload_params=False
    )
    # DeepSpeed's stage-3 formula counts 18 B/param (16-bit grads, fp32 grads, master weights, moments) and
    # leaves out the 16-bit parameter partition its stage-2 formula counts (2 B/param); ftl keeps one accounting.
    assert ours == pytest.approx(deepspeed_gpu + 2 * shape.total / 8, rel=1e-6)


def test_offload_moves_optimizer_states_to_cpu_and_frozen_layers_keep_no_activations(lm_recipe):
    _, plain = _plan(lm_recipe, "distributed.zero_stage=2")
    _, offloaded = _plan(lm_recipe, "distributed.zero_stage=2", "distributed.offload_optimizer=cpu")
    assert "optimizer states" not in offloaded.parts
    assert offloaded.offloaded["optimizer states"] == plain.parts["optimizer states"]
    _, frozen = _plan(lm_recipe, "freeze.bottom_layers=1", "freeze.embeddings=true")
    _, full = _plan(lm_recipe)
    logits = 4 * 32 * 8 * full_vocab(lm_recipe) * 4.0
    assert frozen.parts["activations"] - logits == pytest.approx((full.parts["activations"] - logits) / 2)
    _, checkpointed = _plan(lm_recipe, "train.gradient_checkpointing=true")
    assert checkpointed.parts["activations"] < full.parts["activations"]


def full_vocab(recipe_path) -> int:
    shape, _ = _plan(recipe_path)
    return shape.vocab


def test_plan_command_warns_when_memory_exceeds_the_gpu(capsys, lm_recipe):
    assert main(["plan", str(lm_recipe), "--gpu-mem", "1MB"]) == 0
    err = capsys.readouterr().err
    assert "exceeds --gpu-mem" in err and "FLOPs per optimizer step" in err
    assert parse_memory("80GB") == 80 * 1024**3
    assert main(["plan", str(lm_recipe), "--gpu-mem", "lots"]) == 2
    assert "--gpu-mem: 'lots' is not a size" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["1.2.3GB", "80", "GB"])
def test_gpu_mem_needs_a_size_with_a_unit(capsys, lm_recipe, bad):
    assert main(["plan", str(lm_recipe), "--gpu-mem", bad]) == 2
    err = capsys.readouterr().err
    assert f"--gpu-mem: '{bad}' is not a size" in err and "Traceback" not in err


def test_check_and_plan_count_only_the_adapters_as_trainable_with_lora(capsys, classification_recipe):
    assert (
        main(["check", "-q", str(classification_recipe), "lora={r: 2, target_modules: [query, value]}"]) == 0
    )
    err = capsys.readouterr().err
    total_line = next(line for line in err.splitlines() if line.startswith("total"))
    assert "100.0% trainable" not in total_line and "% trainable" in total_line


# ---- on a GPU: what CUDA, NCCL, DeepSpeed and DDP keep beside the model states ------------------------------
def test_a_gpu_plan_adds_the_cuda_context_nccl_buffers_and_deepspeeds_buckets(lm_recipe):
    shape, cpu = _plan(lm_recipe, "distributed.workers=8", "distributed.zero_stage=2", "train.precision=bf16")
    _, gpu = _plan(
        lm_recipe,
        "distributed.workers=8",
        "distributed.zero_stage=2",
        "train.precision=bf16",
        "distributed.gpus_per_worker=1",
        "distributed.deepspeed={zero_optimization: {reduce_bucket_size: 1000}}",
    )
    assert "CUDA context" not in cpu.parts  # a CPU plan is what benchmarks/memory_plan.py measures
    assert gpu.parts["CUDA context"] == CUDA_CONTEXT_BYTES
    assert gpu.parts["NCCL buffers"] == 2 * NCCL_CHANNELS * NCCL_PROTOCOL_BYTES
    # the recipe's reduce bucket, DeepSpeed's default allgather bucket (capped by the gradients), 2 B each
    assert gpu.parts["DeepSpeed buckets"] == (1000 + min(500_000_000, shape.trainable)) * 2.0
    assert gpu.load_peak == shape.total * 4.0 + CUDA_CONTEXT_BYTES  # fp32 weights before DeepSpeed converts
    assert gpu.device_total == sum(gpu.parts.values()) > cpu.device_total


def test_ddp_keeps_a_gradient_copy_and_autocast_a_16_bit_weight_copy(lm_recipe):
    shape, plan = _plan(
        lm_recipe, "distributed.workers=2", "distributed.gpus_per_worker=1", "train.precision=bf16"
    )
    assert plan.parts["DDP gradient buckets"] == shape.trainable * 4.0
    assert plan.parts["autocast weight copies"] == shape.quantizable * 2.0
    assert "DeepSpeed buckets" not in plan.parts


def test_zero3_loads_only_a_partition_per_rank(lm_recipe):
    shape, plan = _plan(lm_recipe, "distributed.workers=4", "distributed.zero_stage=3", "train.device=cuda")
    assert plan.load_peak == shape.total * 4.0 / 4 + 4.0 * shape.largest_layer + CUDA_CONTEXT_BYTES


def test_plan_reports_headroom_on_the_gpu(capsys, lm_recipe):
    assert headroom(60 * 1024**3, 80 * 1024**3) == "20.00 GiB (25.0 %)"
    assert "short by 10.00 GiB" in headroom(90 * 1024**3, 80 * 1024**3)
    assert main(["plan", str(lm_recipe), "--gpu-mem", "80GB"]) == 0
    err = capsys.readouterr().err
    assert "headroom on --gpu-mem" in err and "CUDA context" in err and "peak while loading" in err
