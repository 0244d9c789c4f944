"""task.type -> Task implementation."""

from __future__ import annotations

from typing import Any

from ftl.launcher.tasks.base import Task
from ftl.launcher.tasks.causal_lm import CausalLM
from ftl.launcher.tasks.chat import Chat
from ftl.launcher.tasks.classification import SequenceClassification
from ftl.launcher.tasks.masked_lm import MaskedLM
from ftl.launcher.tasks.multitask import MultiTask
from ftl.launcher.tasks.preference import Preference
from ftl.launcher.tasks.question_answering import QuestionAnswering
from ftl.launcher.tasks.seq2seq import Seq2Seq
from ftl.launcher.tasks.token_classification import TokenClassification

IMPLEMENTATIONS: dict[str, type[Task]] = {
    "sequence_classification": SequenceClassification,
    "token_classification": TokenClassification,
    "question_answering": QuestionAnswering,
    "seq2seq": Seq2Seq,
    "causal_lm": CausalLM,
    "chat": Chat,
    "preference": Preference,
    "masked_lm": MaskedLM,
    "multitask": MultiTask,
}


def task_for(config: Any) -> Task:
    """Build the Task for a validated `task:` section."""
    return IMPLEMENTATIONS[config.type](config)


def task_types_with(hook: str) -> list[str]:
    """The task types whose Task implements `hook` (e.g. encode_for_prediction), in registry order."""
    return [name for name, cls in IMPLEMENTATIONS.items() if getattr(cls, hook) is not getattr(Task, hook)]
