"""Causal language modelling: token-level perplexity of documents, or instruction tuning (prompt template +
response, loss on the response only, ROUGE of generated responses after training).

Rows are packed (task.packing): `examples` puts whole examples together in rows that keep them apart
(data/packing.py), `stream` concatenates documents and cuts full blocks, false pads one example per row."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ftl.launcher.console import log
from ftl.launcher.data.cells import usable_text
from ftl.launcher.data.collate import BlockCollator, PaddingCollator, pad_id
from ftl.launcher.data.packing import PackedCollator, pack_examples
from ftl.launcher.data.sources import RawData
from ftl.launcher.errors import FtlError
from ftl.launcher.model.attention import require_packed_attention
from ftl.launcher.tasks import instruction
from ftl.launcher.tasks.base import Predictions, Task
from ftl.launcher.tasks.generation import generate, write_generations
from ftl.launcher.tasks.instruction import check_prompt_fields, render, template_fields
from ftl.launcher.tasks.prediction import PredictionInputs, PromptSettings
from ftl.launcher.token_labels import IGNORE_INDEX

_PACK_BATCH_ROWS = 2000  # rows concatenated per packing batch; each batch wastes < one block


class CausalLM(Task):
    auto_model = "AutoModelForCausalLM"
    loss_counts_items = True
    peft_task_type = "CAUSAL_LM"

    def column_keys(self) -> dict[str, str | None]:
        c = self.config
        if not c.instruction_tuning:
            return {"text_column": c.text_column}
        keys = {f"prompt_template {{{name}}}": name for name in template_fields(c.prompt_template)}
        return {**keys, "response_column": c.response_column, "references_column": c.references_column}

    def encode_raw(self, raw: RawData, keep_columns: tuple[str, ...] = ()):
        self.check_columns(raw)
        if self.config.instruction_tuning:
            return self._encode_instructions(raw, keep_columns)
        return self.rows_with_text(raw, self.config.text_column, keep_columns)

    def _encode_instructions(self, raw: RawData, keep_columns: tuple[str, ...]):
        """Rows with a non-empty response; the prompt's columns, the response and references are kept."""
        c = self.config
        wanted = [*template_fields(c.prompt_template), c.response_column]
        if c.references_column:
            wanted.append(c.references_column)
        wanted += [k for k in keep_columns if k not in wanted]
        dataset = raw.dataset.select_columns(list(dict.fromkeys(wanted)))
        check_prompt_fields(raw, c.prompt_template)
        responses = dataset[c.response_column]
        keep = usable_text(raw, c.response_column, "task.response_column", responses)
        if not keep:
            raise FtlError(f"{raw.what} ({raw.description}): every row has an empty '{c.response_column}'")
        return dataset.select(keep) if len(keep) != len(responses) else dataset

    def tokenize(self, dataset, tokenizer, split: str):
        examples = self._tokenize_examples(dataset, tokenizer, split)
        if self.config.packing_mode == "examples":
            return pack_examples(examples, self.config.max_length)
        return examples

    def _tokenize_examples(self, dataset, tokenizer, split: str):
        column, block = self.config.text_column, self.config.max_length
        eos = tokenizer.eos_token_id

        if self.config.instruction_tuning:
            template, response = self.config.prompt_template, self.config.response_column

            def encode_pairs(batch: dict[str, list]) -> dict[str, list]:
                rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
                pairs = [
                    instruction.encode(tokenizer, render(template, r), str(r[response]), block) for r in rows
                ]
                return {
                    "input_ids": [ids for ids, _ in pairs],
                    "attention_mask": [[1] * len(ids) for ids, _ in pairs],
                    "labels": [labels for _, labels in pairs],
                    "length": [len(ids) for ids, _ in pairs],
                }

            return dataset.map(encode_pairs, batched=True, remove_columns=dataset.column_names)

        if not self.config.packs:
            end = (
                [eos]
                if self.config.packing_mode == "examples" and self.config.add_eos and eos is not None
                else []
            )

            room = block - len(end)

            def encode(batch: dict[str, list]) -> dict[str, list]:
                texts = [str(t) for t in batch[column]]
                # one token past the room tells a cut row from one that fits exactly
                encoded = tokenizer(texts, truncation=True, max_length=room + 1)
                encoded["cut"] = [len(ids) > room for ids in encoded["input_ids"]]
                encoded["input_ids"] = [list(ids)[:room] + end for ids in encoded["input_ids"]]
                encoded["attention_mask"] = [[1] * len(ids) for ids in encoded["input_ids"]]
                encoded["labels"] = [list(ids) for ids in encoded["input_ids"]]
                encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
                encoded.pop("token_type_ids", None)
                return encoded

            encoded = dataset.map(encode, batched=True, remove_columns=dataset.column_names)
            cut = sum(encoded["cut"])
            if cut:
                log(
                    f"[yellow]{split}: {cut} of {len(encoded)} rows are longer than task.max_length={block} tokens "
                    "and were cut to it (the rest of each is not trained on); task.packing: stream trains on every "
                    "token[/]"
                )
            return encoded.remove_columns("cut")

        def pack(batch: dict[str, list]) -> dict[str, list]:
            stream: list[int] = []
            separate_with_eos = self.config.add_eos and eos is not None
            texts = [str(t) if separate_with_eos else str(t) + "\n\n" for t in batch[column]]
            for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
                stream.extend(ids)
                if separate_with_eos:
                    stream.append(eos)
            usable = (len(stream) // block) * block
            blocks = [stream[i : i + block] for i in range(0, usable, block)]
            return {"input_ids": blocks, "labels": [list(b) for b in blocks]}

        packed = dataset.map(
            pack, batched=True, batch_size=_PACK_BATCH_ROWS, remove_columns=dataset.column_names
        )
        if len(packed) == 0:
            raise FtlError(
                f"{split} data has fewer than task.max_length={block} tokens, so no full block can be packed; "
                "lower task.max_length or add text"
            )
        return packed

    def cache_identity(self) -> dict[str, Any]:
        """The resolved packing too: packing unset meant stream before examples packing became the default."""
        return {**super().cache_identity(), "packing_mode": self.config.packing_mode}

    def collator(self, tokenizer):
        if self.config.packing_mode == "examples":
            return PackedCollator(pad_id(tokenizer))
        if self.config.packs:
            return BlockCollator()
        return PaddingCollator(tokenizer, label_pad_id=IGNORE_INDEX)

    def preprocess_logits_for_metrics(self):
        def token_nll(logits, labels):
            """Per-token negative log-likelihood (B, T), aligned so nll[:, t] predicts labels[:, t + 1]."""
            import torch
            import torch.nn.functional as F

            if isinstance(logits, tuple):
                logits = logits[0]
            shifted_logits = logits[:, :-1, :].float()
            targets = labels[:, 1:]
            nll = F.cross_entropy(
                shifted_logits.reshape(-1, shifted_logits.shape[-1]),
                targets.reshape(-1).clamp(min=0),
                reduction="none",
            ).view(targets.shape)
            return torch.cat([nll, nll.new_zeros(nll.shape[0], 1)], dim=1)

        return token_nll

    def compute_metrics(self, dataset=None, tokenizer=None):
        def metrics(prediction) -> dict[str, float]:
            import numpy as np

            nll = np.asarray(prediction.predictions, dtype=np.float64)[:, :-1]
            labels = np.asarray(prediction.label_ids)[:, 1:]
            mask = labels != IGNORE_INDEX
            mean = float(nll[mask].sum() / max(int(mask.sum()), 1))
            return {"perplexity": math.exp(min(mean, 50.0)), "token_nll": mean}

        return metrics

    def dataset_stats(self, dataset, tokenizer) -> dict[str, Any]:
        stats = super().dataset_stats(dataset, tokenizer)
        if self.config.packs:
            stats["non_pad_fraction"] = 1.0
        if "examples" in dataset.column_names:
            stats["examples"] = int(sum(dataset["examples"]))
        return stats

    def configure_model(self, model, tokenizer) -> None:
        """Examples packing needs a model whose attention keeps packed examples apart: checked on the model."""
        if self.config.packing_mode == "examples":
            require_packed_attention(model, "task.packing: examples")

    def write_predictions(self, trainer, dataset, raw_rows, directory: Path) -> Predictions | None:
        """Instruction tuning: generate responses for the first generate_rows validation prompts, score them
        with ROUGE against the responses (or references), and write them worst first."""
        c = self.config
        if not c.instruction_tuning or c.generate_rows == 0:
            return None

        rows = raw_rows.select(range(min(c.generate_rows, len(raw_rows)))).to_list()
        prompts = [render(c.prompt_template, row) for row in rows]
        references = [
            list(row[c.references_column]) if c.references_column else [str(row[c.response_column])]
            for row in rows
        ]
        texts = generate(
            trainer.model,
            trainer.processing_class,
            prompts,
            c.generation,
            max_input_length=c.max_length,
            batch_size=trainer.args.per_device_eval_batch_size,
            synced=_zero3(trainer),
            seed=trainer.args.seed,
        )
        if not trainer.is_world_process_zero():
            return None
        return write_generations(directory, prompts, texts, references)

    # ---- using the trained model ------------------------------------------------------------------
    def plain_text_column(self) -> str | None:
        c = self.config
        if not c.instruction_tuning:
            return c.text_column
        fields = template_fields(c.prompt_template)
        return fields[0] if len(fields) == 1 else None

    def encode_for_prediction(self, raw: RawData, tokenizer) -> PredictionInputs:
        """Instruction tuning: each row's prompt from the template's columns; plain language modelling: the
        text column, to be continued."""
        from ftl.launcher.tasks.prediction import is_blank, require_columns

        c = self.config
        if c.instruction_tuning:
            fields = template_fields(c.prompt_template)
            require_columns(raw, {f"prompt_template {{{name}}}": name for name in fields})
            values = raw.dataset.select_columns(fields).to_list()
            prompts = [render(c.prompt_template, row) for row in values]
            skipped = {
                row: "every prompt field is empty"
                for row, v in enumerate(values)
                if all(map(is_blank, v.values()))
            }
        else:
            require_columns(raw, {"text_column": c.text_column})
            texts = raw.dataset[c.text_column]
            prompts = ["" if text is None else str(text) for text in texts]
            skipped = {row: f"empty '{c.text_column}'" for row, text in enumerate(texts) if is_blank(text)}
        keep = [row for row in range(len(prompts)) if row not in skipped]
        return PredictionInputs(
            rows=len(prompts),
            prompts=[prompts[row] for row in keep],
            prompt_rows=keep,
            prompt_settings=self.generation_defaults(),
            skipped=skipped,
        )

    def predictions_to_rows(self, inputs: PredictionInputs, outputs: list, tokenizer) -> list[dict[str, Any]]:
        """generated: the generated text (the response, or the continuation of the text)."""
        from ftl.launcher.tasks.prediction import generated_rows

        return generated_rows(inputs, outputs)

    def generation_prompt(self, prompt: str | dict[str, Any], *, raw: bool = False) -> str:
        """With a prompt template: a text fills its single field, a JSON object gives its fields by name."""
        import json

        from ftl.launcher.tasks.prediction import shown

        c = self.config
        if raw or not c.instruction_tuning:
            if isinstance(prompt, dict):
                key = next((k for k in (c.text_column, "prompt", "text") if k in prompt), None)
                if key is None:
                    raise FtlError(
                        f"prompt {shown(prompt)}: give the text in a '{c.text_column}' or 'prompt' field"
                    )
                return "" if prompt[key] is None else str(prompt[key])
            return prompt
        fields = template_fields(c.prompt_template)
        if isinstance(prompt, str):
            if len(fields) != 1:
                raise FtlError(
                    f"the run's prompt template has the fields {', '.join(fields)}: give each prompt as a JSON "
                    f"object with them, e.g. {json.dumps(dict.fromkeys(fields, '...'))}"
                )
            return render(c.prompt_template, {fields[0]: prompt})
        missing = [name for name in fields if name not in prompt]
        if missing:
            raise FtlError(
                f"prompt {shown(prompt)}: no field {', '.join(repr(m) for m in missing)} "
                f"of the run's prompt template (its fields: {', '.join(fields)})"
            )
        return render(c.prompt_template, prompt)

    def generation_defaults(self) -> PromptSettings:
        c = self.config
        return PromptSettings(c.generation, c.max_length, keep_end=not c.instruction_tuning)


def _zero3(trainer) -> bool:
    """DeepSpeed ZeRO-3 shards the weights: every worker must take part in each generation step."""
    deepspeed = getattr(trainer.args, "deepspeed", None)
    return isinstance(deepspeed, dict) and deepspeed.get("zero_optimization", {}).get("stage") == 3
