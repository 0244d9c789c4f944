"""The CUDA paths, checked on a machine without a GPU: each test describes the device (what torch.cuda would
answer on a V100, on an 8-GPU node, inside a Ray worker holding GPU 3) and checks what ftl decides there.
Each one would have caught a defect found by reading the GPU paths (issue 20); tests/test_distributed.py
runs the ZeRO-3 partitioning at load time and re-sharding from Ray storage for real."""

from __future__ import annotations

import pytest
import torch

from ftl.launcher.errors import FtlError
from ftl.launcher.recipe import load_recipe
from ftl.launcher.recipe.schema import TrainSection
from ftl.launcher.train import device as device_rules
from tests.conftest import edit_recipe


def describe_gpus(monkeypatch, *, count: int, name: str = "NVIDIA A100-SXM4-80GB", bf16: bool = True) -> None:
    """torch.cuda as it answers on a machine with `count` GPUs named `name` (CUDA not yet initialised)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: name)
    # V100/T4: bf16 only by emulation (torch says yes unless asked without it)
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16 or including_emulation
    )


# ---- 3. a single process on a multi-GPU node trains on one GPU, not nn.DataParallel over all --------------
def test_a_single_process_run_on_an_eight_gpu_node_is_pinned_to_its_first_visible_gpu(monkeypatch, capsys):
    describe_gpus(monkeypatch, count=8)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7,0,1,2,3")
    plan = device_rules.plan_device(TrainSection())
    assert plan.device == "cuda"
    assert device_rules.os.environ["CUDA_VISIBLE_DEVICES"] == "4"  # HF's Trainer then sees n_gpu == 1
    said = capsys.readouterr().err
    assert "8 GPUs are visible" in said and "distributed.workers=8 distributed.gpus_per_worker=1" in said


def test_pinning_without_cuda_visible_devices_takes_gpu_0_and_a_started_cuda_is_refused(monkeypatch):
    describe_gpus(monkeypatch, count=2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    device_rules.plan_device(TrainSection())
    assert device_rules.os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    with pytest.raises(FtlError, match="set CUDA_VISIBLE_DEVICES to one GPU"):
        device_rules.plan_device(TrainSection())


def test_one_visible_gpu_is_left_alone(monkeypatch):
    describe_gpus(monkeypatch, count=1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-3f2a")
    device_rules.plan_device(TrainSection())
    assert device_rules.os.environ["CUDA_VISIBLE_DEVICES"] == "GPU-3f2a"


# ---- 7. bf16 needs Ampere: emulation on V100/T4 does not count --------------------------------------------
@pytest.mark.parametrize("name", ["Tesla V100-SXM2-16GB", "Tesla T4"])
def test_bf16_is_refused_on_gpus_that_only_emulate_it(monkeypatch, name):
    describe_gpus(monkeypatch, count=1, name=name, bf16=False)
    with pytest.raises(FtlError, match="needs Ampere or newer"):
        device_rules.plan_device(TrainSection(precision="bf16"))


def test_bf16_is_accepted_on_an_ampere_gpu(monkeypatch):
    describe_gpus(monkeypatch, count=1)
    assert device_rules.plan_device(TrainSection(precision="bf16")).precision == "bf16"


# ---- 2. QLoRA on several GPUs: each rank quantizes onto its own GPU ----------------------------------------
def test_a_quantized_model_goes_to_the_workers_own_gpu(monkeypatch):
    from ftl.launcher.model.load import quantized_device_map

    describe_gpus(monkeypatch, count=8)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)  # Ray Train set this worker's device
    assert quantized_device_map() == {"": 3}
    describe_gpus(monkeypatch, count=0)
    assert quantized_device_map() == {"": "cpu"}


# ---- 4. a worker drives exactly one GPU ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("gpus", "hint"), [(0.5, "use 0 (CPU) or 1"), (2, "distributed.workers=4 with one GPU each")]
)
def test_a_worker_gets_no_fraction_and_no_pair_of_gpus(classification_recipe, gpus, hint):
    with pytest.raises(FtlError, match="gpus_per_worker") as error:
        load_recipe(classification_recipe, [f"distributed.gpus_per_worker={gpus}", "distributed.workers=2"])
    assert hint in str(error.value)
    assert (
        load_recipe(
            classification_recipe, ["distributed.gpus_per_worker=1"]
        ).recipe.distributed.gpus_per_worker
        == 1
    )


# ---- 5. and 11. what Ray workers, trials and folds see -------------------------------------------------------
def test_trials_and_workers_that_reserve_no_gpu_see_none_and_nccl_settings_travel(
    classification_recipe, monkeypatch
):
    from ftl.launcher.distributed.ray_launch import forwarded_env

    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "eth1")
    monkeypatch.setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    no_gpus = load_recipe(classification_recipe).recipe
    env = forwarded_env(no_gpus)
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["DS_ACCELERATOR"] == "cpu"
    assert env["NCCL_SOCKET_IFNAME"] == "eth1" and env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    edit_recipe(classification_recipe, tune={"space": {"train.lr": [1e-3, 1e-2]}, "resources": {"gpus": 1}})
    assert "CUDA_VISIBLE_DEVICES" not in forwarded_env(load_recipe(classification_recipe).recipe)
    gpu_workers = load_recipe(classification_recipe, ["distributed.gpus_per_worker=1", "tune=null"]).recipe
    assert "CUDA_VISIBLE_DEVICES" not in forwarded_env(gpu_workers)


def test_a_cluster_jobs_environment_carries_nccl_settings_but_hides_no_gpu(
    classification_recipe, monkeypatch
):
    from ftl.cluster.address import parse_address
    from ftl.cluster.client import Connection
    from ftl.cluster.submit import job_env

    monkeypatch.setenv("NCCL_IB_DISABLE", "1")
    connection = Connection(parse_address("http://head:8265"), client=None, token=None)
    env = job_env(connection, load_recipe(classification_recipe).recipe)
    assert env["NCCL_IB_DISABLE"] == "1" and "CUDA_VISIBLE_DEVICES" not in env


# ---- 6. an optimizer offloaded from a GPU is DeepSpeed's CPU Adam -----------------------------------------
def test_optimizer_offload_from_a_gpu_uses_deepspeeds_cpu_adam(classification_recipe):
    from ftl.launcher.train.deepspeed_config import deepspeed_config, wants_cpu_adam

    recipe = load_recipe(
        classification_recipe, ["distributed.zero_stage=2", "distributed.offload_optimizer=cpu"]
    ).recipe
    assert deepspeed_config(recipe, device="cuda")["zero_force_ds_cpu_optimizer"] is True
    assert deepspeed_config(recipe, device="cpu")["zero_force_ds_cpu_optimizer"] is False
    assert wants_cpu_adam("nvme", "cuda") and not wants_cpu_adam("none", "cuda")


def test_the_trainer_builds_cpu_adam_with_the_recipes_settings_when_offloading_from_a_gpu():
    from deepspeed.ops.adam import DeepSpeedCPUAdam
    from transformers import TrainingArguments

    from ftl.launcher.train.trainer import FtlTrainer

    trainer = object.__new__(FtlTrainer)  # the choice only: building CPUAdam compiles DeepSpeed's C++ op
    args = TrainingArguments(output_dir="unused", learning_rate=3e-4, adam_beta2=0.95, adam_epsilon=1e-6)
    trainer.cpu_adam = True
    optimizer_cls, kwargs = trainer.get_optimizer_cls_and_kwargs(args)
    assert optimizer_cls is DeepSpeedCPUAdam
    assert kwargs == {"lr": 3e-4, "betas": (0.9, 0.95), "eps": 1e-6, "adamw_mode": True}
    trainer.cpu_adam = False
    assert trainer.get_optimizer_cls_and_kwargs(args)[0] is torch.optim.AdamW


# ---- 8. QLoRA's MFU against the peak of its compute dtype ------------------------------------------------
def test_a_4bit_model_is_measured_against_the_peak_of_its_compute_dtype():
    from transformers import BitsAndBytesConfig

    from ftl.launcher.bench.peak import compute_dtype, gpu_peak, matmul_dtype

    qlora = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16)
    dtype = matmul_dtype(compute_dtype("fp32", qlora), "cuda")
    assert dtype == "bf16" and gpu_peak("NVIDIA A100-SXM4-80GB", dtype).tflops == 312.0
    assert compute_dtype("fp32", BitsAndBytesConfig(load_in_8bit=True)) == "fp16"
    assert compute_dtype("bf16", None) == "bf16"


# ---- the GPU check does not rot ------------------------------------------------------------------------------
def test_every_recipe_of_the_gpu_check_validates():
    import subprocess
    import sys

    from tests.conftest import REPO

    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("ok ") >= 8 and "INVALID" not in done.stdout
