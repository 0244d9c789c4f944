"""The model as a recipe would train it, built on the meta device (shapes only) for `ftl check` and `ftl plan`."""

from __future__ import annotations

from ftl.launcher.model.freeze import apply_freezing
from ftl.launcher.model.load import LoadedModel
from ftl.launcher.recipe.loader import LoadedRecipe
from ftl.launcher.tasks.base import Task


def meta_model(loaded: LoadedRecipe, task: Task, tokenizer) -> LoadedModel:
    """No weights are read; freezing or LoRA adapters are applied as in a run (quantization only as shapes)."""
    built = task.build_model(loaded, tokenizer, None, meta=True)
    recipe = loaded.recipe
    if recipe.lora is None:
        apply_freezing(built.model, recipe.freeze, built.head_names)
        return built
    from ftl.launcher.model.adapters import add_lora

    plain = recipe.model_copy(update={"quantization": None})  # bitsandbytes cannot quantize meta tensors
    model = add_lora(built.model, plain, task.peft_task_type, gradient_checkpointing=False)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    return LoadedModel(model, built.location, trainable)
