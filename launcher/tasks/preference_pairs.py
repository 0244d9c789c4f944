"""Preference pairs read, checked, tokenised and batched.

A row is a prompt and two replies to it, `chosen` (preferred) and `rejected`, in TRL's formats: conversational
(`prompt` a list of messages ending with a user turn, each reply a list of one assistant message) or plain text
(three strings: the prompt is one user message, each reply one assistant message). With no prompt column, the
implicit prompt as TRL reads it: `chosen` and `rejected` each hold the whole conversation (a list of messages, or a
"Human: ... Assistant: ..." transcript as the hub's Anthropic/hh-rlhf does), and the turns the two share are the
prompt. All are rendered with the run's chat template exactly as the chat task renders a conversation
(tasks/chat_template.py): the prompt, then the reply with its end-of-turn token, and only the reply's tokens count
in its log-probability. A row that cannot be a pair is one error naming its file:line and what is wrong.

A prompt longer than max_prompt_length tokens loses its beginning (the turn the replies answer stays); a pair
longer than max_length loses the end of its reply.
"""

from __future__ import annotations

from typing import Any

from ftl.launcher.data.collate import pad_id
from ftl.launcher.data.conversations import (
    check_conversation,
    json_messages,
    role_map,
    side_messages,
    transcript_messages,
)
from ftl.launcher.data.sources import RawData
from ftl.launcher.errors import FtlError, one_of
from ftl.launcher.recipe.tasks import PreferenceTask
from ftl.launcher.tasks import chat_template
from ftl.launcher.token_labels import IGNORE_INDEX

SIDES = ("chosen", "rejected")
DEFAULT_PROMPT_COLUMN = PreferenceTask.model_fields["prompt_column"].default
# what the trainer reads from a batch besides the token columns: the reference's log-probs, when precomputed
REFERENCE_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


def has_implicit_prompt(columns: list[str], settings) -> bool:
    """No prompt column (the default name: a recipe that names another wants that column), both reply columns:
    each holds the whole conversation."""
    return (
        settings.prompt_column == DEFAULT_PROMPT_COLUMN
        and settings.prompt_column not in columns
        and settings.chosen_column in columns
        and settings.rejected_column in columns
    )


def read_pairs(raw: RawData, settings) -> list[dict[str, Any]]:
    """Every row as {"prompt": [messages], "chosen": text, "rejected": text}, checked."""
    columns = {
        "prompt": settings.prompt_column,
        "chosen": settings.chosen_column,
        "rejected": settings.rejected_column,
    }
    implicit = has_implicit_prompt(raw.dataset.column_names, settings)
    others = [c for c in raw.dataset.column_names if c not in columns.values()]
    hint = (
        f"; or name the prompt's column in task.prompt_column (columns: {one_of(others)})" if others else ""
    )
    read = [c for key, c in columns.items() if not (implicit and key == "prompt")]
    data = raw.dataset.select_columns(list(dict.fromkeys(read))).to_list()
    roles = role_map(settings)
    pairs = []
    for row, values in enumerate(data):
        where = raw.row_location(row)
        if implicit:
            values = split_implicit_prompt(values, columns, roles, where, hint)
        pairs.append(read_pair(values, columns, roles, where, settings.system_prompt))
    return pairs


def split_implicit_prompt(
    values: dict[str, Any], columns: dict[str, str], roles: dict[str, str], where: str, hint: str = ""
) -> dict[str, Any]:
    """TRL's implicit prompt: the turns both whole conversations share are the prompt, what follows each its reply.
    `hint` ends the errors that may mean the prompt is in a column the recipe did not name."""
    sides = {
        side: _whole_conversation(values.get(columns[side]), columns, side, roles, where, hint)
        for side in SIDES
    }
    chosen, rejected = sides["chosen"], sides["rejected"]
    named = f"'{columns['chosen']}' and '{columns['rejected']}'"
    shared = 0
    while shared < min(len(chosen), len(rejected)) and _same_turn(chosen[shared], rejected[shared]):
        shared += 1
    if shared == len(chosen) == len(rejected):
        raise FtlError(
            f"{where}: {named} are the same conversation; a pair needs two different replies (drop the row)"
        )
    if shared == 0:
        raise FtlError(
            f"{where}: {named} share no first turn; with no '{columns['prompt']}' column each holds the whole "
            f"conversation (TRL's implicit prompt), the same turns and then its own reply{hint}"
        )
    if any(len(conversation) != shared + 1 for conversation in (chosen, rejected)):
        raise FtlError(
            f"{where}: {named} differ from turn {shared + 1} on, not only in their last reply ({len(chosen)} and "
            f"{len(rejected)} turns); with no '{columns['prompt']}' column each holds the shared conversation and "
            "then one assistant reply"
        )
    for side, conversation in sides.items():
        if conversation[-1]["role"] != "assistant":
            raise FtlError(
                f"{where}: '{columns[side]}' ends with a {conversation[-1]['role']} turn; each conversation ends "
                "with its assistant reply (TRL's implicit prompt)"
            )
    if chosen[shared - 1]["role"] != "user":
        raise FtlError(
            f"{where}: the turns {named} share end with a{'n' if chosen[shared - 1]['role'] == 'assistant' else ''} "
            f"{chosen[shared - 1]['role']} turn (turn {shared}); the two replies answer the same user turn"
        )
    return {
        columns["prompt"]: chosen[:shared],
        columns["chosen"]: chosen[shared:],
        columns["rejected"]: rejected[shared:],
    }


def _whole_conversation(
    value: Any, columns: dict[str, str], side: str, roles: dict[str, str], where: str, hint: str
) -> list[dict]:
    column = f"'{columns[side]}'"
    value = json_messages(value, roles) or value
    if not (isinstance(value, str) and value.strip()):  # a list of messages; None or an empty text is refused
        return side_messages(value, "assistant", where, roles, column)
    messages = transcript_messages(value, where, column)
    if messages is None:
        raise FtlError(
            f"{where}: there is no '{columns['prompt']}' column and {column} is a text, not a whole conversation "
            '(a list of messages or a "Human: ... Assistant: ..." transcript, TRL\'s implicit prompt); add the '
            f"'{columns['prompt']}' column{hint}"
        )
    return messages


def _same_turn(a: dict, b: dict) -> bool:
    return a["role"] == b["role"] and a["content"].strip() == b["content"].strip()


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
