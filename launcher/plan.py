"""`ftl plan`: parameters, per-worker memory and FLOPs of a recipe, before anything runs.

Memory per worker, in bytes (method and sources in docs/memory-plan.md):

* model states, following DeepSpeed's own accounting (ZeRO paper, `estimate_zero{2,3}_model_states_mem_needs`):
  fp32 training keeps weights (4 B/param), gradients (4 B/trainable) and AdamW moments (8 B/trainable);
  mixed precision keeps 16-bit weights (2) and gradients (2) plus fp32 master weights (4), fp32 gradients (4)
  and moments (8). ZeRO-1 partitions optimizer states and master weights over the workers, ZeRO-2 also the
  gradients, ZeRO-3 also the weights (plus a gathered layer, 4 B x the largest layer). Offload moves the
  partitioned states to CPU memory. 4-bit weights take 0.5 B (+ quantization constants), 8-bit 1 B.
* activations kept for backward, per layer and micro batch (Korthikanti et al. 2022, counted in elements
  and multiplied by the activation dtype): s*b*(8h + 2i) for a GELU MLP, s*b*(8h + 4i) for a gated MLP, only
  for layers above the lowest trainable one; gradient checkpointing keeps s*b*h per layer plus one layer's
  full set. Plus the logits over the vocabulary (s*b*V, fp32): at the backward peak the logits, their
  log-softmax and both gradients exist together, 4 copies.

On a GPU (distributed.gpus_per_worker: 1, train.device: cuda, or `ftl plan --gpu-mem`) also what the
frameworks keep beside the model states: the CUDA context, NCCL's buffers, DeepSpeed's gradient buckets (their
defaults, or distributed.deepspeed's values), DDP's flat gradient buckets, autocast's 16-bit weight copies; and
the peak while the model loads (fp32 weights before DeepSpeed converts them; a partition under ZeRO-3, which
loads inside deepspeed.zero.Init).

FLOPs per optimizer step come from `launcher.flops`, the same counting `ftl bench` uses for MFU, with every
sequence `seq_len` (default task.max_length) tokens long.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ftl.launcher.errors import FtlError
from ftl.launcher.flops import FlopCounts, flop_counts, model_flops, trainable_flops, uniform_sequences
from ftl.launcher.model.freeze import find_layers, layer_pattern
from ftl.launcher.recipe.schema import Recipe
from ftl.launcher.train.batching import batch_plan

GIB = 1024**3
MIB = 1024**2
# What a GPU process holds beside the model (docs/memory-plan.md says where each figure comes from).
CUDA_CONTEXT_BYTES = 512 * MIB  # CUDA context, kernels (lazy loading) and the cuBLAS workspace
NCCL_CHANNELS = 16  # NCCL's usual channel count within an NVLink node (it picks 2-32)
NCCL_PROTOCOL_BYTES = (
    4 * MIB + 4.5 * MIB + 256 * 1024
)  # Simple (NCCL_BUFFSIZE) + LL128 + LL, per channel per peer
DEEPSPEED_BUCKETS = {  # zero_optimization key -> DeepSpeed's default, in elements
    "reduce_bucket_size": 500_000_000,
    "allgather_bucket_size": 500_000_000,
    "stage3_prefetch_bucket_size": 50_000_000,
}
_QUANT_BYTES = {4: 0.5, 8: 1.0}
_QUANT_CONSTANTS = {True: 0.127 / 8, False: 4 / 64}  # bytes/param of absmax constants (double quant or not)


@dataclass
class ModelShape:
    total: int  # parameters
    trainable: int
    layers: int
    hidden: int
    intermediate: int
    vocab: int
    gated_mlp: bool
    largest_layer: int  # parameters of the largest transformer layer
    quantizable: int  # parameters in linear layers that bitsandbytes would quantize
    lowest_trainable_layer: int  # index; layers below it keep no activations
    has_logits_over_vocab: bool
    flops: FlopCounts  # what the FLOP formulas need (launcher.flops)


@dataclass
class MemoryPlan:
    workers: int
    precision: str
    zero_stage: int | None
    parts: dict[str, float] = field(default_factory=dict)  # bytes per worker on the device
    offloaded: dict[str, float] = field(default_factory=dict)  # bytes per worker in CPU memory
    flops_per_step: float = 0.0
    flops_per_step_trainable: float = 0.0
    tokens_per_step: int = 0
    load_peak: float = 0.0  # bytes on the device while the model loads (before training starts)

    @property
    def device_total(self) -> float:
        """The device's peak: training, or loading when that is higher."""
        return max(sum(self.parts.values()), self.load_peak)


