"""Batch builders: pad each batch to its own longest row (never to a global max_length)."""

from __future__ import annotations

from typing import Any

# Columns that describe rows but are not model inputs (used by samplers and reports).
NON_INPUT_COLUMNS = ("length",)


def pad_id(tokenizer) -> int:
    """The id that pads a row the collator builds itself: the tokenizer's pad token, else its end of sequence
    (causal LMs often have no pad token; padded positions are never trained), else 0."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return 0 if pad is None else int(pad)


class PaddingCollator:
    """Dynamic padding through the tokenizer's `pad`, dropping bookkeeping columns such as `length`."""

    def __init__(self, tokenizer, label_pad_id: int | None = None, drop: tuple[str, ...] = ()) -> None:
        self.tokenizer = tokenizer
        self.label_pad_id = label_pad_id  # pad a per-token `labels` list with this id (e.g. -100)
        self.drop = set(NON_INPUT_COLUMNS) | set(drop)  # bookkeeping columns of the task

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        rows = [{k: v for k, v in f.items() if k not in self.drop} for f in features]
        token_labels = None
        if self.label_pad_id is not None and rows and isinstance(rows[0].get("labels"), list):
            token_labels = [row.pop("labels") for row in rows]
        batch = self.tokenizer.pad(rows, padding=True, return_tensors="pt")
        if token_labels is not None:
            width = batch["input_ids"].shape[1]
            side = self.tokenizer.padding_side
            padded = [
                (labels + [self.label_pad_id] * (width - len(labels)))
                if side == "right"
                else ([self.label_pad_id] * (width - len(labels)) + labels)
                for labels in token_labels
            ]
            batch["labels"] = torch.tensor(padded, dtype=torch.long)
        return dict(batch)


class BlockCollator:
    """Stack rows that all have the same length (packed language-model blocks)."""

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        keys = [k for k in features[0] if k not in NON_INPUT_COLUMNS]
        return {k: torch.tensor([f[k] for f in features], dtype=torch.long) for k in keys}
