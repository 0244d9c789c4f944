"""Instruction tuning of a causal LM: a prompt from a template, the response after it, loss on the response only.

A row becomes `tokens(prompt) + tokens(response) + [eos]`, its labels `-100` over the prompt and the response
tokens after it: the model is never trained to reproduce the prompt. When a row is longer than max_length,
the response keeps up to half the budget and the prompt loses tokens from its middle, so its instruction (at
the start) and its cue (at the end, e.g. "TL;DR:") both survive.
"""

from __future__ import annotations

import string
from typing import Any

from ftl.launcher.data.cells import is_missing, wrong_type
from ftl.launcher.data.sources import RawData
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


def check_prompt_fields(raw: RawData, template: str) -> None:
    """The columns a prompt template reads hold text: a list or an object in one is one error line (the prompt
    would hold its printed form), a null is read as an empty text and noted, and a source where most rows have
    every field of the prompt empty (the prompt is the template's own words alone) is one error line."""
    fields = template_fields(template)
    columns = {name: raw.dataset[name] for name in fields}
    total = len(raw.dataset)
    bare = []  # rows whose every prompt field is empty
    for row in range(total):
        empty = 0
        for name, values in columns.items():
            value = values[row]
            if isinstance(value, (dict, list)):
                raise wrong_type(
                    raw,
                    row,
                    name,
                    f"task.prompt_template {{{name}}}",
                    value,
                    fix="ftl would put its printed form in the prompt: put the text itself in the column",
                )
            if is_missing(value):
                raw.note("coerced", f"no '{name}' read as an empty text", row)
            if is_missing(value) or not str(value).strip():
                empty += 1
        if fields and empty == len(fields):
            bare.append(row)
    if bare and len(bare) * 2 > total:
        shown = " or ".join(f"'{name}'" for name in fields)
        raise FtlError(
            f"{raw.row_location(bare[0])}: {len(bare)} of {total} rows of {raw.description} have no text in "
            f"{shown} (the fields of task.prompt_template; this row is the first): their prompts would be the "
            "template alone; fix the file, or name the columns that hold the text in task.prompt_template"
        )


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
