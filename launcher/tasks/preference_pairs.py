"""Preference pairs read, checked, tokenised and batched.

A row is a prompt and two replies to it, `chosen` (preferred) and `rejected`, in TRL's formats: conversational
(`prompt` a list of messages ending with a user turn, each reply a list of one assistant message) or plain text
(three strings: the prompt is one user message, each reply one assistant message). Both are rendered with the
run's chat template exactly as the chat task renders a conversation (tasks/chat_template.py): the prompt, then
the reply with its end-of-turn token, and only the reply's tokens count in its log-probability. A row that
cannot be a pair is one error naming its file:line and what is wrong.

A prompt longer than max_prompt_length tokens loses its beginning (the turn the replies answer stays); a pair
longer than max_length loses the end of its reply.
"""

from __future__ import annotations

from typing import Any

from ftl.launcher.data.collate import pad_id
from ftl.launcher.data.conversations import check_conversation, role_map, side_messages
from ftl.launcher.data.sources import RawData
from ftl.launcher.errors import FtlError
from ftl.launcher.tasks import chat_template
from ftl.launcher.token_labels import IGNORE_INDEX

SIDES = ("chosen", "rejected")
# what the trainer reads from a batch besides the token columns: the reference's log-probs, when precomputed
REFERENCE_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


def read_pairs(raw: RawData, settings) -> list[dict[str, Any]]:
    """Every row as {"prompt": [messages], "chosen": text, "rejected": text}, checked."""
    columns = {
        "prompt": settings.prompt_column,
        "chosen": settings.chosen_column,
        "rejected": settings.rejected_column,
    }
    data = raw.dataset.select_columns(list(dict.fromkeys(columns.values()))).to_list()
    roles = role_map(settings)
    return [
        read_pair(values, columns, roles, raw.row_location(row), settings.system_prompt)
        for row, values in enumerate(data)
    ]


def read_pair(
    values: dict[str, Any],
    columns: dict[str, str],
    roles: dict[str, str],
    where: str,
    system_prompt: str | None,
) -> dict[str, Any]:
    prompt_column = columns["prompt"]
    prompt = side_messages(values.get(prompt_column), "user", where, roles, f"'{prompt_column}'")
    if system_prompt is not None and prompt[0]["role"] != "system":
        prompt = [{"role": "system", "content": system_prompt}, *prompt]
    check_conversation(prompt, where, training=False, column=f"'{prompt_column}'")
    if prompt[-1]["role"] != "user":
        raise FtlError(
            f"{where}: '{prompt_column}' ends with a{'n' if prompt[-1]['role'] == 'assistant' else ''} "
            f"{prompt[-1]['role']} message; a prompt ends with the user turn that the replies answer"
        )
    pair: dict[str, Any] = {"prompt": prompt}
    for side in SIDES:
        pair[side] = _reply(values.get(columns[side]), columns[side], roles, where)
    if pair["chosen"].strip() == pair["rejected"].strip():
        raise FtlError(
            f"{where}: '{columns['chosen']}' and '{columns['rejected']}' are the same reply; a pair needs two "
            "different replies (drop the row)"
        )
    return pair


def _reply(value: Any, column: str, roles: dict[str, str], where: str) -> str:
    if isinstance(value, list) and not value:
        raise FtlError(f"{where}: '{column}' is an empty list; give the reply as one assistant message")
    messages = side_messages(value, "assistant", where, roles, f"'{column}'")
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        found = ", ".join(m["role"] for m in messages)
        raise FtlError(
            f"{where}: '{column}' holds {len(messages)} message(s) ({found}); a reply is one assistant message "
            "(the conversation before it belongs in the prompt)"
        )
    return messages[0]["content"]


def encode_reply(
    tokenizer, prompt: list[dict], reply: str, max_length: int, max_prompt_length: int
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of the prompt and one reply as the chat task renders them (labels: the reply's tokens
    and its end of turn, IGNORE_INDEX elsewhere), the prompt cut from its start to max_prompt_length tokens and
    the whole to max_length."""
    messages = [*prompt, {"role": "assistant", "content": reply}]
    ids, labels = chat_template.encode(tokenizer, messages, "last_assistant_turn", 2**31)
    start = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
    cut = max(0, start - max_prompt_length)
    return ids[cut:][:max_length], labels[cut:][:max_length]


def prompt_tokens(labels: list[int]) -> int:
    return next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))


class PairCollator:
    """A batch of B pairs as one batch of 2B sequences, the B chosen first, right-padded to the longest:
    input_ids, attention_mask, labels (IGNORE_INDEX off the replies), and the reference's log-probs if given."""

    def __init__(self, tokenizer) -> None:
        self.pad_id = pad_id(tokenizer)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        ids = [f[f"{side}_input_ids"] for side in SIDES for f in features]
        labels = [f[f"{side}_labels"] for side in SIDES for f in features]
        width = max(len(row) for row in ids)
        batch: dict[str, Any] = {
            "input_ids": torch.tensor([row + [self.pad_id] * (width - len(row)) for row in ids]),
            "attention_mask": torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids]),
            "labels": torch.tensor([row + [IGNORE_INDEX] * (width - len(row)) for row in labels]),
        }
        for column in REFERENCE_COLUMNS:
            if column in features[0]:
                batch[column] = torch.tensor([f[column] for f in features], dtype=torch.float32)
        return batch
