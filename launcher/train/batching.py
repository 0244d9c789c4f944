"""Batch sizes, derived in one place: global = micro batch x accumulation steps x workers."""

from __future__ import annotations

from dataclasses import dataclass

from ftl.launcher.recipe.schema import Recipe


@dataclass(frozen=True)
class BatchPlan:
    micro: int  # examples per forward pass per worker (train.batch_size)
    accumulation: int  # micro batches per optimizer step
    workers: int

    @property
    def global_batch(self) -> int:
        return self.micro * self.accumulation * self.workers


def batch_plan(recipe: Recipe) -> BatchPlan:
    """The recipe's batch sizes; `distributed.global_batch_size` (checked by the rules) fixes accumulation."""
    train, distributed = recipe.train, recipe.distributed
    accumulation = train.grad_accum_steps
    if distributed.global_batch_size is not None:
        accumulation = distributed.global_batch_size // (train.batch_size * distributed.workers)
    return BatchPlan(train.batch_size, accumulation, distributed.workers)
