"""Which device and precision a run gets: the machine-dependent rules, checked before any work starts."""

from __future__ import annotations

import os
from dataclasses import dataclass

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
    return _checked(device, train.precision)


def _checked(device: str, precision: str) -> DevicePlan:
    import torch

    if precision == "fp16" and device != "cuda":
        raise FtlError(
            "train.precision: fp16 (with loss scaling) needs a CUDA GPU; this run is on CPU: use bf16 or fp32"
        )
    if precision == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
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
