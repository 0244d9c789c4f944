"""The model as a recipe would train it, built on the meta device (shapes only) for `ftl check` and `ftl plan`."""

from __future__ import annotations

from typing import Protocol

from ftl.launcher.model.adapters import add_lora
from ftl.launcher.model.freeze import apply_freezing
from ftl.launcher.model.load import LoadedModel, ModelSpec
from ftl.launcher.recipe.schema import FreezeSection


class ModelBuilder(Protocol):
    """A task builds its model (a multitask model differs from the plain one) and names its adapter kind."""

    peft_task_type: str

    def build_model(self, spec: ModelSpec, tokenizer, base_dir, *, meta: bool = False) -> LoadedModel: ...


def meta_model(spec: ModelSpec, freeze: FreezeSection, builder: ModelBuilder, tokenizer) -> LoadedModel:
    """No weights are read; freezing or LoRA adapters are applied as in a run (quantization only as shapes:
    bitsandbytes cannot quantize meta tensors)."""
    built = builder.build_model(spec, tokenizer, None, meta=True)  # shapes only: no adapters yet
    if spec.lora is None:
        apply_freezing(built.model, freeze, built.head_names)
        return built
    model = add_lora(
        built.model, spec.lora, builder.peft_task_type, quantized=False, gradient_checkpointing=False
    )
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    return LoadedModel(model, built.location, trainable)