def shape_of(model, recipe: Recipe) -> ModelShape:
    """Measure a (meta-device) model: sizes, the layer list, and what is trainable."""
    import torch

    config = getattr(model, "config", None)
    if not hasattr(config, "hidden_size") and hasattr(model, "encoder"):  # a multi-task model: its encoder's
        config = model.encoder.config
    prefix, layers = find_layers(model)
    layer_re = layer_pattern(prefix)
    unique: dict[int, Any] = {}
    per_layer: dict[int, int] = {}
    lowest = layers
    for name, parameter in model.named_parameters():
        if id(parameter) in unique:
            continue
        unique[id(parameter)] = parameter
        match = layer_re.search(name)
        if match:
            index = int(match.group(1))
            per_layer[index] = per_layer.get(index, 0) + parameter.numel()
            if parameter.requires_grad:
                lowest = min(lowest, index)
    embeddings_trainable = any(p.requires_grad for p in model.get_input_embeddings().parameters())
    if embeddings_trainable:
        lowest = 0
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    quantizable = sum(
        module.weight.numel()
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not output and layer_re.search(name + ".")
    )
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    return ModelShape(
        total=sum(p.numel() for p in unique.values()),
        trainable=sum(p.numel() for p in unique.values() if p.requires_grad),
        layers=layers,
        hidden=hidden,
        intermediate=int(getattr(config, "intermediate_size", 4 * hidden) or 4 * hidden),
        vocab=int(getattr(config, "vocab_size", 0) or 0),
        gated_mlp=getattr(config, "hidden_act", "") in ("silu", "swiglu")
        or config.model_type in ("llama", "mistral", "qwen2", "gemma"),
        largest_layer=max(per_layer.values(), default=0),
        quantizable=quantizable,
        lowest_trainable_layer=lowest,
        has_logits_over_vocab=recipe.task.type in ("causal_lm", "preference"),
        flops=flop_counts(model),
    )


def on_gpu(recipe: Recipe) -> bool:
    return recipe.distributed.gpus_per_worker >= 1 or recipe.train.device == "cuda"


def plan_memory(
    shape: ModelShape, recipe: Recipe, *, seq_len: int | None = None, gpu: bool | None = None
) -> MemoryPlan:
    """Per-worker memory of weights, gradients, optimizer states and activations, and on a GPU (`gpu`, default:
    the recipe asks for one) what CUDA, NCCL, DeepSpeed and DDP add; FLOPs per optimizer step."""
    distributed, train = recipe.distributed, recipe.train
    batches = batch_plan(recipe)
    workers = batches.workers
    stage = distributed.zero_stage
    mixed = train.precision in ("bf16", "fp16") and stage is not None  # DeepSpeed keeps 16-bit weights
    p, t = shape.total, shape.trainable
    plan = MemoryPlan(workers, train.precision, stage)

    def share(level: int) -> int:
        return workers if stage is not None and stage >= level else 1

    weight_bytes = 2.0 if mixed else 4.0
    layer_bytes = 4.0  # per parameter of the layer ZeRO-3 gathers (DeepSpeed's estimator counts 4 B)
    if recipe.quantization is not None:
        q = recipe.quantization
        per_param = _QUANT_BYTES[q.bits] + (_QUANT_CONSTANTS[q.double_quant] if q.bits == 4 else 4 / 4096)
        weights = shape.quantizable * per_param + (p - shape.quantizable) * weight_bytes
        layer_bytes = per_param  # a quantized layer is gathered as its 4-bit storage
    else:
        weights = p * weight_bytes
    parts = {"weights": weights / share(3)}
    if reference_is_a_copy(recipe):  # preference tuning: a frozen copy of the starting model beside it, made
        parts["reference model"] = p * 4.0  # from the fp32 weights as loaded, before DeepSpeed casts any
    if stage == 3:
        parts["gathered layer"] = layer_bytes * shape.largest_layer
    gradients = t * (2.0 if mixed else 4.0) / share(2)
    optimizer = t * (8.0 + (8.0 if mixed else 0.0)) / share(1)  # moments (+ fp32 master weights and grads)
    parts["gradients"] = gradients
    offloaded: dict[str, float] = {}
    if distributed.offload_optimizer != "none":
        offloaded["optimizer states"] = optimizer
    else:
        parts["optimizer states"] = optimizer
    if distributed.offload_params != "none":
        offloaded["weights"] = parts.pop("weights")
    parts["activations"] = _activations(shape, recipe, seq_len)
    if on_gpu(recipe) if gpu is None else gpu:
        parts.update(_gpu_overheads(shape, recipe, workers, mixed))
        plan.load_peak = _load_peak(shape, recipe, workers) + CUDA_CONTEXT_BYTES
    plan.parts, plan.offloaded = parts, offloaded

    tokens, squares = uniform_sequences(batches.global_batch, seq_len or recipe.task.max_length)
    plan.tokens_per_step = int(tokens)
    plan.flops_per_step = model_flops(shape.flops, tokens, squares)
    plan.flops_per_step_trainable = trainable_flops(shape.flops, tokens, squares)
    return plan


