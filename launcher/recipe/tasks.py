"""Recipe sections for each task (the `task:` block), chosen by `task.type`.

Each task adds one class here (its settings) and one module in `launcher/tasks/` (its behaviour).
This module stays free of heavy imports so that `ftl check` starts fast.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from launcher.recipe.section import Section


class SequenceClassificationTask(Section):
    """Sentence or sentence-pair classification (sentiment, NLI, topic, ...)."""

    type: Literal["sequence_classification"]
    metrics: ClassVar[dict[str, str]] = {"accuracy": "max", "f1_macro": "max", "loss": "min"}
    main_metric: ClassVar[str] = "accuracy"
    text_column: str = Field("text", description="Column holding the text to classify.")
    text_pair_column: str | None = Field(
        None, description="Second text column for pair tasks (NLI, paraphrase)."
    )
    label_column: str = Field("label", description="Column holding the label (a name or an integer id).")
    labels: list[str] | None = Field(
        None,
        min_length=2,
        description="Label names in id order. Integer labels in the data index this list; string labels must "
        "be among these names. Derived from the training data (sorted) when absent.",
    )
    max_length: int = Field(128, gt=0, description="Token limit per example; longer inputs are truncated.")


class CausalLMTask(Section):
    """Next-token language-model fine-tuning on raw text."""

    type: Literal["causal_lm"]
    metrics: ClassVar[dict[str, str]] = {"perplexity": "min", "loss": "min"}
    main_metric: ClassVar[str] = "perplexity"
    text_column: str = Field("text", description="Column holding the text.")
    max_length: int = Field(512, gt=1, description="Block size in tokens for training sequences.")
    packing: bool = Field(
        True,
        description="Concatenate documents and cut them into full blocks of max_length tokens (no padding). "
        "When false each document is one sequence, truncated and padded per batch.",
    )
    add_eos: bool = Field(
        True,
        description="When packing, end each row with the end-of-sequence token (rows are documents); when false, "
        "rows are joined with a blank line (rows are paragraphs of one text, e.g. a book).",
    )


TaskSection = Annotated[SequenceClassificationTask | CausalLMTask, Field(discriminator="type")]

TASK_TYPES: tuple[str, ...] = ("sequence_classification", "causal_lm")
