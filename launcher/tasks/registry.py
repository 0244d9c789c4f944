"""task.type -> Task implementation."""

from __future__ import annotations

from typing import Any

from launcher.tasks.base import Task


def task_for(config: Any) -> Task:
    """Build the Task for a validated `task:` section."""
    from launcher.tasks.causal_lm import CausalLM
    from launcher.tasks.classification import SequenceClassification

    implementations: dict[str, type[Task]] = {
        "sequence_classification": SequenceClassification,
        "causal_lm": CausalLM,
    }
    return implementations[config.type](config)
