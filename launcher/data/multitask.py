"""Batches for several tasks on one encoder: task-homogeneous batches drawn by a sampling rule.

Sampling: before each optimizer step the task is drawn with probability proportional to its training rows
(`proportional`), to rows^(1/T) (`temperature`, which gives small tasks more turns), or equally (`uniform`).
Every worker draws the same task at the same step (one seeded generator per run), so distributed workers
always run the same head together (DDP and DeepSpeed need every worker to use the same parameters), and each
takes its own slice of that task's global batch. An epoch is as many steps as the rows of all tasks fill.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


class MultiTaskDataset(torch.utils.data.Dataset):
    """The tasks' tokenised splits, one after the other; every row carries its task_id."""

    def __init__(self, splits: list[Any]) -> None:
        self.splits = splits
        self.offsets = np.cumsum([0, *[len(s) for s in splits]])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> dict[str, Any]:
        task = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return {**self.splits[task][int(index - self.offsets[task])], "task_id": task}


class TaskBatchSampler(torch.utils.data.Sampler):
    """Batches of one task each: this worker's slice of a global batch of the drawn task."""

    def __init__(
        self,
        sizes: list[int],
        batch_size: int,
        probabilities: list[float],
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.sizes, self.batch_size = sizes, batch_size
        self.probabilities = np.asarray(probabilities, dtype=np.float64)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.offsets = np.cumsum([0, *sizes])
        self.epoch = 0

    def __len__(self) -> int:
        return max(1, math.ceil(sum(self.sizes) / (self.batch_size * self.world_size)))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        orders = [rng.permutation(size) for size in self.sizes]
        cursors = [0] * len(self.sizes)
        global_batch = self.batch_size * self.world_size
        for _ in range(len(self)):
            task = int(rng.choice(len(self.sizes), p=self.probabilities))
            rows = []
            for _ in range(global_batch):  # walk this task's permutation, reshuffling when it runs out
                if cursors[task] == self.sizes[task]:
                    orders[task], cursors[task] = rng.permutation(self.sizes[task]), 0
                rows.append(int(orders[task][cursors[task]]))
                cursors[task] += 1
            mine = rows[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
            yield [int(self.offsets[task]) + row for row in mine]
        self.epoch += 1


def task_probabilities(sizes: list[int], sampling: str, temperature: float) -> list[float]:
    weights = np.asarray(sizes, dtype=np.float64)
    if sampling == "uniform":
        weights = np.ones_like(weights)
    elif sampling == "temperature":
        weights = weights ** (1.0 / temperature)
    return (weights / weights.sum()).tolist()


class EpochDataLoader(torch.utils.data.DataLoader):
    """A DataLoader whose epoch the Trainer can set (it reshuffles the tasks' rows and draws per epoch)."""

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)


class MultiTaskCollator:
    """Pads a batch with its task's own collator and adds the task_id the model picks its head by;
    `collators` maps each task_id to its collator (a list in task order, or a mapping)."""

    def __init__(self, collators: list[Any] | dict[int, Any]) -> None:
        self.collators = collators

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        task = features[0]["task_id"]
        batch = self.collators[task]([{k: v for k, v in f.items() if k != "task_id"} for f in features])
        batch["task_id"] = torch.full((len(features),), task, dtype=torch.long)
        return batch


class TaskView(torch.utils.data.Dataset):
    """One task's evaluation split, its rows tagged with the task's id."""

    def __init__(self, split, task_id: int) -> None:
        self.split, self.task_id = split, task_id

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.split[index], "task_id": self.task_id}
