"""The peak FLOPs/s an MFU is measured against: a datasheet table for GPUs, a measured matmul probe on CPU.

GPU figures are dense (no 2:4 sparsity) tensor-core peaks in TFLOPS, from the vendors' datasheets: NVIDIA
A100 (SXM4 and PCIe, 40/80 GB), A30, A40, A10, H100 (SXM5, PCIe, NVL), H200 (SXM, NVL), L4, L40, L40S, T4,
V100/V100S; the Ampere GA102 and Ada AD102 whitepapers for the RTX 3090 and 4090 (FP32 accumulate); AMD
Instinct MI250X and MI300X datasheets (matrix cores). Datasheets quote sparsity figures with an asterisk:
the dense peak is half of those. fp32 is the plain CUDA-core rate unless PyTorch is allowed to use TF32 for
matmuls (`torch.backends.cuda.matmul.allow_tf32`), then the TF32 tensor-core rate. An unknown GPU has no
peak (MFU is left empty); `ftl bench --peak-tflops` gives one.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

# (pattern on torch.cuda.get_device_name(), name, dense TFLOPS per dtype). First match wins.
_A100 = {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}
_A10 = {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0, "fp16": 125.0}
_H100_SXM = {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5, "fp16": 989.5}
_NVL = {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5}
GPU_PEAKS: tuple[tuple[str, str, dict[str, float]], ...] = (
    (r"H100.*NVL", "NVIDIA H100 NVL", _NVL),
    (r"H100.*PCIe", "NVIDIA H100 PCIe", {"fp32": 51.0, "tf32": 378.0, "bf16": 756.5, "fp16": 756.5}),
    (r"H100", "NVIDIA H100 SXM", _H100_SXM),
    (r"H200.*NVL", "NVIDIA H200 NVL", _NVL),
    (r"H200", "NVIDIA H200 SXM", _H100_SXM),
    (r"A100", "NVIDIA A100", _A100),
    (r"\bA10G\b", "NVIDIA A10G (as the A10: same GA102 chip; NVIDIA publishes no A10G datasheet)", _A10),
    (r"\bA10\b", "NVIDIA A10", _A10),
    (r"\bA30\b", "NVIDIA A30", {"fp32": 10.3, "tf32": 82.0, "bf16": 165.0, "fp16": 165.0}),
    (r"\bA40\b", "NVIDIA A40", {"fp32": 37.4, "tf32": 74.8, "bf16": 149.7, "fp16": 149.7}),
    (r"\bL40S\b", "NVIDIA L40S", {"fp32": 91.6, "tf32": 183.0, "bf16": 362.05, "fp16": 362.05}),
    (r"\bL40\b", "NVIDIA L40", {"fp32": 90.5, "tf32": 90.5, "bf16": 181.05, "fp16": 181.05}),
    (r"\bL4\b", "NVIDIA L4", {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0}),
    (r"\bT4\b", "NVIDIA T4", {"fp32": 8.1, "fp16": 65.0}),
    (r"V100S", "NVIDIA V100S PCIe", {"fp32": 16.4, "fp16": 130.0}),
    (r"V100.*PCIE", "NVIDIA V100 PCIe", {"fp32": 14.0, "fp16": 112.0}),
    (r"V100", "NVIDIA V100 SXM2", {"fp32": 15.7, "fp16": 125.0}),
    (r"RTX 4090", "NVIDIA GeForce RTX 4090", {"fp32": 82.6, "tf32": 82.6, "bf16": 165.2, "fp16": 165.2}),
    (r"RTX 3090", "NVIDIA GeForce RTX 3090", {"fp32": 35.6, "tf32": 35.6, "bf16": 71.0, "fp16": 71.0}),
    (r"MI300X", "AMD Instinct MI300X", {"fp32": 163.4, "tf32": 653.7, "bf16": 1307.4, "fp16": 1307.4}),
    (r"MI250X", "AMD Instinct MI250X", {"fp32": 95.7, "bf16": 383.0, "fp16": 383.0}),
)


@dataclass(frozen=True)
class Peak:
    flops: float | None  # per device, FLOP/s; None: unknown
    dtype: str  # fp32 | tf32 | bf16 | fp16
    source: str  # where the number comes from, for the report

    @property
    def tflops(self) -> float | None:
        return None if self.flops is None else self.flops / 1e12


def matmul_dtype(precision: str, device: str, allow_tf32: bool = False) -> str:
    """The dtype whose peak applies: the recipe's precision, with fp32 matmuls on TF32 tensor cores if allowed."""
    if precision == "fp32" and device == "cuda" and allow_tf32:
        return "tf32"
    return precision


