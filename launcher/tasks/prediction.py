"""Predicting without labels (`ftl predict`, `ftl generate`): what a task hands the prediction loop, and helpers
the tasks share.

A task turns the rows of a file into `PredictionInputs`: either *features* (tokenised model inputs, each tied to
the input row it came from; a long row may give several, e.g. QA windows) that the loop runs through the model
in batches, or *prompts* that it generates text for. The loop hands back, per feature, the model outputs the
task named (trimmed to the feature's own tokens when they have a position axis), or per prompt the generated
text; the task turns those into prediction fields per input row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ftl.launcher.data.sources import RawData
from ftl.launcher.errors import FtlError, did_you_mean, one_of
from ftl.launcher.recipe.tasks import TRAINED_MODEL_VERBS

# Verbs that use a trained model, and the Task hook each one needs (a task supports a verb when it overrides it).
VERB_HOOKS = {"ftl predict": "encode_for_prediction", "ftl generate": "generation_prompt"}


@dataclass
class PromptSettings:
    """How a generation task's prompts are generated from."""

    generation: Any  # the run's GenerationSettings (ftl generate may change them)
    max_input_length: int  # prompt tokens the model takes
    keep_end: bool = False  # a longer prompt keeps its end (a text to continue), else its start
    stop_token_ids: list[int] | None = None  # end generating at these (a chat template's end of turn)
    add_special_tokens: bool = True  # False: prompts are rendered by a chat template that places its own BOS


@dataclass
class PredictionInputs:
    """A file's rows, ready for the prediction loop."""

    rows: int  # input rows (each gets one output row, in order)
    features: list[dict[str, list[int]]] = field(default_factory=list)  # model inputs, one forward row each
    feature_rows: list[int] = field(default_factory=list)  # the input row of each feature
    outputs: tuple[str, ...] = ("logits",)  # model outputs the task reads
    per_token: bool = False  # the outputs have a position axis (trimmed to each feature's tokens)
    # model inputs the same for every row: a number, or a function of the model (e.g. the task_id of a head)
    constant_inputs: dict[str, Any] = field(default_factory=dict)
    prompts: list[str] | None = None  # generation tasks: texts to generate from, instead of features
    prompt_rows: list[int] = field(default_factory=list)  # the input row of each prompt
    prompt_settings: PromptSettings | None = None
    skipped: dict[int, str] = field(default_factory=dict)  # rows without a prediction, and why
    notes: list[str] = field(default_factory=list)  # what the user should know (truncation, windows)
    state: dict[str, Any] = field(default_factory=dict)  # the task's bookkeeping from encoding to decoding


def unsupported(task_type: str, verb: str) -> FtlError:
    """'ftl predict does not support masked_lm runs; it supports ...' (one line)."""
    others = [t for t in TRAINED_MODEL_VERBS[verb] if t != task_type]
    elsewhere = [v for v, types in TRAINED_MODEL_VERBS.items() if v != verb and task_type in types]
    hint = (
        f"; use {' or '.join(elsewhere)} for this run"
        if elsewhere
        else "; ftl eval scores it on a labelled file"
    )
    return FtlError(
        f"{verb}: a {task_type} run cannot be used with {verb} (it supports {', '.join(others)} runs){hint}"
    )


def require_columns(raw: RawData, columns: dict[str, str | None]) -> None:
    """Every named column exists in the file: else one line naming the column, the file and its columns."""
    present = raw.dataset.column_names
    for key, column in columns.items():
        if column is not None and column not in present:
            raise FtlError(
                f"{raw.what}: {raw.description} has no column '{column}' (the run's task.{key})"
                f"{did_you_mean(column, present)}; its columns are: {one_of(present)}"
            )


def is_blank(value: Any) -> bool:
    return value is None or not str(value).strip()


def softmax(values):
    """Probabilities over the last axis (float64)."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    shifted = np.exp(values - values.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def encode_features(
    tokenizer, first: list, second: list | None = None, **kwargs
) -> list[dict[str, list[int]]]:
    """Tokenise and split the result into one dict of model inputs per row (none for no rows: a tokenizer
    cannot take an empty batch)."""
    if not first:
        return []
    encoded = tokenizer(first, second, **kwargs)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
    return [{k: list(encoded[k][i]) for k in keys} for i in range(len(encoded["input_ids"]))]


def longer_than(tokenizer, max_length: int, first: list, second: list | None = None) -> int:
    """How many rows have more than max_length tokens (the model sees only the first max_length)."""
    if not first:
        return 0
    lengths = tokenizer(first, second, truncation=False, return_length=True)["length"]
    return sum(1 for n in lengths if n > max_length)


def cut_note(count: int, total: int, max_length: int, what: str = "rows") -> list[str]:
    if not count:
        return []
    return [
        f"{count} of {total} {what} are longer than task.max_length={max_length} tokens: cut there, as in training"
    ]


def generated_rows(inputs: PredictionInputs, texts: list[str]) -> list[dict[str, Any]]:
    """`generated` per input row (None for skipped rows), from the text generated for each prompt."""
    rows: list[dict[str, Any]] = [{"generated": None} for _ in range(inputs.rows)]
    for row, text in zip(inputs.prompt_rows, texts, strict=True):
        rows[row] = {"generated": text}
    return rows


def shown(prompt: Any, limit: int = 60) -> str:
    """A prompt as JSON, shortened for an error message."""
    import json

    text = json.dumps(prompt, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."
