"""Sequence-to-sequence generation with an encoder-decoder (T5, BART, ...): the Seq2SeqTrainer generates at
every evaluation, and generated text is scored with ROUGE against the target (or several references).

Inputs are `source_prefix + source`, cut at max_source_length; targets are the target's tokens plus the
end-of-sequence token, cut at max_target_length. Evaluation rows also carry their references (not a model
input), so ROUGE can take the best over several of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftl.launcher.data.cells import usable_rows
from ftl.launcher.data.collate import PaddingCollator
from ftl.launcher.data.sources import RawData
from ftl.launcher.errors import FtlError
from ftl.launcher.tasks.base import Predictions, Task
from ftl.launcher.tasks.generation import generation_config
from ftl.launcher.tasks.prediction import PredictionInputs, PromptSettings
from ftl.launcher.token_labels import IGNORE_INDEX

SOURCE, TARGET, REFERENCES = "source", "target", "references"  # normalised columns


class Seq2Seq(Task):
    auto_model = "AutoModelForSeq2SeqLM"
    peft_task_type = "SEQ_2_SEQ_LM"
    generates_in_evaluation = True
    trainer_kind = "seq2seq"

    @property
    def split_method(self) -> str:
        return "random"

    def column_keys(self) -> dict[str, str | None]:
        c = self.config
        return {
            "source_column": c.source_column,
            "target_column": c.target_column,
            "references_column": c.references_column,
        }

    def encode_raw(self, raw: RawData, keep_columns: tuple[str, ...] = ()):
        import datasets

        self.check_columns(raw)
        c = self.config
        rows = raw.dataset
        sources, targets = rows[c.source_column], rows[c.target_column]
        references = rows[c.references_column] if c.references_column else None
        out: dict[str, list] = {SOURCE: [], TARGET: [], REFERENCES: []}
        kept_rows = usable_rows(
            raw,
            {c.source_column: "task.source_column", c.target_column: "task.target_column"},
            {c.source_column: sources, c.target_column: targets},
        )
        for i in kept_rows:
            source, target = str(sources[i]), str(targets[i])
            refs = references[i] if references is not None else [target]
            if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
                raise FtlError(
                    f"{raw.row_location(i)}: column '{c.references_column}' (task.references_column) must hold "
                    "a list of texts"
                )
            out[SOURCE].append(source)
            out[TARGET].append(target)
            out[REFERENCES].append(refs or [target])
        if not kept_rows:
            raise FtlError(
                f"{raw.what} ({raw.description}): no row has both '{c.source_column}' and '{c.target_column}'"
            )
        kept = {col: [rows[col][i] for i in kept_rows] for col in keep_columns if col in rows.column_names}
        return datasets.Dataset.from_dict({**kept, **out})

    def export_rows(self, rows) -> list[dict[str, Any]]:
        c = self.config
        names = {
            SOURCE: c.source_column,
            TARGET: c.target_column,
            REFERENCES: c.references_column or REFERENCES,
        }
        return [{names.get(k, k): v for k, v in row.items()} for row in rows.to_list()]

    def tokenize(self, dataset, tokenizer, split: str):
        c = self.config
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id

        def encode(batch: dict[str, list]) -> dict[str, list]:
            encoded = tokenizer(
                [c.source_prefix + s for s in batch[SOURCE]],
                truncation=True,
                max_length=c.max_source_length,
                return_token_type_ids=False,  # encoder-decoders take none (a BERT tokenizer would add them)
            )
            targets = tokenizer(
                batch[TARGET],
                add_special_tokens=False,
                truncation=True,
                max_length=c.max_target_length - (eos is not None),
            )["input_ids"]
            encoded["labels"] = [list(t) + ([eos] if eos is not None else []) for t in targets]
            encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
            encoded[REFERENCES] = batch[REFERENCES]
            return encoded

        return dataset.map(encode, batched=True, batch_size=1000, remove_columns=dataset.column_names)

    def collator(self, tokenizer):
        return PaddingCollator(tokenizer, label_pad_id=IGNORE_INDEX, drop=(REFERENCES,))

    def configure_model(self, model, tokenizer) -> None:
        """Generation during evaluation follows the recipe's generation settings."""
        model.generation_config = generation_config(self.config.generation, tokenizer, model)

    # ---- metrics --------------------------------------------------------------------------------
    def decode(self, generated, tokenizer) -> list[str]:
        import numpy as np

        ids = np.where(np.asarray(generated) < 0, tokenizer.pad_token_id, np.asarray(generated))
        return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def compute_metrics(self, dataset=None, tokenizer=None):
        if dataset is None or tokenizer is None:
            return None
        references = dataset[REFERENCES]
        pad = tokenizer.pad_token_id

        def metrics(prediction) -> dict[str, float]:
            import numpy as np

            from ftl.launcher.tasks.generation import rouge

            generated = (
                prediction.predictions[0]
                if isinstance(prediction.predictions, tuple)
                else prediction.predictions
            )
            generated = np.asarray(generated)
            texts = self.decode(generated, tokenizer)
            lengths = ((generated != pad) & (generated >= 0)).sum(
                -1
            )  # non-pad tokens, as HF's examples count
            return {**rouge(texts, references[: len(texts)]), "gen_length": float(np.mean(lengths))}

        return metrics

    def write_predictions(self, trainer, dataset, raw_rows, directory: Path) -> Predictions | None:
        from ftl.launcher.tasks.generation import write_generations

        output = trainer.predict(dataset, metric_key_prefix="predict")  # collective: every worker generates
        if not trainer.is_world_process_zero():
            return None
        texts = self.decode(output.predictions, trainer.processing_class)
        return write_generations(directory, raw_rows[SOURCE], texts, raw_rows[REFERENCES])

    # ---- using the trained model ------------------------------------------------------------------
    def plain_text_column(self) -> str | None:
        return self.config.source_column

    def encode_for_prediction(self, raw: RawData, tokenizer) -> PredictionInputs:
        """The source column, with the run's source_prefix, as prompts to generate from."""
        from ftl.launcher.tasks.prediction import is_blank, require_columns

        c = self.config
        require_columns(raw, {"source_column": c.source_column})
        sources = raw.dataset[c.source_column]
        keep = [row for row, source in enumerate(sources) if not is_blank(source)]
        return PredictionInputs(
            rows=len(sources),
            prompts=[c.source_prefix + str(sources[row]) for row in keep],
            prompt_rows=keep,
            prompt_settings=self.generation_defaults(),
            skipped={row: f"empty '{c.source_column}'" for row in set(range(len(sources))) - set(keep)},
        )

    def predictions_to_rows(self, inputs: PredictionInputs, outputs: list, tokenizer) -> list[dict[str, Any]]:
        """generated: the generated text."""
        from ftl.launcher.tasks.prediction import generated_rows

        return generated_rows(inputs, outputs)

    def generation_prompt(self, prompt: str | dict[str, Any], *, raw: bool = False) -> str:
        """A text, or an object whose source_column field is the text; the run's source_prefix first."""
        from ftl.launcher.tasks.prediction import shown

        c = self.config
        if isinstance(prompt, dict):
            if c.source_column not in prompt:
                raise FtlError(
                    f"prompt {shown(prompt)}: no '{c.source_column}' field (the run's task.source_column)"
                )
            prompt = "" if prompt[c.source_column] is None else str(prompt[c.source_column])
        return prompt if raw else c.source_prefix + prompt

    def generation_defaults(self) -> PromptSettings:
        return PromptSettings(self.config.generation, self.config.max_source_length)
