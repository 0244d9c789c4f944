"""Chat fine-tuning: multi-turn conversations rendered with a chat template, the loss on assistant turns only.

Rows are read into messages (data/conversations.py), rendered with the run's chat template and masked so that
only assistant replies and their end-of-turn token are trained (tasks/chat_template.py). Each conversation is
one row of `input_ids`, `attention_mask`, `labels` and `length`; with task.packing, whole conversations share rows
that keep them apart (data/packing.py: position ids restart per conversation, no attention mask; the model's
attention is probed before training). Perplexity is measured on
assistant tokens; after training the model writes the last reply of some validation dialogues
(generations.jsonl), and `ftl generate`/`ftl predict` render prompts with the same template, the generation
prompt appended, stopping at the template's end of turn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftl.launcher.console import log
from ftl.launcher.data.collate import PaddingCollator, pad_id
from ftl.launcher.data.conversations import (
    check_conversation,
    detect_format,
    format_columns,
    read_conversations,
    role_map,
    row_messages,
    side_messages,
)
from ftl.launcher.data.packing import PackedCollator, pack_examples
from ftl.launcher.data.sources import RawData
from ftl.launcher.errors import FtlError
from ftl.launcher.model.attention import require_packed_attention
from ftl.launcher.tasks import chat_template
from ftl.launcher.tasks.base import Predictions
from ftl.launcher.tasks.causal_lm import CausalLM, _zero3
from ftl.launcher.tasks.generation import generate, write_generations
from ftl.launcher.tasks.prediction import (
    PredictionInputs,
    PromptSettings,
    generated_rows,
    is_blank,
    require_columns,
    shown,
)
from ftl.launcher.tasks.templated import TemplatedTask
from ftl.launcher.token_labels import IGNORE_INDEX

MESSAGES = "messages"  # the normalised rows' column


class Chat(TemplatedTask):
    auto_model = "AutoModelForCausalLM"
    loss_counts_items = True
    peft_task_type = "CAUSAL_LM"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._format: str | None = None if config.format == "auto" else config.format
        self.dropped: dict[str, int] = {}  # split -> conversations with no assistant token left after cutting

    # ---- the template ---------------------------------------------------------------------------
    def _ready(self, tokenizer) -> None:
        self.setup_template(tokenizer, [])

    def use_tokenizer(self, tokenizer) -> None:
        """A finished run's tokenizer (it carries the run's template; the task state names it too)."""
        self._ready(tokenizer)

    def state(self) -> dict[str, Any]:
        return {"chat_template": self._template, "format": self._format}

    def restore(self, state: dict[str, Any]) -> None:
        self._template = state.get("chat_template") or self._template
        self._format = state.get("format") or self._format

    def configure_model(self, model, tokenizer) -> None:
        """The tokenizer carries the template (saved with the model); generation stops at its end of turn."""
        self._ready(tokenizer)
        model.generation_config.eos_token_id = chat_template.end_of_turn_ids(tokenizer, self._template)
        if model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
        if self.config.packing:
            require_packed_attention(model, "task.packing")

    # ---- data -----------------------------------------------------------------------------------
    def format_of(self, raw: RawData) -> str:
        fmt = self._format or detect_format(raw.dataset.column_names, self.config)
        self._format = fmt
        return fmt

    def column_keys(self) -> dict[str, str | None]:
        return format_columns(self._format, self.config) if self._format else {}

    def encode_raw(self, raw: RawData, keep_columns: tuple[str, ...] = ()):
        import datasets

        self.format_of(raw)
        self.check_columns(raw)
        conversations = read_conversations(
            raw, self.config, self._format, training=True, system_prompt=self.config.system_prompt
        )
        columns: dict[str, list] = {MESSAGES: conversations}
        for key in keep_columns:
            if key != MESSAGES:
                columns[key] = raw.dataset[key]
        return datasets.Dataset.from_dict(columns)

    def tokenize(self, dataset, tokenizer, split: str):
        self._ready(tokenizer)
        c = self.config

        def encode(batch: dict[str, list]) -> dict[str, list]:
            out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": [], "length": []}
            for messages in batch[MESSAGES]:
                ids, labels = chat_template.encode(tokenizer, messages, c.train_on, c.max_length)
                if all(label == IGNORE_INDEX for label in labels):
                    continue  # no assistant token left after cutting at max_length
                out["input_ids"].append(ids)
                out["attention_mask"].append([1] * len(ids))
                out["labels"].append(labels)
                out["length"].append(len(ids))
            return out

        encoded = dataset.map(encode, batched=True, remove_columns=dataset.column_names)
        dropped = len(dataset) - len(encoded)
        self.dropped[split] = dropped
        replies = "last assistant reply" if c.train_on == "last_assistant_turn" else "assistant replies"
        if len(encoded) == 0:
            raise FtlError(
                f"{split} data: every conversation's {replies} start{'s' * (c.train_on == 'last_assistant_turn')} "
                f"after task.max_length={c.max_length} tokens, so nothing is left to train on; raise "
                "task.max_length"
            )
        if dropped:
            log(
                f"[yellow]{split}: dropped {dropped} of {len(dataset)} conversations with no token of their "
                f"{replies} within task.max_length={c.max_length}[/]"
            )
        return pack_examples(encoded, c.max_length) if c.packing else encoded

    def collator(self, tokenizer):
        if self.config.packing:
            return PackedCollator(pad_id(tokenizer))
        return PaddingCollator(tokenizer, label_pad_id=IGNORE_INDEX)

    # perplexity on the labelled (assistant) tokens, as for a causal LM's instruction tuning
    preprocess_logits_for_metrics = CausalLM.preprocess_logits_for_metrics
    compute_metrics = CausalLM.compute_metrics

    def dataset_stats(self, dataset, tokenizer) -> dict[str, Any]:
        stats = super().dataset_stats(dataset, tokenizer)
        stats["trained_tokens"] = int(
            sum(sum(lab != IGNORE_INDEX for lab in row) for row in dataset["labels"])
        )
        if "examples" in dataset.column_names:
            stats["conversations"] = int(sum(dataset["examples"]))
        return stats

    def check_preview(self, rows, tokenizer, dirs: list[Path], *, colour: bool = False) -> list[str]:
        """ftl check: the first training conversation with its trained tokens marked, and its token counts."""
        self.setup_template(tokenizer, dirs)
        if len(rows) == 0:
            return []
        messages = rows[0][MESSAGES]
        ids, labels = chat_template.encode(tokenizer, messages, self.config.train_on, self.config.max_length)
        trained = sum(label != IGNORE_INDEX for label in labels)
        shown = chat_template.show_masking(tokenizer, ids, labels, colour=colour)
        where = "green" if colour else "in \\[\\[...]]"
        source = "the tokenizer's" if self.config.chat_template is None else f"'{self.config.chat_template}'"
        if len(source) > 60:
            source = "the recipe's"
        return [
            f"chat: format {self._format}, {source} template, train on {self.config.train_on}; "
            f"first conversation: {len(ids)} tokens, {trained} trained ({where}):",
            shown if colour else shown.replace("[", r"\["),
        ]

    def export_rows(self, rows) -> list[dict[str, Any]]:
        """Validation rows as messages (in the recipe's messages column, or 'messages')."""
        column = self.config.messages_column if self._format == "messages" else MESSAGES
        return [{column: row[MESSAGES]} for row in rows.to_list()]

    def write_predictions(self, trainer, dataset, raw_rows, directory: Path) -> Predictions | None:
        """The last assistant reply of the first generate_rows validation dialogues, generated from the
        conversation before it (the template's generation prompt appended) and scored with ROUGE."""
        c = self.config
        if c.generate_rows == 0:
            return None
        tokenizer = trainer.processing_class
        self._ready(tokenizer)
        rows = raw_rows.select(range(min(c.generate_rows, len(raw_rows))))[MESSAGES]
        prompts = [chat_template.render(tokenizer, m[:-1], generation_prompt=True) for m in rows]
        references = [[m[-1]["content"]] for m in rows]
        texts = generate(
            trainer.model,
            tokenizer,
            prompts,
            c.generation,
            max_input_length=c.max_length,
            batch_size=trainer.args.per_device_eval_batch_size,
            synced=_zero3(trainer),
            seed=trainer.args.seed,
            keep_end=True,
            stop_token_ids=chat_template.end_of_turn_ids(tokenizer, self._template),
            add_special_tokens=False,
        )
        if not trainer.is_world_process_zero():
            return None
        return write_generations(directory, prompts, texts, references)

    # ---- using the trained model ------------------------------------------------------------------
    def plain_text_column(self) -> str | None:
        return self.config.prompt_column

    def encode_for_prediction(self, raw: RawData, tokenizer) -> PredictionInputs:
        """Each row's conversation up to its last user message (or its prompt column as the user message),
        rendered with the generation prompt."""
        self.use_tokenizer(tokenizer)
        c, columns = self.config, raw.dataset.column_names
        fmt = next(
            (
                f
                for f in (self._format, "messages", "sharegpt")
                if f and set(format_columns(f, c).values()) <= set(columns)
            ),
            None,
        )
        if fmt is None:
            require_columns(raw, {"prompt_column": c.prompt_column})
        roles = role_map(c)
        prompts, keep, skipped = [], [], {}
        for row, values in enumerate(raw.dataset.to_list()):
            where = raw.row_location(row)
            if fmt is None:
                value = values[c.prompt_column]
                if not isinstance(value, list) and is_blank(value):
                    skipped[row] = f"empty '{c.prompt_column}'"
                    continue
                messages = side_messages(value, "user", where, roles, f"'{c.prompt_column}'")
            else:
                messages = row_messages(values, fmt, c, roles, where)
            while messages and messages[-1]["role"] == "assistant":
                messages = messages[:-1]
            prompts.append(self.render_prompt(messages, where))
            keep.append(row)
        return PredictionInputs(
            rows=len(raw.dataset),
            prompts=prompts,
            prompt_rows=keep,
            prompt_settings=self.generation_defaults(),
            skipped=skipped,
        )

    def render_prompt(self, messages: list[dict], where: str) -> str:
        """A conversation ending with a user message, rendered with the generation prompt (and the system prompt)."""
        if self.config.system_prompt is not None and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": self.config.system_prompt}, *messages]
        check_conversation(messages, where, training=False)
        if messages[-1]["role"] != "user":
            raise FtlError(f"{where}: the conversation has no user message to reply to")
        if self._tokenizer is None:
            raise RuntimeError("Chat.use_tokenizer must come before rendering prompts")
        return chat_template.render(self._tokenizer, messages, generation_prompt=True)

    def predictions_to_rows(self, inputs: PredictionInputs, outputs: list, tokenizer) -> list[dict[str, Any]]:
        return generated_rows(inputs, outputs)

    def generation_prompt(self, prompt: str | dict[str, Any], *, raw: bool = False) -> str:
        """A text is one user message; a JSON object gives {"messages": [...]} (or the recipe's columns)."""
        if raw:
            return prompt if isinstance(prompt, str) else str(prompt.get("prompt", prompt.get("text", "")))
        if isinstance(prompt, str):
            return self.render_prompt([{"role": "user", "content": prompt}], "--prompt")
        roles = role_map(self.config)
        for fmt in ("messages", "sharegpt"):
            column = format_columns(fmt, self.config)
            name = next(iter(column.values()))
            if name in prompt:
                return self.render_prompt(row_messages(prompt, fmt, self.config, roles, "prompt"), "prompt")
        if self.config.prompt_column in prompt:
            text = prompt[self.config.prompt_column]
            if isinstance(text, str):
                return self.render_prompt([{"role": "user", "content": text}], "prompt")
        raise FtlError(
            f"prompt {shown(prompt)}: give a text, or a JSON object with '{self.config.messages_column}' "
            f"(a list of {{role, content}}) or '{self.config.prompt_column}'"
        )

    def generation_defaults(self) -> PromptSettings:
        tokenizer = self._tokenizer
        stops = chat_template.end_of_turn_ids(tokenizer, self._template) if tokenizer is not None else None
        return PromptSettings(
            self.config.generation,
            self.config.max_length,
            keep_end=True,
            stop_token_ids=stops,
            add_special_tokens=False,
        )