def compute_dtype(precision: str, quantization_config=None) -> str:
    """The dtype the matmuls run in: the run's precision, or for a bitsandbytes 4-bit model its compute dtype
    (QLoRA dequantizes to it: precision fp32 with bf16 compute runs at the bf16 peak). 8-bit weights multiply
    in fp16 (LLM.int8 casts activations to fp16)."""
    if quantization_config is None:
        return precision
    settings = quantization_config if isinstance(quantization_config, dict) else quantization_config.to_dict()
    if settings.get("load_in_4bit"):
        name = str(settings.get("bnb_4bit_compute_dtype") or "float32").removeprefix("torch.")
        return {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(name, precision)
    if settings.get("load_in_8bit"):
        return "fp16"
    return precision


def gpu_peak(device_name: str, dtype: str) -> Peak:
    """The datasheet peak of a GPU named like torch.cuda.get_device_name(), for one dtype."""
    for pattern, name, peaks in GPU_PEAKS:
        if re.search(pattern, device_name, re.IGNORECASE):
            if dtype not in peaks:
                return Peak(None, dtype, f"{name} has no {dtype} tensor-core peak in ftl's table")
            return Peak(peaks[dtype] * 1e12, dtype, f"{name} datasheet, {dtype} dense")
    return Peak(None, dtype, f"'{device_name}' is not in ftl's GPU table; give --peak-tflops")


def given_peak(tflops: float, dtype: str) -> Peak:
    return Peak(tflops * 1e12, dtype, "--peak-tflops")


def cpu_probe(dtype: str = "fp32", seconds: float = 3.0) -> Peak:
    """Measure this CPU's matmul peak: square GEMMs in `dtype` on one thread, best of many, times the cores.

    One thread, because on a shared machine a multi-threaded product runs at the pace of its busiest core,
    while a single thread finds a quiet core; the peak of the CPU is that rate times torch's thread count
    (its physical cores by default), as a datasheet peak is cores x per-core rate. The size grows until one
    product takes >= 40 ms (call overheads and small-matrix inefficiency do not count), then products are
    timed one by one for `seconds`; the best rate is the per-core peak.
    """
    import torch

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    cores = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        size = 256
        while True:
            a = torch.randn(size, size).to(torch_dtype)
            b = torch.randn(size, size).to(torch_dtype)
            out = torch.empty(size, size, dtype=torch_dtype)
            torch.mm(a, b, out=out)  # first call: allocation and kernel choice
            started = time.perf_counter()
            torch.mm(a, b, out=out)
            elapsed = time.perf_counter() - started
            if elapsed >= 0.04 or size >= 4096:
                break
            size *= 2
        best = 0.0
        deadline = time.perf_counter() + seconds
        while True:
            started = time.perf_counter()
            torch.mm(a, b, out=out)
            elapsed = time.perf_counter() - started
            best = max(best, 2 * size**3 / elapsed)
            if time.perf_counter() >= deadline:
                break
    finally:
        torch.set_num_threads(cores)
    return Peak(
        best * cores,
        dtype,
        f"measured: best single-thread {dtype} {size}x{size} matmul over {seconds:g}s, "
        f"{best / 1e9:.1f} GFLOPS x {cores} cores",
    )
