"""Conversations in the formats people keep them in, read into one shape: a list of {role, content} messages.

Formats: `messages` (OpenAI-style, {role, content}), `sharegpt` ({from, value}, speakers mapped to roles) and
`prompt_completion` (a prompt and its completion, each a text or a list of messages, as TRL reads them); and
"Human: ... Assistant: ..." transcripts, as Anthropic's HH-RLHF keeps its dialogues (preference pairs). A row
that cannot be a conversation is one error naming its file:line and what is wrong: an empty conversation, an
unknown role (with did-you-mean), a message without content, roles that do not alternate (a system message
only first), or, for training, a conversation that does not end with an assistant reply.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ftl.launcher.data.sources import RawData
from ftl.launcher.errors import FtlError, did_you_mean, one_of
from ftl.launcher.recipe.tasks import DEFAULT_ROLE_MAP

ROLES = ("system", "user", "assistant")
FORMATS = ("messages", "sharegpt", "prompt_completion")


def detect_format(columns: list[str], settings) -> str:
    """The format a recipe's `auto` means for these columns (the first whose column is present)."""
    if settings.messages_column in columns:
        return "messages"
    if settings.conversations_column in columns:
        return "sharegpt"
    if settings.prompt_column in columns and settings.completion_column in columns:
        return "prompt_completion"
    raise FtlError(
        f"task.format auto: no column '{settings.messages_column}' (messages), '{settings.conversations_column}' "
        f"(sharegpt) or '{settings.prompt_column}' + '{settings.completion_column}' (prompt_completion); columns "
        f"are: {one_of(columns)}; name the format and its column (task.format, task.messages_column, ...)"
    )


def format_columns(fmt: str, settings) -> dict[str, str]:
    """task.<key> -> column, for the columns a format reads."""
    if fmt == "messages":
        return {"messages_column": settings.messages_column}
    if fmt == "sharegpt":
        return {"conversations_column": settings.conversations_column}
    return {"prompt_column": settings.prompt_column, "completion_column": settings.completion_column}


def role_map(settings) -> dict[str, str]:
    return {**DEFAULT_ROLE_MAP, **settings.role_map}


def read_conversations(
    raw: RawData, settings, fmt: str, *, training: bool = True, system_prompt: str | None = None
) -> list[list[dict[str, str]]]:
    """Every row of `raw` as a validated list of messages (system_prompt first where a row has none)."""
    columns = format_columns(fmt, settings)
    data = raw.dataset.select_columns(list(columns.values())).to_list()
    roles = role_map(settings)
    conversations = []
    for row, values in enumerate(data):
        where = raw.row_location(row)
        messages = row_messages(values, fmt, settings, roles, where)
        if system_prompt is not None and messages and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system_prompt}, *messages]
        check_conversation(messages, where, training=training, column=_column_name(fmt, settings))
        conversations.append(messages)
    return conversations


def _column_name(fmt: str, settings) -> str:
    return " + ".join(f"'{c}'" for c in format_columns(fmt, settings).values())


def row_messages(values: dict[str, Any], fmt: str, settings, roles: dict[str, str], where: str) -> list[dict]:
    """One row's messages, roles mapped (not yet checked for order)."""
    if fmt == "messages":
        return _message_list(values[settings.messages_column], where, roles, f"'{settings.messages_column}'")
    if fmt == "sharegpt":
        return _message_list(
            values[settings.conversations_column], where, roles, f"'{settings.conversations_column}'"
        )
    prompt = side_messages(
        values[settings.prompt_column], "user", where, roles, f"'{settings.prompt_column}'"
    )
    completion = side_messages(
        values[settings.completion_column], "assistant", where, roles, f"'{settings.completion_column}'"
    )
    return prompt + completion


