"""A recipe as tracker parameters: flattened dotted keys (train.lr, model.config.hidden_size) with text values,
kept within MLflow's limits (key 250 characters, value 6000); numbers flattened out of nested results."""

from __future__ import annotations

import json
import math
from typing import Any

MAX_KEY = 250
MAX_VALUE = 6000


def flat_params(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{'train.lr': '0.01', 'task.labels': '["negative", "positive"]', ...}; empty sections leave no key."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flat_params(value, f"{name}."))
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        if len(text) > MAX_VALUE:
            text = text[: MAX_VALUE - 14] + "...(truncated)"
        flat[name[:MAX_KEY]] = text
    return flat


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
