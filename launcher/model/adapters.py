"""Quantized loading (bitsandbytes 4/8-bit) and LoRA adapters (peft). Saving and reloading what a run
trained (an adapter and the record of its base model) is `saved.py`."""

from __future__ import annotations

from ftl.launcher.errors import FtlError, first_line
from ftl.launcher.model.freeze import layers_or_none
from ftl.launcher.recipe.scaling import LoraSection, QuantizationSection

_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def bitsandbytes_config(
    q: QuantizationSection | None, keep: list[str] | None = None, *, sharded: bool = False
):
    """The BitsAndBytesConfig of `quantization:` (None without it); `keep`: modules left unquantized besides
    quantization.skip_modules (the task's head). `sharded` (ZeRO-3): the packed 4-bit weights are stored in the
    compute dtype (bnb_4bit_quant_storage, as PEFT's DeepSpeed guide does), so every parameter has one dtype and
    DeepSpeed partitions the 4-bit storage like any other tensor."""
    if q is None:
        return None
    import torch
    from transformers import BitsAndBytesConfig

    skip = list(dict.fromkeys([*q.skip_modules, *(keep or [])])) or None
    if q.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, _DTYPES[q.compute_dtype]),
        llm_int8_skip_modules=skip,
        **({"bnb_4bit_quant_storage": getattr(torch, _DTYPES[q.compute_dtype])} if sharded else {}),
    )


def layer_linear_names(model, layer_list: str) -> list[str]:
    """The names (last parts) of the linear modules inside the layer list named `layer_list` (as
    freeze.layers_or_none finds it): all-linear restricted to the layers, which leaves out the output head as
    peft's all-linear does."""
    import torch

    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name.startswith(layer_list + ".")
        }
    )


def load_dtype(q: QuantizationSection | None, *, sharded: bool):
    """The dtype ftl loads weights in: fp32, except a model quantized for ZeRO-3, whose unquantized weights take
    the 4-bit storage's dtype (DeepSpeed partitions one dtype)."""
    import torch

    return getattr(torch, _DTYPES[q.compute_dtype]) if q is not None and sharded else torch.float32


def add_lora(
    model,
    lora: LoraSection,
    peft_task_type: str,
    *,
    quantized: bool,
    gradient_checkpointing: bool,
    sharded: bool = False,
):
    """Wrap the model with LoRA adapters (after preparing a quantized model for k-bit training). Sharded (ZeRO-3):
    peft's preparation would upcast the unquantized weights to fp32 beside the 16-bit 4-bit storage, which
    DeepSpeed cannot partition together; the weights stay in one dtype and DeepSpeed keeps fp32 master copies of
    what trains (the adapters)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized and sharded:
        for parameter in model.parameters():
            parameter.requires_grad = False
        for module in model.modules():
            # bitsandbytes repacks 4-bit weights for its CPU inference kernel (AVX512-BF16) at the first
            # evaluation and cannot unpack them to save a checkpoint unless they are stored as uint8.
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
        if gradient_checkpointing:
            model.enable_input_require_grads()
    elif quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    layers, target, pattern = lora.layers_to_transform, lora.target_modules, None
    if layers is not None:  # the layer list as freezing finds it; peft is told its name
        found = layers_or_none(model)
        if found is None:
            raise FtlError(
                f"lora.layers_to_transform: cannot find the transformer layers of {type(model).__name__}; name "
                "the layers' modules in lora.target_modules instead"
            )
        layer_list, count = found
        if max(layers) >= count:
            raise FtlError(
                f"lora.layers_to_transform: layer {max(layers)} is not in this model, whose {count} layers are "
                f"0-{count - 1}"
            )
        pattern = layer_list.rsplit(".", 1)[-1]
        if target == "all-linear":  # peft takes layers_to_transform with a list of names only
            target = layer_linear_names(model, layer_list)
    config = LoraConfig(
        task_type=peft_task_type,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=target,
        layers_to_transform=layers,
        layers_pattern=pattern,
        modules_to_save=lora.modules_to_save or None,
        bias=lora.bias,
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        reason = first_line(exc)
        names = sorted({name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name})
        raise FtlError(
            f"lora.target_modules: {reason}; module names in this model include: {', '.join(names[:15])}"
        ) from None
