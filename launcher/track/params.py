"""A recipe as tracker parameters: flattened dotted keys (train.lr, model.config.hidden_size), kept within
MLflow's limits (key 250 characters, value 6000); numbers flattened out of nested results."""

from __future__ import annotations

import json
import math
from typing import Any

MAX_KEY = 250
MAX_VALUE = 6000


def flat_params(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train.lr': 0.01, 'task.labels': ['negative', 'positive'], ...}: a (recipe) mapping flattened to dotted
    keys, values as they are (W&B keeps their types; MLflow takes them as `param_text`)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flat_params(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def param_text(value: Any) -> str:
    """A parameter's value as MLflow stores it: text (JSON for anything but text), at most 6000 characters."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 14] + "...(truncated)"


def flat_numbers(data: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a (nested) result, as dotted names: {'eval_accuracy': .9, 'before.eval_loss': .7}."""
    flat: dict[str, float] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_numbers(value, f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            flat[name] = float(value)
    return flat