def _gpu_overheads(shape: ModelShape, recipe: Recipe, workers: int, mixed: bool) -> dict[str, float]:
    distributed, train = recipe.distributed, recipe.train
    stage = distributed.zero_stage
    parts = {"CUDA context": float(CUDA_CONTEXT_BYTES)}
    if workers > 1:  # a ring (and tree) neighbour on each side, per channel
        parts["NCCL buffers"] = 2 * NCCL_CHANNELS * NCCL_PROTOCOL_BYTES
    grad_bytes = 2.0 if mixed else 4.0
    if stage is not None and stage >= 1 and workers > 1:
        zero = {**DEEPSPEED_BUCKETS, **distributed.deepspeed.get("zero_optimization", {})}
        buckets = min(zero["reduce_bucket_size"], shape.trainable) * grad_bytes
        if stage == 3:
            buckets += min(zero["stage3_prefetch_bucket_size"], shape.total) * grad_bytes
        else:
            buckets += min(zero["allgather_bucket_size"], shape.trainable) * grad_bytes
        parts["DeepSpeed buckets"] = buckets
    elif stage is None and workers > 1:  # DDP keeps a flat copy of every gradient in its buckets
        parts["DDP gradient buckets"] = shape.trainable * 4.0
    if stage is None and train.precision in ("bf16", "fp16"):  # torch.autocast caches 16-bit weight copies
        parts["autocast weight copies"] = shape.quantizable * 2.0
    return parts


def _load_peak(shape: ModelShape, recipe: Recipe, workers: int) -> float:
    """ftl loads weights in fp32; DeepSpeed moves them to the GPU before converting to 16 bits. Under ZeRO-3
    transformers loads inside deepspeed.zero.Init: a partition plus one gathered layer per rank."""
    if recipe.quantization is not None:
        q = recipe.quantization
        per_param = _QUANT_BYTES[q.bits] + (_QUANT_CONSTANTS[q.double_quant] if q.bits == 4 else 4 / 4096)
        return shape.quantizable * per_param + (shape.total - shape.quantizable) * 4.0
    if recipe.distributed.zero_stage == 3:
        return shape.total * 4.0 / workers + 4.0 * shape.largest_layer
    return shape.total * 4.0


def reference_is_a_copy(recipe: Recipe) -> bool:
    """A preference recipe whose reference model is a frozen copy held in memory (task.reference copy, or auto
    without lora); adapters disabled, precomputed log-probs and reference-free losses hold none."""
    task = recipe.task
    if task.type != "preference" or task.reference_free:
        return False
    return task.reference == "copy" or (task.reference == "auto" and recipe.lora is None)


def _activations(shape: ModelShape, recipe: Recipe, seq_len: int | None) -> float:
    train = recipe.train
    # a preference batch of B pairs is 2B sequences (chosen and rejected in one forward)
    batch = train.batch_size * (2 if recipe.task.type == "preference" else 1)
    seq = seq_len or recipe.task.max_length
    element = 2.0 if train.precision in ("bf16", "fp16") else 4.0
    h, i = shape.hidden, shape.intermediate
    per_layer = seq * batch * (8 * h + (4 if shape.gated_mlp else 2) * i)
    stored_layers = shape.layers - shape.lowest_trainable_layer if recipe.lora is None else shape.layers
    if train.gradient_checkpointing:
        kept = seq * batch * h * stored_layers + per_layer
    else:
        kept = per_layer * stored_layers
    # fp32 logits, their log-softmax kept for backward, and both gradients during backward: 4 copies at the peak
    logits = 4 * seq * batch * shape.vocab * 4.0 if shape.has_logits_over_vocab else 0.0
    return kept * element + logits


def human_bytes(value: float) -> str:
    for unit, size in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if value >= size:
            return f"{value / size:.2f} {unit}"
    return f"{value:.0f} B"


def parse_memory(text: str) -> float:
    """'80GB', '80 GiB', '24G', '512MB' -> bytes (GB is read as GiB, as GPU vendors quote it)."""
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT])(i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise FtlError(f"--gpu-mem: '{text}' is not a size like 80GB, 24GiB or 512MB")
    scale = {"K": 1024, "M": 1024**2, "G": GIB, "T": 1024**4}[match.group(2).upper()]
    if float(match.group(1)) == 0:
        raise FtlError(f"--gpu-mem: '{text}' is no memory at all; give the device's size, like 80GB")
    return float(match.group(1)) * scale
