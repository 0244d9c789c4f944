"""Recipe sections for scaling out and slimming down: `distributed`, `quantization`, `lora`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from ftl.launcher.recipe.section import GLOBAL_BATCH_MAX, WORKERS_MAX_RAY, Section


class DistributedSection(Section):
    """Many workers through Ray Train, DeepSpeed ZeRO inside each. workers: 1 and no zero_stage = one process."""

    workers: int = Field(
        1,
        ge=1,
        le=WORKERS_MAX_RAY,
        description="Training processes (Ray Train workers); 1 runs in this process.",
    )
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs Ray reserves for each worker.")
    gpus_per_worker: float = Field(
        0.0,
        ge=0,
        description="GPUs per worker: 0 trains on CPU (gloo), 1 on one GPU each (NCCL); more GPUs come from "
        "more workers.",
    )
    zero_stage: Literal[0, 1, 2, 3] | None = Field(
        None,
        description="DeepSpeed ZeRO stage: 0 data parallel, 1 shards optimizer states, 2 also gradients, 3 also "
        "parameters. null: no DeepSpeed (plain DDP when workers > 1).",
    )
    offload_optimizer: Literal["none", "cpu", "nvme"] = Field(
        "none", description="Keep optimizer states (and the update) on CPU or NVMe (ZeRO 1-3)."
    )
    offload_params: Literal["none", "cpu", "nvme"] = Field(
        "none", description="Keep parameters on CPU or NVMe (ZeRO 3)."
    )
    nvme_path: str | None = Field(None, description="Directory on a fast local disk for NVMe offload.")
    global_batch_size: int | None = Field(
        None,
        gt=0,
        le=GLOBAL_BATCH_MAX,
        description="Examples per optimizer step over all workers. When set, train.grad_accum_steps is derived: "
        "global = batch_size x grad_accum_steps x workers.",
    )
    deepspeed: dict[str, Any] = Field(
        default_factory=dict,
        description="Expert DeepSpeed keys added to the generated config (validated by DeepSpeed; keys ftl "
        "derives from the recipe cannot be set here).",
    )
    address: str | None = Field(
        None,
        description="Ray cluster to join (ray://host:10001 or host:6379); default: start a local Ray on 127.0.0.1.",
    )
    storage_path: str | None = Field(
        None,
        description="Where checkpoints of a multi-worker run go: a directory every node can reach, or a URI Ray "
        "storage accepts (s3://, gs://). Default: <run>/checkpoints.",
    )
    max_failures: int = Field(
        0,
        ge=-1,
        description="Restart the workers from the last checkpoint up to this many times (-1: forever).",
    )
    min_workers: int | None = Field(
        None,
        ge=1,
        le=WORKERS_MAX_RAY,
        description="Elastic training: keep going with as few as this many workers when nodes are lost (workers "
        "is the most), and grow back when they return. Each resize restarts from the last checkpoint, re-sharded "
        "for the new number of workers, with the same global batch (needs global_batch_size and max_failures).",
    )
    resize_check_s: float = Field(
        60.0,
        gt=0,
        description="Elastic training: how often Ray looks for returned resources to grow the workers back.",
    )

    @property
    def elastic(self) -> bool:
        return self.min_workers is not None and self.min_workers < self.workers

    @property
    def uses_deepspeed(self) -> bool:
        return self.zero_stage is not None

    @property
    def needs_workers(self) -> bool:
        """The run goes through Ray Train workers (DeepSpeed runs there too, even with one worker)."""
        return self.uses_ray or self.uses_deepspeed

    @property
    def uses_ray(self) -> bool:
        """Several workers, a cluster, or worker resources asked for: the run goes through Ray Train."""
        return self.workers > 1 or self.address is not None or self.gpus_per_worker > 0


class QuantizationSection(Section):
    """Load the frozen base weights in 4 or 8 bits with bitsandbytes (QLoRA needs `lora:` too)."""

    bits: Literal[4, 8] = Field(4, description="4-bit (NF4/FP4) or 8-bit (LLM.int8) weights.")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type.")
    double_quant: bool = Field(
        True, description="Quantize the 4-bit quantization constants too (saves ~0.4 bit/param)."
    )
    compute_dtype: Literal["fp32", "bf16", "fp16"] = Field(
        "bf16", description="Dtype of the matmuls on dequantized weights."
    )
    skip_modules: list[str] = Field(
        default_factory=list, description="Modules kept in full precision (e.g. the head)."
    )


class LoraSection(Section):
    """Low-rank adapters (peft): train small matrices beside frozen weights."""

    r: int = Field(8, gt=0, description="Rank of the adapter matrices.")
    alpha: float = Field(16, gt=0, description="Scaling numerator: updates are scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear",
        description="Module names (or suffixes) that get adapters; 'all-linear' for every linear layer.",
    )
    layers_to_transform: list[Annotated[int, Field(ge=0)]] | None = Field(
        None,
        min_length=1,
        description="Only these transformer layers (0 = the bottom) get adapters, as peft's layers_to_transform: "
        "e.g. the top 8 of 30, [22, 23, 24, 25, 26, 27, 28, 29]; null: every layer. With all-linear, every linear "
        "module of those layers.",
    )
    modules_to_save: list[str] = Field(
        default_factory=list,
        description="Modules trained in full beside the adapters (e.g. a new classifier head).",
    )
    bias: Literal["none", "all", "lora_only"] = "none"
