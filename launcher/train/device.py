"""Which device and precision a run gets: the machine-dependent rules, checked before any work starts."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ftl.launcher.console import log
from ftl.launcher.errors import FtlError
from ftl.launcher.recipe.scaling import DistributedSection
from ftl.launcher.recipe.schema import TrainSection


@dataclass(frozen=True)
class DevicePlan:
    device: str  # "cpu" | "cuda"
    precision: str  # "fp32" | "bf16" | "fp16"
    name: str  # human-readable, e.g. "cpu (2 threads)" or "NVIDIA A100 (1 of 8)"

    @property
    def use_cpu(self) -> bool:
        return self.device == "cpu"


def plan_device(train: TrainSection, distributed: DistributedSection | None = None) -> DevicePlan:
    """The device of this process. Ray Train workers follow distributed.gpus_per_worker (0: CPU and gloo)."""
    import torch

    cuda = torch.cuda.is_available()
    if distributed is not None and distributed.needs_workers:
        if train.device == "cuda" and distributed.gpus_per_worker == 0:
            raise FtlError("train.device: cuda with Ray workers needs distributed.gpus_per_worker >= 1")
        if train.device == "cpu" and distributed.gpus_per_worker > 0:
            raise FtlError("train.device: cpu contradicts distributed.gpus_per_worker > 0; set one of them")
        wants_gpu = distributed.gpus_per_worker > 0
        if wants_gpu and not cuda:
            raise FtlError(
                "distributed.gpus_per_worker: this process sees no CUDA GPU; use gpus_per_worker: 0 to train on CPU"
            )
        device = "cuda" if wants_gpu else "cpu"
        return _checked(device, train.precision)
    if train.device == "cuda" and not cuda:
        raise FtlError("train.device: cuda was asked for but no CUDA GPU is visible; use device: auto or cpu")
    device = "cuda" if (train.device == "cuda" or (train.device == "auto" and cuda)) else "cpu"
    if device == "cuda":
        pin_to_one_gpu()
    return _checked(device, train.precision)


def pin_to_one_gpu() -> None:
    """A single process trains on one GPU. With several visible, HF's Trainer would wrap the model in
    nn.DataParallel: an N-times batch on one process, QLoRA's weights all on GPU 0, step counts and MFU off by N.
    Several GPUs are used through Ray Train workers (distributed.workers, gpus_per_worker: 1)."""
    import torch

    count = torch.cuda.device_count()
    if count <= 1:
        return
    if torch.cuda.is_initialized():  # too late to hide the others from this process: refuse rather than guess
        raise FtlError(
            f"{count} GPUs are visible to a single-process run that has already started CUDA; set "
            "CUDA_VISIBLE_DEVICES to one GPU, or use them all with distributed.workers="
            f"{count} distributed.gpus_per_worker=1"
        )
    first = first_visible_gpu(os.environ.get("CUDA_VISIBLE_DEVICES"))
    os.environ["CUDA_VISIBLE_DEVICES"] = first
    log(
        f"{count} GPUs are visible; this single-process run uses one (GPU {first}). To train on all of them: "
        f"distributed.workers={count} distributed.gpus_per_worker=1"
    )


def first_visible_gpu(visible: str | None) -> str:
    """The first entry of CUDA_VISIBLE_DEVICES (an index or a GPU UUID), or '0' when it is not set."""
    entries = [entry.strip() for entry in (visible or "").split(",") if entry.strip()]
    return entries[0] if entries else "0"


def _checked(device: str, precision: str) -> DevicePlan:
    import torch

    if precision == "fp16" and device != "cuda":
        raise FtlError(
            "train.precision: fp16 (with loss scaling) needs a CUDA GPU; this run is on CPU: use bf16 or fp32"
        )
    # without the emulation that makes V100 and T4 say yes: bf16 matmuls need Ampere or newer
    if (
        precision == "bf16"
        and device == "cuda"
        and not torch.cuda.is_bf16_supported(including_emulation=False)
    ):
        raise FtlError(
            f"train.precision: bf16 is not supported by {torch.cuda.get_device_name(0)} (needs Ampere or newer); "
            "use fp16 or fp32"
        )
    if device == "cuda":
        name = f"{torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} visible)"
    else:
        name = f"cpu ({torch.get_num_threads()} threads)"
        # DeepSpeed (imported by the Trainer) then picks its CPU accelerator without guessing aloud
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return DevicePlan(device, precision, name)
