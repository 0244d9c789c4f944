"""What the tasks that render rows with a chat template share (chat, preference): the template is resolved once
(task.chat_template, else the tokenizer's own), set on the tokenizer, and part of the prepared data's identity."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ftl.launcher.console import log
from ftl.launcher.data.prepare import SAID_BY_DRIVER, PreparedData
from ftl.launcher.recipe.data import DataSection
from ftl.launcher.tasks import chat_template
from ftl.launcher.tasks.base import Task


class TemplatedTask(Task):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._template: str | None = None  # the Jinja text in use (resolved when data is prepared)
        self._tokenizer = None  # the tokenizer rows and prompts are rendered with

    def setup_template(self, tokenizer, dirs: list[Path]) -> str:
        """Resolve task.chat_template (or the tokenizer's; a .jinja file relative to `dirs`) and set it on the
        tokenizer."""
        first = self._template is None
        if first:
            self._template = chat_template.resolve_template(self.config.chat_template, tokenizer, dirs)
        chat_template.use_template(tokenizer, self._template)
        if first:
            problems = chat_template.template_problems(tokenizer)
            for problem in problems if not os.environ.get(SAID_BY_DRIVER) else ():
                log(f"[yellow]{problem}[/]")
        self._tokenizer = tokenizer
        return self._template

    def prepare(self, data: DataSection | None, tokenizer, *, dirs: list[Path], log) -> PreparedData:
        self.setup_template(tokenizer, dirs)
        return super().prepare(data, tokenizer, dirs=dirs, log=log)

    def cache_identity(self) -> dict[str, Any]:
        return {**self.config.model_dump(mode="json"), "template_text": self._template}
