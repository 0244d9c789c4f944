"""Masked language modelling: rows packed into blocks, a random 15 % of tokens (or whole words) to predict.

Training batches are masked afresh every time (HF's DataCollatorForLanguageModeling: 80 % [MASK], 10 % random,
10 % kept; whole-word masking masks every subword of a chosen word). Validation blocks are masked once, with a
fixed seed, when they are tokenised, so every evaluation scores the same positions. Metrics: perplexity and
accuracy over the masked positions. Training projects only the masked positions onto the vocabulary
(launcher/train/masked_positions.py), about half of a small encoder's step.
"""

from __future__ import annotations

import math
from typing import Any

from ftl.launcher.data.collate import NON_INPUT_COLUMNS
from ftl.launcher.data.sources import RawData
from ftl.launcher.errors import FtlError
from ftl.launcher.tasks.base import Task
from ftl.launcher.token_labels import IGNORE_INDEX

_PACK_BATCH_ROWS = 1000
_EVAL_MASK_SEED = 1234


class MaskedLM(Task):
    auto_model = "AutoModelForMaskedLM"
    peft_task_type = "FEATURE_EXTRACTION"
    trainer_kind = "masked_lm"  # training decodes only the masked positions (train/masked_positions.py)

    def column_keys(self) -> dict[str, str | None]:
        return {"text_column": self.config.text_column}

    def encode_raw(self, raw: RawData, keep_columns: tuple[str, ...] = ()):
        self.check_columns(raw)
        return self.rows_with_text(raw, self.config.text_column, keep_columns)

    def _masker(self, tokenizer, seed: int | None = None):
        from transformers import DataCollatorForLanguageModeling

        if tokenizer.mask_token is None:
            raise FtlError("task: masked_lm needs a tokenizer with a mask token (a BERT-like model)")
        if self.config.whole_word_masking and not getattr(tokenizer, "is_fast", False):
            raise FtlError("task.whole_word_masking needs a fast tokenizer (word boundaries from offsets)")
        import warnings

        with warnings.catch_warnings():  # whole-word masking replaces every masked token by [MASK]: expected
            warnings.simplefilter("ignore", UserWarning)
            return DataCollatorForLanguageModeling(
                tokenizer,
                mlm_probability=self.config.mlm_probability,
                whole_word_mask=self.config.whole_word_masking,
                seed=seed,
            )

    def tokenize(self, dataset, tokenizer, split: str):
        c = self.config
        offsets = c.whole_word_masking
        block = c.max_length

        def encode(batch: dict[str, list]) -> dict[str, list]:
            encoded = tokenizer(
                [str(t) for t in batch[c.text_column]],
                truncation=not c.packing,
                max_length=None if c.packing else block,
                return_special_tokens_mask=True,
                return_offsets_mapping=offsets,
                return_token_type_ids=False,
            )
            keys = ["input_ids", "special_tokens_mask"] + (["offset_mapping"] if offsets else [])
            if not c.packing:
                return {**{k: encoded[k] for k in keys}, "length": [len(i) for i in encoded["input_ids"]]}
            streams = {k: [item for row in encoded[k] for item in row] for k in keys}
            usable = (len(streams["input_ids"]) // block) * block
            blocks = {k: [v[i : i + block] for i in range(0, usable, block)] for k, v in streams.items()}
            blocks["length"] = [block] * len(blocks["input_ids"])
            return blocks

        features = dataset.map(
            encode, batched=True, batch_size=_PACK_BATCH_ROWS, remove_columns=dataset.column_names
        )
        if len(features) == 0:
            raise FtlError(
                f"{split} data has fewer than task.max_length={block} tokens, so no full block can be packed; "
                "lower task.max_length or add text"
            )
        if split == "train":
            return features
        return self._fix_masks(features, tokenizer)

    def _fix_masks(self, features, tokenizer):
        """Mask evaluation blocks once (seeded), so every evaluation predicts the same positions."""
        masker = self._masker(tokenizer, seed=_EVAL_MASK_SEED)
        masker.create_rng()

        def mask(batch: dict[str, list]) -> dict[str, list]:
            rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
            lengths = [row.pop("length") for row in rows]
            masked = masker([row for row in rows])
            ids, labels = masked["input_ids"].tolist(), masked["labels"].tolist()
            return {
                "input_ids": [i[:n] for i, n in zip(ids, lengths, strict=True)],
                "labels": [label[:n] for label, n in zip(labels, lengths, strict=True)],
                "length": lengths,
            }

        return features.map(mask, batched=True, batch_size=256, remove_columns=features.column_names)

    def collator(self, tokenizer):
        return MaskingCollator(tokenizer, self._masker(tokenizer))

    # ---- metrics --------------------------------------------------------------------------------
    def preprocess_logits_for_metrics(self):
        def nll_and_hits(logits, labels):
            """Per position: negative log-likelihood of the label and whether the top prediction is it."""
            import torch
            import torch.nn.functional as F

            if isinstance(logits, tuple):
                logits = logits[0]
            flat = logits.float().reshape(-1, logits.shape[-1])
            targets = labels.reshape(-1).clamp(min=0)
            nll = F.cross_entropy(flat, targets, reduction="none").view(labels.shape)
            hits = (logits.argmax(-1) == labels).float()
            return torch.stack([nll, hits], dim=-1)

        return nll_and_hits

    def compute_metrics(self, dataset=None, tokenizer=None):
        def metrics(prediction) -> dict[str, float]:
            import numpy as np

            scores = np.asarray(prediction.predictions, dtype=np.float64)
            labels = np.asarray(prediction.label_ids)
            mask = labels != IGNORE_INDEX
            if not mask.any():
                return {"perplexity": float("nan"), "accuracy": float("nan")}
            mean = float(scores[..., 0][mask].mean())
            return {"perplexity": math.exp(min(mean, 50.0)), "accuracy": float(scores[..., 1][mask].mean())}

        return metrics

    def dataset_stats(self, dataset, tokenizer) -> dict[str, Any]:
        stats = {"rows": len(dataset), "tokens": int(sum(dataset["length"]))}
        if "labels" in dataset.column_names:
            stats["masked"] = int(sum(sum(1 for t in row if t != IGNORE_INDEX) for row in dataset["labels"]))
        return stats


class MaskingCollator:
    """Training rows are masked here, per batch; evaluation rows arrive masked and are only padded."""

    def __init__(self, tokenizer, masker) -> None:
        self.tokenizer = tokenizer
        self.masker = masker

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        rows = [{k: v for k, v in f.items() if k not in NON_INPUT_COLUMNS} for f in features]
        if "labels" not in rows[0]:
            return self.masker(rows)
        from ftl.launcher.data.collate import PaddingCollator

        return PaddingCollator(self.tokenizer, label_pad_id=IGNORE_INDEX)(rows)
