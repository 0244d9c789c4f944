"""Preference tuning (DPO, IPO, SimPO, ORPO) of a causal LM on chosen/rejected pairs.

Rows are read and checked as pairs (tasks/preference_pairs.py), rendered with the run's chat template as the
chat task renders conversations, and each pair becomes one row holding both sequences; the collator puts B
pairs in one batch of 2B sequences. The loss, the reference model and the evaluation's per-pair rewards belong
to the training loop (train/preference_trainer.py, trainer_kind "preference"). Metrics at every evaluation:
reward_accuracy (share of pairs whose chosen reply earns the higher implicit reward), reward_margin (mean
chosen - rejected reward), logps_chosen and logps_rejected (mean policy log-probabilities of the replies).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from ftl.launcher.console import log
from ftl.launcher.data.sources import RawData
from ftl.launcher.errors import FtlError
from ftl.launcher.model.load import ModelSpec
from ftl.launcher.recipe.tasks import ChatTask
from ftl.launcher.tasks import chat_template
from ftl.launcher.tasks.chat import Chat
from ftl.launcher.tasks.prediction import PredictionInputs, PromptSettings
from ftl.launcher.tasks.preference_pairs import (
    IGNORE_INDEX,
    SIDES,
    PairCollator,
    encode_reply,
    has_implicit_prompt,
    prompt_tokens,
    read_pairs,
)
from ftl.launcher.tasks.templated import TemplatedTask


class Preference(TemplatedTask):
    auto_model = "AutoModelForCausalLM"
    loss_counts_items = False  # a mean over the micro-batch's pairs
    peft_task_type = "CAUSAL_LM"
    trainer_kind = "preference"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.dropped: dict[str, int] = {}
        self._as_chat: Chat | None = None  # the tuned model used as a chat model (ftl generate / predict)

    # ---- the template (as the chat task) ------------------------------------------------------------------
    def use_tokenizer(self, tokenizer) -> None:
        self.setup_template(tokenizer, [])
        self.chat().use_tokenizer(tokenizer)

    def state(self) -> dict[str, Any]:
        return {"chat_template": self._template}

    def restore(self, state: dict[str, Any]) -> None:
        self._template = state.get("chat_template") or self._template

    def configure_model(self, model, tokenizer) -> None:
        """As the chat task: the tokenizer carries the template; generation stops at its end of turn."""
        self.setup_template(tokenizer, [])
        self.chat().configure_model(model, tokenizer)

    def configure_trainer(self, trainer, data) -> None:
        """The trainer takes the loss settings and sets up the reference (precomputed: log-probs added to the
        splits before training)."""
        found = trainer.use_preference(
            self.config, {"train": trainer.train_dataset, "validation": trainer.eval_dataset}
        )
        if "train" in found:
            trainer.train_dataset = found["train"]
        if "validation" in found:
            trainer.eval_dataset = found["validation"]

    def configure_evaluation(self, trainer, trained) -> None:
        """ftl eval: with lora the reference is the trained model with its adapters disabled; without, the run's
        starting model (the recipe's model, built again) is the frozen reference."""
        starting = None
        if not self.config.reference_free and trained.recipe.lora is None:
            starting = self.starting_model(trained.recipe, trained.rundir.root, trained.tokenizer)
        trainer.use_preference(self.config, reference_model=starting)

    def starting_model(self, recipe, run_root: Path, tokenizer):
        """The model a run without lora started from (its reference), loaded again as the recipe names it."""
        spec = replace(
            ModelSpec.of(recipe, [run_root, Path.cwd()]),
            lora=None,
            quantization=None,
            gradient_checkpointing=False,
            sharded=False,
        )
        return self.build_model(spec, tokenizer, None).model

    # ---- data -----------------------------------------------------------------------------------------
    def column_keys(self) -> dict[str, str | None]:
        c = self.config
        return {
            "prompt_column": c.prompt_column,
            "chosen_column": c.chosen_column,
            "rejected_column": c.rejected_column,
        }

    def encode_raw(self, raw: RawData, keep_columns: tuple[str, ...] = ()):
        import datasets

        if not has_implicit_prompt(raw.dataset.column_names, self.config):
            self.check_columns(
                raw
            )  # (an implicit prompt: both reply columns are there, the prompt is not meant to be)
        pairs = read_pairs(raw, self.config)
        columns: dict[str, list] = {key: [p[key] for p in pairs] for key in ("prompt", *SIDES)}
        for key in keep_columns:
            if key not in columns:
                columns[key] = raw.dataset[key]
        return datasets.Dataset.from_dict(columns)

    def tokenize(self, dataset, tokenizer, split: str):
        self.setup_template(tokenizer, [])
        c = self.config

        def encode(batch: dict[str, list]) -> dict[str, list]:
            out: dict[str, list] = {f"{side}_{key}": [] for side in SIDES for key in ("input_ids", "labels")}
            out["length"], out["same_when_cut"] = [], []
            for prompt, *replies in zip(batch["prompt"], *(batch[side] for side in SIDES), strict=True):
                encoded = [
                    encode_reply(tokenizer, prompt, r, c.max_length, c.max_prompt_length) for r in replies
                ]
                if any(all(label == IGNORE_INDEX for label in labels) for _, labels in encoded):
                    continue  # a reply with no token left within max_length
                for side, (ids, labels) in zip(SIDES, encoded, strict=True):
                    out[f"{side}_input_ids"].append(ids)
                    out[f"{side}_labels"].append(labels)
                out["length"].append(sum(len(ids) for ids, _ in encoded))
                out["same_when_cut"].append(encoded[0] == encoded[1])  # the replies differ only past the cut
            return out

        encoded = dataset.map(encode, batched=True, remove_columns=dataset.column_names)
        emptied = len(dataset) - len(encoded)
        same = sum(encoded["same_when_cut"])
        if same:  # no preference left to learn or score: DPO's loss is log 2 whatever the weights
            encoded = encoded.filter(lambda row: not row["same_when_cut"])
        encoded = encoded.remove_columns("same_when_cut")
        self.dropped[split] = emptied + same
        cut = f"task.max_length={c.max_length} (prompts keep up to task.max_prompt_length={c.max_prompt_length})"
        if len(encoded) == 0:
            raise FtlError(
                f"{split} data: no pair keeps a reply token and a difference between its replies within {cut}; "
                "raise task.max_length"
            )
        for count, why in (
            (emptied, "with a reply cut to nothing"),
            (same, "whose replies are the same once cut"),
        ):
            if count:
                log(f"[yellow]{split}: dropped {count} of {len(dataset)} pairs {why} by {cut}[/]")
        return encoded

    def collator(self, tokenizer):
        return PairCollator(tokenizer)

    def dataset_stats(self, dataset, tokenizer) -> dict[str, Any]:
        stats: dict[str, Any] = {"rows": len(dataset), "tokens": int(sum(dataset["length"]))}
        for side in SIDES:
            stats[f"{side}_tokens"] = int(
                sum(sum(label != IGNORE_INDEX for label in row) for row in dataset[f"{side}_labels"])
            )
        return stats

    def export_rows(self, rows) -> list[dict[str, Any]]:
        """Validation pairs in TRL's conversational format, under the recipe's column names."""
        c = self.config
        return [
            {
                c.prompt_column: row["prompt"],
                c.chosen_column: [{"role": "assistant", "content": row["chosen"]}],
                c.rejected_column: [{"role": "assistant", "content": row["rejected"]}],
            }
            for row in rows.to_list()
        ]

    # ---- metrics ------------------------------------------------------------------------------------------
    def compute_metrics(self, dataset=None, tokenizer=None):
        import numpy as np

        def metrics(prediction) -> dict[str, float]:
            found = np.asarray(prediction.predictions, dtype=np.float64).reshape(-1, 4)
            chosen, rejected = found[:, 0], found[:, 1]
            return {
                "reward_accuracy": float(np.mean(chosen > rejected)),
                "reward_margin": float(np.mean(chosen - rejected)),
                "rewards_chosen": float(np.mean(chosen)),
                "rewards_rejected": float(np.mean(rejected)),
                "logps_chosen": float(np.mean(found[:, 2])),
                "logps_rejected": float(np.mean(found[:, 3])),
            }

        return metrics

    def check_preview(self, rows, tokenizer, dirs: list[Path], *, colour: bool = False) -> list[str]:
        """ftl check: the first pair's chosen sequence with its scored tokens marked, and both sides' counts."""
        self.setup_template(tokenizer, dirs)
        if len(rows) == 0:
            return []
        c, row = self.config, rows[0]
        encoded = {
            side: encode_reply(tokenizer, row["prompt"], row[side], c.max_length, c.max_prompt_length)
            for side in SIDES
        }
        ids, labels = encoded["chosen"]
        counts = ", ".join(
            f"{side} {sum(label != IGNORE_INDEX for label in labels)}"
            for side, (_, labels) in encoded.items()
        )
        shown = chat_template.show_masking(tokenizer, ids, labels, colour=colour)
        where = "green" if colour else "in \\[\\[...]]"
        reference = "none (reference-free)" if c.reference_free else c.reference
        return [
            f"preference: loss {c.loss}, beta {c.beta:g}, reference {reference}; first pair: prompt "
            f"{prompt_tokens(labels)} tokens, reply tokens {counts}; the chosen sequence (scored {where}):",
            shown if colour else shown.replace("[", r"\["),
        ]

    # ---- using the tuned model: a chat model (ftl generate, ftl predict) -------------------------------------
    def chat(self) -> Chat:
        """The chat task with this run's template, system prompt and roles: it renders prompts for generation."""
        if self._as_chat is None:
            c = self.config
            settings = ChatTask(
                type="chat",
                prompt_column=c.prompt_column,
                role_map=c.role_map,
                chat_template=c.chat_template,
                system_prompt=c.system_prompt,
                max_length=c.max_length,
                generation=c.generation,
            )
            self._as_chat = Chat(settings)
        self._as_chat.restore({"chat_template": self._template})
        return self._as_chat

    def plain_text_column(self) -> str | None:
        return self.config.prompt_column

    def encode_for_prediction(self, raw: RawData, tokenizer) -> PredictionInputs:
        """Each row's prompt (a text, or messages: a pairs file's prompt column; with no prompt column, the turns
        its two whole conversations share) rendered with the generation prompt, as the chat task does."""
        self.use_tokenizer(tokenizer)
        chat = self.chat()
        if not has_implicit_prompt(raw.dataset.column_names, self.config):
            return chat.encode_for_prediction(raw, tokenizer)
        chat.use_tokenizer(tokenizer)
        pairs = read_pairs(raw, self.config)
        return PredictionInputs(
            rows=len(pairs),
            prompts=[chat.render_prompt(p["prompt"], raw.row_location(i)) for i, p in enumerate(pairs)],
            prompt_rows=list(range(len(pairs))),
            prompt_settings=chat.generation_defaults(),
            skipped={},
        )

    def predictions_to_rows(self, inputs: PredictionInputs, outputs: list, tokenizer) -> list[dict[str, Any]]:
        return self.chat().predictions_to_rows(inputs, outputs, tokenizer)

    def generation_prompt(self, prompt: str | dict[str, Any], *, raw: bool = False) -> str:
        return self.chat().generation_prompt(prompt, raw=raw)

    def generation_defaults(self) -> PromptSettings:
        return self.chat().generation_defaults()
