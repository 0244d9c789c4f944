"""Packing whole examples into rows without cross-contamination (any task whose rows are `input_ids` + `labels`).

`pack_examples` puts several tokenised examples into one row of at most `max_length` tokens (first-fit
decreasing: longest first, each into the first row with room), never splitting one. Each row carries
`position_ids` that restart at 0 for every example, and the first token of every example gets the label -100,
so no example is ever trained to predict its first token from the one before it (HF causal-LM losses shift the
labels one to the left: position t predicts labels[t + 1]).

`PackedCollator` pads those rows into a batch *without* an attention mask: that is what makes transformers
build one causal block per example. With `position_ids` and no 2-D attention mask (and no KV cache),
`masking_utils.create_causal_mask` finds the restarts (`find_packed_sequence_indices`) and SDPA and eager
attention get a block-diagonal causal mask; flash_attention_2 gets the same boundaries as `cu_seq_lens_*`
(the kwargs `DataCollatorWithFlattening(return_flash_attn_kwargs=True)` passes) and runs its varlen kernel.
The batch also says `use_cache=False`: with a cache transformers skips that detection (and a model's config
usually has use_cache on). Padding at a row's end is a block of its own with labels -100.
"""

from __future__ import annotations

from typing import Any

from ftl.launcher.token_labels import IGNORE_INDEX

PACK_BATCH_ROWS = (
    2000  # examples packed together (one datasets.map batch); each batch leaves < 1 row part-full
)
PACKED_COLUMNS = ("input_ids", "labels", "position_ids", "length", "examples")


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into bins of total <= capacity: longest first, each into the first bin
    with room. A length above capacity is a bug of the caller (examples are truncated before packing)."""
    bins: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        size = lengths[index]
        if size > capacity:
            raise ValueError(f"an example of {size} tokens does not fit a packed row of {capacity}")
        for b, free in enumerate(room):
            if free >= size:
                bins[b].append(index)
                room[b] -= size
                break
        else:
            bins.append([index])
            room.append(capacity - size)
    return bins


def pack_rows(batch: dict[str, list], max_length: int) -> dict[str, list]:
    """One datasets.map batch of examples (input_ids, labels) -> packed rows (input_ids, labels with -100 at
    each example's first token, position_ids restarting per example, length, examples per row)."""
    ids, labels = batch["input_ids"], batch["labels"]
    for row, mask in enumerate(batch.get("attention_mask") or []):
        if 0 in mask:
            raise ValueError(f"example {row} is padded (attention_mask has zeros); pack unpadded examples")
    keep = [i for i, row in enumerate(ids) if len(row) > 0]
    bins = first_fit_decreasing([len(ids[i]) for i in keep], max_length)
    out: dict[str, list] = {name: [] for name in PACKED_COLUMNS}
    for members in bins:
        row_ids: list[int] = []
        row_labels: list[int] = []
        positions: list[int] = []
        for index in (keep[m] for m in members):
            example_ids, example_labels = list(ids[index]), list(labels[index])
            if len(example_labels) != len(example_ids):
                raise ValueError(
                    f"example {index}: {len(example_labels)} labels for {len(example_ids)} tokens"
                )
            row_ids += example_ids
            row_labels += [IGNORE_INDEX, *example_labels[1:]]
            positions += range(len(example_ids))
        out["input_ids"].append(row_ids)
        out["labels"].append(row_labels)
        out["position_ids"].append(positions)
        out["length"].append(len(row_ids))
        out["examples"].append(len(members))
    return out


def pack_examples(dataset, max_length: int, *, batch_rows: int = PACK_BATCH_ROWS):
    """A tokenised dataset of examples (input_ids, labels; attention_mask and length may be there) as packed
    rows of at most max_length tokens (see `pack_rows`); every other column is dropped."""
    for column in ("input_ids", "labels"):
        if column not in dataset.column_names:
            raise ValueError(f"packing needs a '{column}' column; the dataset has {dataset.column_names}")
    return dataset.map(
        pack_rows,
        batched=True,
        batch_size=batch_rows,
        fn_kwargs={"max_length": max_length},
        remove_columns=dataset.column_names,
    )


def position_ids_of(lengths: list[int]) -> list[int]:
    """Position ids of examples of these lengths laid end to end: 0..n-1 for each."""
    return [p for n in lengths for p in range(n)]


class PackedCollator:
    """Pad packed rows (from `pack_examples`) into a batch that transformers reads as packed sequences:
    input_ids, labels, position_ids (padding: a block of its own), flash-attention boundaries, no
    attention_mask, use_cache=False."""

    def __init__(self, pad_token_id: int | None) -> None:
        self.pad_token_id = 0 if pad_token_id is None else int(pad_token_id)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        input_ids, labels, positions, blocks = [], [], [], []
        for f in features:
            n = len(f["input_ids"])
            pad = width - n
            input_ids.append(list(f["input_ids"]) + [self.pad_token_id] * pad)
            labels.append(list(f["labels"]) + [IGNORE_INDEX] * pad)
            positions.append(list(f["position_ids"]) + list(range(pad)))
            blocks += _block_lengths(f["position_ids"]) + ([pad] if pad else [])
        cumulative = torch.tensor([0, *blocks], dtype=torch.int32).cumsum(0, dtype=torch.int32)
        longest = max(blocks)
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "position_ids": torch.tensor(positions, dtype=torch.long),
            "cu_seq_lens_q": cumulative,
            "cu_seq_lens_k": cumulative,
            "max_length_q": longest,
            "max_length_k": longest,
            "use_cache": False,
        }


def _block_lengths(position_ids: list[int]) -> list[int]:
    """Lengths of the examples in a packed row, read from where its position ids restart at 0."""
    starts = [i for i, p in enumerate(position_ids) if p == 0] + [len(position_ids)]
    return [b - a for a, b in zip(starts, starts[1:], strict=False)]
