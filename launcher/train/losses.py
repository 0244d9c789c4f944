"""Class-weighted cross-entropy against class imbalance (`task.class_weights`), as the Trainer's loss function.

'balanced' weights are scikit-learn's: rows / (classes x rows of the class), from the training labels (for
token classification: the scored tokens); a class absent from training gets weight 1. The weighted mean
divides by the sum of the weights of the items in the batch, as torch's cross_entropy does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from ftl.launcher.errors import FtlError
from ftl.launcher.token_labels import IGNORE_INDEX


def class_weights(setting, label_ids: Iterable[int], names: list[str]) -> list[float] | None:
    """The per-class weights of a recipe's `class_weights` setting (None: unweighted)."""
    if setting is None:
        return None
    if isinstance(setting, list):
        if len(setting) != len(names):
            raise FtlError(
                f"task.class_weights: {len(setting)} weight(s) for {len(names)} labels ({', '.join(names)}); give "
                "one per label, in label order"
            )
        return [float(w) for w in setting]
    counts = Counter(i for i in label_ids if i != IGNORE_INDEX)
    total = sum(counts.values())
    return [total / (len(names) * counts[i]) if counts[i] else 1.0 for i in range(len(names))]


def flat_labels(column) -> Iterable[int]:
    """Label ids of a tokenised split's `labels` column (one per row, or a list per row)."""
    for labels in column:
        if isinstance(labels, list):
            yield from labels
        else:
            yield labels


def weighted_cross_entropy(weights: list[float]):
    """A `compute_loss_func` for the HF Trainer: cross-entropy over the logits with these class weights."""
    import torch
    import torch.nn.functional as F

    weight = torch.tensor(weights, dtype=torch.float32)

    def loss(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            labels.reshape(-1),
            weight=weight.to(logits.device),
            ignore_index=IGNORE_INDEX,
        )

    return loss
