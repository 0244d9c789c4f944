"""Discriminative learning rates and gradual unfreezing, as one schedule over layer groups.

Groups by depth from the top: depth 0 is the task head and everything outside the layer list and the
embeddings (pooler, final norm), depth 1 the top transformer layer, ..., depth N the bottom layer, depth N+1
the embeddings.

* `train.layer_lr_decay: d` gives a group at depth k the learning rate lr x d^k (ULMFiT, ELECTRA's layer-wise
  decay); the run's scheduler (warmup, linear, cosine) then scales every group alike.
* `freeze.gradual` starts with depth 0 trainable and adds one depth per interval (steps, or epochs counted
  in optimizer steps): depth k trains once k x interval optimizer steps are done.

How "not yet unfrozen" works, also under DeepSpeed ZeRO: every group is in the optimizer from the start and
a group that has not been unfrozen has a learning-rate multiplier of 0, so AdamW leaves its weights exactly
as they are (its decoupled weight decay is scaled by the learning rate too). Toggling `requires_grad`
instead would change which parameters ZeRO has flattened and partitioned into its buffers, and the optimizer
state would not exist for late-joining parameters. Frozen groups still get gradients, which keeps Adam's
moments current for the moment they join (a moment estimate that started at zero, with the global step's
bias correction, would make their first updates several times too large) at the cost of their backward
compute; gradient clipping counts them. Parameters that `freeze:` freezes statically are never trained.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftl.launcher.model.freeze import embedding_parameter_names, layer_pattern
from ftl.launcher.recipe.schema import Recipe


@dataclass(frozen=True)
class LayerGroup:
    depth: int
    name: str  # "head", "layer 5", "embeddings"
    lr_factor: float  # of train.lr, before the run's schedule
    unfreeze_every: float | None  # depth x this many steps/epochs; None: trains from the start
    unit: str  # "steps" | "epochs"

    def starts_at(self, steps_per_epoch: int) -> int:
        """How many optimizer steps are done before this group trains (0: it trains in the first step)."""
        if self.unfreeze_every is None:
            return 0
        interval = self.unfreeze_every * (steps_per_epoch if self.unit == "epochs" else 1)
        return round(self.depth * interval)


@dataclass(frozen=True)
class LayerSchedule:
    groups: list[LayerGroup]  # by depth
    depth_of: dict[str, int]  # trainable parameter name -> depth

    def group_of(self, name: str) -> LayerGroup:
        return self.groups[self.depth_of[name]]


def layer_schedule(model, recipe: Recipe) -> LayerSchedule | None:
    """The schedule of a recipe that asks for one (None otherwise); raises FtlError for a model without a layer
    list."""
    decay, gradual = recipe.train.layer_lr_decay, recipe.freeze.gradual
    if decay is None and gradual is None:
        return None
    from ftl.launcher.model.freeze import find_layers

    prefix, n_layers = find_layers(model)
    pattern = layer_pattern(prefix)
    embeddings = embedding_parameter_names(model)
    depth_of: dict[str, int] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        match = pattern.match(name)
        if match:
            depth_of[name] = n_layers - int(match.group(1))
        elif name in embeddings:
            depth_of[name] = n_layers + 1
        else:
            depth_of[name] = 0
    names = ["head", *(f"layer {n_layers - d}" for d in range(1, n_layers + 1)), "embeddings"]
    every = None if gradual is None else (gradual.every_steps or gradual.every_epochs)
    unit = "epochs" if gradual is not None and gradual.every_epochs is not None else "steps"
    groups = [
        LayerGroup(depth, names[depth], (decay or 1.0) ** depth, every, unit) for depth in range(n_layers + 2)
    ]
    return LayerSchedule(groups, depth_of)


def describe(schedule: LayerSchedule, used_depths: set[int] | None = None) -> list[tuple[str, str, str]]:
    """(group, lr factor, when it starts training) rows for `ftl plan` and the run log."""
    rows = []
    for group in schedule.groups:
        if used_depths is not None and group.depth not in used_depths:
            continue
        if group.unfreeze_every is None or group.depth == 0:
            start = "the start"
        else:
            amount = group.depth * group.unfreeze_every
            start = f"after {amount:g} {group.unit.rstrip('s') if amount == 1 else group.unit}"
        rows.append((group.name, f"{group.lr_factor:.4g}", start))
    return rows


def never_unfrozen(schedule: LayerSchedule, recipe: Recipe, used_depths: set[int]) -> list[str]:
    """Groups whose unfreezing comes after the run ends (by train.max_steps, or train.epochs for an interval
    in epochs), so they would never train."""
    gradual = recipe.freeze.gradual
    if gradual is None:
        return []
    train = recipe.train
    if gradual.every_steps is not None and train.max_steps is not None:
        end, length, unit = train.max_steps, f"train.max_steps {train.max_steps}", "steps"
    elif gradual.every_epochs is not None and train.max_steps is None:
        end, length, unit = train.epochs, f"train.epochs {train.epochs:g}", "epochs"
    else:
        return []  # steps against epochs: known only once the data is loaded
    late = [g.name for g in schedule.groups if g.depth in used_depths and g.depth * g.unfreeze_every >= end]
    if not late:
        return []
    every = gradual.every_steps or gradual.every_epochs
    return [
        f"{', '.join(late)} never train: the run ({length}) ends before their turn (one group every {every:g} {unit})"
    ]
