"""Instruction tuning of a causal LM: a prompt from a template, the response after it, loss on the response only.

A row becomes `tokens(prompt) + tokens(response) + [eos]`, its labels `-100` over the prompt and the response
tokens after it: the model is never trained to reproduce the prompt. When a row is longer than max_length,
the response keeps up to half the budget and the prompt loses tokens from its middle, so its instruction (at
the start) and its cue (at the end, e.g. "TL;DR:") both survive.
"""

from __future__ import annotations

import string
from typing import Any

from ftl.launcher.errors import FtlError
from ftl.launcher.token_labels import IGNORE_INDEX

_PROMPT_TAIL = 24  # tokens kept from the end of a cut prompt (the cue right before the response)


def template_fields(template: str) -> list[str]:
    """The {column} names a prompt template reads."""
    try:
        names = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as exc:
        raise FtlError(f"task.prompt_template: {exc} (write literal braces as {{{{ and }}}})") from None
    for name in names:
        if not name.isidentifier():
            raise FtlError(f"task.prompt_template: {{{name}}} is not a column name")
    return list(dict.fromkeys(names))


def render(template: str, row: dict[str, Any]) -> str:
    return template.format_map({key: "" if value is None else value for key, value in row.items()})


def encode(tokenizer, prompt: str, response: str, max_length: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one example; labels mask the prompt."""
    prompt_ids = list(tokenizer(prompt)["input_ids"])
    response_ids = list(tokenizer(response, add_special_tokens=False)["input_ids"])
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if eos is not None:
        response_ids.append(eos)
    if len(prompt_ids) + len(response_ids) > max_length:
        response_ids = response_ids[: max(1, max_length // 2, max_length - len(prompt_ids))]
        budget = max_length - len(response_ids)
        tail = min(_PROMPT_TAIL, budget // 2)
        prompt_ids = prompt_ids[: budget - tail] + (prompt_ids[-tail:] if tail else [])
    return prompt_ids + response_ids, [IGNORE_INDEX] * len(prompt_ids) + response_ids
