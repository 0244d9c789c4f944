"""`ftl plan` as a command: build the model on the meta device, estimate, print a table."""

from __future__ import annotations

from rich.table import Table

from ftl.launcher.console import console, log
from ftl.launcher.data.sources import load_source
from ftl.launcher.model.load import ModelSpec, load_tokenizer, quiet_transformers
from ftl.launcher.model.meta import meta_model
from ftl.launcher.plan import MemoryPlan, human_bytes, plan_memory, shape_of
from ftl.launcher.recipe.loader import LoadedRecipe
from ftl.launcher.tasks.registry import task_for
from ftl.launcher.train.layer_schedule import layer_schedule, never_unfrozen
from ftl.launcher.train.tables import human, schedule_table


def plan_recipe(
    loaded: LoadedRecipe, *, gpu_mem: float | None = None, seq_len: int | None = None
) -> MemoryPlan:
    """The plan of a recipe, or of each stage of a staged recipe in turn (the last is returned)."""
    if not loaded.stages:
        return _plan_one(loaded, gpu_mem=gpu_mem, seq_len=seq_len)
    plan = None
    for stage in loaded.stages:
        log(f"[bold]stage {stage.stage.name}[/] ({stage.loaded.recipe.task.type})")
        plan = _plan_one(stage.loaded, gpu_mem=gpu_mem, seq_len=seq_len)
    return plan


def _plan_one(loaded: LoadedRecipe, *, gpu_mem: float | None, seq_len: int | None) -> MemoryPlan:
    recipe = loaded.recipe
    quiet_transformers(recipe.log.level)
    task = task_for(recipe.task)
    if task.label_names() is None and recipe.task.type == "sequence_classification":
        task.fit(load_source(recipe.data.train, loaded.search_dirs, "data.train"))
    tokenizer = load_tokenizer(recipe.model, loaded.search_dirs)
    model = meta_model(ModelSpec.of(recipe, loaded.search_dirs), recipe.freeze, task, tokenizer).model
    shape = shape_of(model, recipe)
    plan = plan_memory(shape, recipe, seq_len=seq_len, gpu=True if gpu_mem is not None else None)
    console.print(_table(plan, shape_total=shape.total, trainable=shape.trainable, gpu_mem=gpu_mem))
    log(
        f"FLOPs per optimizer step: {plan.flops_per_step:.3e} (6N + attention over {plan.tokens_per_step:,} tokens, "
        f"N = {human(shape.flops.dense)} parameters multiplied per token); trainable-aware "
        f"{plan.flops_per_step_trainable:.3e} ({shape.flops.trainable_dense_per_token / max(shape.flops.dense, 1):.2f}N "
        "+ attention; the same counting as ftl bench's MFU)"
    )
    schedule = layer_schedule(model, recipe)
    if schedule is not None:  # discriminative learning rates and gradual unfreezing
        used = set(schedule.depth_of.values())
        console.print(schedule_table(schedule, used))
        for warning in never_unfrozen(schedule, recipe, used):
            log(f"[bold yellow]warning[/]: {warning} (freeze.gradual)")
    if gpu_mem is not None and plan.device_total > gpu_mem:
        log(
            f"[bold yellow]warning[/]: {human_bytes(plan.device_total)} per worker exceeds --gpu-mem "
            f"{human_bytes(gpu_mem)}; try a higher zero_stage, offload, gradient_checkpointing, a smaller batch_size, "
            "or quantization + lora"
        )
    return plan


def _table(plan: MemoryPlan, *, shape_total: int, trainable: int, gpu_mem: float | None) -> Table:
    zero = f"ZeRO-{plan.zero_stage}" if plan.zero_stage is not None else "no ZeRO"
    title = (
        f"{human(shape_total)} parameters, {human(trainable)} trainable ({100 * trainable / max(shape_total, 1):.1f}%); "
        f"{plan.workers} worker(s), {zero}, {plan.precision}"
    )
    table = Table(title=title, title_justify="left", show_edge=False)
    table.add_column("per worker")
    table.add_column("device", justify="right")
    table.add_column("CPU (offload)", justify="right")
    names = list(dict.fromkeys([*plan.parts, *plan.offloaded]))
    for name in names:
        device = plan.parts.get(name)
        cpu = plan.offloaded.get(name)
        table.add_row(name, human_bytes(device) if device else "-", human_bytes(cpu) if cpu else "-")
    table.add_section()
    training = sum(plan.parts.values())
    offloaded = sum(plan.offloaded.values())
    table.add_row("training total", human_bytes(training), human_bytes(offloaded) if offloaded else "-")
    if plan.load_peak:
        table.add_row("peak while loading", human_bytes(plan.load_peak), "-")
    if gpu_mem is not None:
        table.add_row("headroom on --gpu-mem", headroom(plan.device_total, gpu_mem), "-")
    return table


def headroom(peak: float, gpu_mem: float) -> str:
    """'12.30 GiB (15.4 %)' left at the peak, or 'short by 3.20 GiB: exceeds --gpu-mem'."""
    left = gpu_mem - peak
    if left >= 0:
        return f"{human_bytes(left)} ({100 * left / gpu_mem:.1f} %)"
    return f"[red]short by {human_bytes(-left)}: exceeds --gpu-mem[/]"
