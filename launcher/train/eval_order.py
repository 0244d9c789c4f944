"""Evaluation batches of similar length, results in row order.

Evaluation pads each batch to its longest row. Read in file order, a batch of 64 SQuAD windows is padded to
~1.5x its tokens (a third of the compute is padding); sorted longest first, it is padded by ~3 %. So a single
process evaluates its rows longest first and puts every prediction back at its row's place before metrics are
computed: metrics, prediction files and `Trainer.predict` see the rows in dataset order, as before.

What changes: the evaluation loss is HF's mean of per-batch means, and the batches now hold other rows, so
`eval_loss` can differ from a file-order evaluation in the last digits (metrics computed from predictions do
not change). Distributed evaluation keeps HF's sharded order (each worker would need its own permutation).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class LongestFirstSampler(torch.utils.data.Sampler):
    """Row indexes by decreasing length (ties in row order); `order` is the permutation."""

    def __init__(self, lengths: list[int]) -> None:
        self.order = np.argsort(-np.asarray(lengths), kind="stable")

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self):
        return iter(int(i) for i in self.order)


def row_lengths(dataset: Any) -> list[int] | None:
    """Each row's token count, when the dataset says (a `length` column, or input_ids); else None."""
    import datasets

    inner = getattr(dataset, "split", None)  # a multitask TaskView: one task's split, rows unchanged
    if isinstance(inner, datasets.Dataset) and len(inner) == len(dataset):
        dataset = inner
    if not isinstance(dataset, datasets.Dataset):
        return None
    if "length" in dataset.column_names:
        return [int(n) for n in dataset["length"]]
    if "input_ids" in dataset.column_names:
        return [len(ids) for ids in dataset["input_ids"]]
    return None


def sampler_of(dataloader) -> LongestFirstSampler | None:
    """The LongestFirstSampler a (possibly accelerate-wrapped) evaluation dataloader reads with, if any."""
    for candidate in (
        getattr(getattr(dataloader, "batch_sampler", None), "sampler", None),
        getattr(dataloader, "sampler", None),
    ):
        if isinstance(candidate, LongestFirstSampler):
            return candidate
    return None


def in_row_order(values: Any, order: np.ndarray) -> Any:
    """Arrays (or nested tuples/lists of arrays) whose first axis follows `order`, put back in row order."""
    if values is None:
        return None
    if isinstance(values, (tuple, list)):
        return type(values)(in_row_order(v, order) for v in values)
    restored = np.empty_like(values)
    restored[order] = values
    return restored
