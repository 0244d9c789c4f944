"""Which device and precision a run gets: the machine-dependent rules, checked before any work starts."""

from __future__ import annotations

from dataclasses import dataclass

from launcher.errors import FtlError
from launcher.recipe.schema import TrainSection


@dataclass(frozen=True)
class DevicePlan:
    device: str  # "cpu" | "cuda"
    precision: str  # "fp32" | "bf16" | "fp16"
    name: str  # human-readable, e.g. "cpu (2 threads)" or "NVIDIA A100 (1 of 8)"

    @property
    def use_cpu(self) -> bool:
        return self.device == "cpu"


def plan_device(train: TrainSection) -> DevicePlan:
    import torch

    cuda = torch.cuda.is_available()
    if train.device == "cuda" and not cuda:
        raise FtlError("train.device: cuda was asked for but no CUDA GPU is visible; use device: auto or cpu")
    device = "cuda" if (train.device == "cuda" or (train.device == "auto" and cuda)) else "cpu"
    precision = train.precision
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
    return DevicePlan(device, precision, name)