def json_messages(value: Any, roles: dict[str, str]) -> list | None:
    """A list of messages written as JSON text (a list column exported to CSV, or json.dumps of the list in a
    JSON Lines file), else None: text that is not such a list stays text (a reply that is JSON of records with
    a 'role' field, '[{"name": "Alice", "role": "CEO"}]', is text: its roles are no speakers)."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return None
    try:
        decoded = json.loads(text)
    except ValueError:
        return None
    if isinstance(decoded, list) and decoded and all(_is_message(m, roles) for m in decoded):
        return decoded
    return None


def _is_message(item: Any, roles: dict[str, str]) -> bool:
    if not isinstance(item, dict):
        return False
    speaker, said = ("role", "content") if "role" in item else ("from", "value")
    name = str(item.get(speaker))
    return said in item and (name in roles or name.lower() in roles)


def side_messages(value: Any, role: str, where: str, roles: dict[str, str], column: str) -> list[dict]:
    """A prompt or completion: a text (one message of `role`) or a list of messages (also as JSON text)."""
    value = json_messages(value, roles) or value
    if not isinstance(value, (str, list, type(None))):
        raise FtlError(
            f"{where}: {column} holds {type(value).__name__} ({str(value)[:40]}); give a text, or a list of "
            "messages ({role, content} objects)"
        )
    if isinstance(value, str):
        if not value.strip():
            raise FtlError(f"{where}: {column} is empty; give the row text there, or drop it")
        return [{"role": role, "content": value}]
    if value is None:
        raise FtlError(f"{where}: no {column}; give the row text there, or drop it")
    return _message_list(value, where, roles, column)


# a turn of a transcript in Anthropic HH-RLHF's text format ("\n\nHuman: ...\n\nAssistant: ..."), as the hub's
# Anthropic/hh-rlhf keeps whole dialogues in its chosen and rejected columns
_TRANSCRIPT_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")


def transcript_messages(text: str, where: str, column: str) -> list[dict] | None:
    """A "Human: ... Assistant: ..." transcript as messages (roles user and assistant, each turn's text
    stripped); None if the text does not start with a "Human:" turn."""
    stripped = text.lstrip()
    if not stripped.startswith("Human:"):
        return None
    parts = _TRANSCRIPT_TURN.split(stripped)
    turns = [
        {"role": speaker.lower(), "content": said.strip()}
        for speaker, said in zip(parts[1::2], parts[2::2], strict=True)
    ]
    return _message_list(turns, where, {"human": "user", "assistant": "assistant"}, column)


def _message_list(value: Any, where: str, roles: dict[str, str], column: str) -> list[dict]:
    value = json_messages(value, roles) or value
    if value is None or (isinstance(value, list) and not value):
        raise FtlError(f"{where}: empty conversation in {column}; give it messages, or drop the row")
    if not isinstance(value, list):
        raise FtlError(
            f"{where}: {column} holds {type(value).__name__}, not a list of messages "
            "({role, content} or {from, value} objects)"
        )
    messages = []
    for n, message in enumerate(value, 1):
        if not isinstance(message, dict):
            raise FtlError(
                f"{where}: message {n} in {column} is {type(message).__name__}, not an object with role and content"
            )
        speaker = message.get("role") if message.get("role") is not None else message.get("from")
        content = message.get("content") if message.get("role") is not None else message.get("value")
        if speaker is None:
            raise FtlError(f"{where}: message {n} in {column} has no role (a 'role' or 'from' key)")
        speaker = str(speaker)
        role = roles.get(speaker, roles.get(speaker.lower()))
        if role is None:
            raise FtlError(
                f"{where}: message {n} has the unknown role '{speaker}'{did_you_mean(speaker, list(roles))}; "
                f"roles are {', '.join(sorted(roles))} (map others with task.role_map)"
            )
        if isinstance(content, list):  # OpenAI's (and TRL's) content parts: [{"type": "text", "text": ...}]
            content = _text_of_parts(content, f"{where}: message {n} ({role}) in {column}")
        if content is not None and not isinstance(content, str):
            raise FtlError(
                f"{where}: message {n} ({role}) in {column} has content of type {type(content).__name__} "
                f"({str(content)[:40]}), not text; give it text"
            )
        if not isinstance(content, str) or not content.strip():
            what = "empty content" if isinstance(content, str) else "no content"
            raise FtlError(
                f"{where}: message {n} ({role}) in {column} has {what}; give it text, or drop the row"
            )
        if message.get("weight") is None:
            messages.append({"role": role, "content": content})
            continue
        weight = message["weight"]
        if isinstance(weight, str) or weight not in (0, 1):
            raise FtlError(
                f"{where}: message {n} ({role}) in {column} has weight {weight!r}; a weight is 0 (not trained) or "
                "1 (trained, as assistant turns are by default)"
            )
        messages.append({"role": role, "content": content, "weight": int(weight)})
    if any("weight" in m for m in messages):  # one schema for every message of the row (Arrow needs it)
        messages = [{**m, "weight": m.get("weight", 1)} for m in messages]
    return messages


def _text_of_parts(parts: list, what: str) -> str:
    """Content given as parts: its text parts joined by newlines (the text a chat template would render)."""
    texts = []
    for k, part in enumerate(parts, 1):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind is not None and kind != "text":
            raise FtlError(f"{what}: content part {k} is {kind!r}; ftl tunes text: keep the text parts only")
        else:
            raise FtlError(
                f'{what}: content part {k} is not a text part ({{"type": "text", "text": ...}}); give the content '
                "as text"
            )
    return "\n".join(texts)


def check_conversation(messages: list[dict], where: str, *, training: bool, column: str = "") -> None:
    """A system message only first, then user and assistant alternating from user; for training the last message
    is an assistant reply."""
    if not messages:
        raise FtlError(f"{where}: empty conversation in {column}; give it messages, or drop the row")
    expected = "user"
    for n, message in enumerate(messages, 1):
        role = message["role"]
        if role == "system":
            if n != 1:
                raise FtlError(
                    f"{where}: message {n} is a system message; a system message may only come first"
                )
            continue
        if role != expected:
            previous = messages[n - 2]["role"] if n > 1 else None
            after = f" after '{previous}'" if previous else " first"
            raise FtlError(
                f"{where}: message {n} is '{role}'{after}; roles must alternate user, assistant, user, ... "
                "(starting with user, a system message only first)"
            )
        expected = "assistant" if role == "user" else "user"
    if training and messages[-1]["role"] != "assistant":
        raise FtlError(
            f"{where}: the last message is '{messages[-1]['role']}'; a training conversation ends with an "
            "assistant reply (the text the model learns)"
        )
