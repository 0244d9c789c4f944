"""`stages:` — one recipe, several runs in order, each starting from the model the one before it trained.

The classic use is task-adaptive pretraining (Gururangan et al. 2020): masked-LM training on the task's own
text, then the classifier fine-tuned from those weights:

    name: sst2-tapt
    model: {name_or_path: ...}
    data: {train: sst2/train.tsv, max_train_rows: 8000}
    stages:
      - name: mlm
        task: {type: masked_lm, text_column: sentence, max_length: 64}
        train: {epochs: 1, lr: 1.0e-4}
      - name: classify
        task: {type: sequence_classification, text_column: sentence, labels: [negative, positive]}

Every key outside `stages:` is shared; each stage's sections are merged onto it (mappings key by key, values
replace), except `task`, which a stage replaces whole. Each stage is validated as a complete recipe named
`<name>-<stage>`, with errors pointing at the stage's own lines. A stage starts from the previous stage's
model (`init_from: previous`, the default), from the recipe's own model (`init_from: base`), or from any
earlier stage by name.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from ftl.launcher.recipe.section import Section, Seed
from ftl.launcher.recipe.yaml_source import merge

STAGE_SECTIONS = (
    "model",
    "task",
    "data",
    "freeze",
    "train",
    "eval",
    "log",
    "distributed",
    "quantization",
    "lora",
)


class StageSection(Section):
    """One stage: a name, where its model starts, and the recipe sections it changes."""

    name: str = Field(
        ..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Stage name (its run folder)."
    )
    init_from: str = Field(
        "previous",
        description="Where the stage's model starts: previous (the stage before), base (the recipe's model), or "
        "the name of an earlier stage.",
    )
    seed: Seed | None = Field(None, description="A seed of its own (default: the recipe's).")
    model: dict[str, Any] | None = None
    task: dict[str, Any] | None = Field(None, description="The stage's task (replaces the recipe's).")
    data: dict[str, Any] | None = None
    freeze: dict[str, Any] | None = None
    train: dict[str, Any] | None = None
    eval: dict[str, Any] | None = None
    log: dict[str, Any] | None = None
    distributed: dict[str, Any] | None = None
    quantization: dict[str, Any] | None = None
    lora: dict[str, Any] | None = None


def stage_data(base: dict[str, Any], stage: dict[str, Any], name: str) -> dict[str, Any]:
    """The complete recipe data of one stage: the shared keys with the stage's sections merged in."""
    merged = {k: v for k, v in base.items() if k != "stages"}
    for key in STAGE_SECTIONS:
        value = stage.get(key)
        if value is None:
            continue
        if key == "task" or not isinstance(merged.get(key), dict):
            merged[key] = value
        else:
            merged[key] = merge(merged[key], value)
    if stage.get("seed") is not None:
        merged["seed"] = stage["seed"]
    merged["name"] = f"{base.get('name')}-{name}"
    return merged


def stage_origins(origins: dict, index: int) -> dict:
    """Origins of a stage's recipe: the stage's own lines over the shared ones (a replaced task hides the
    shared task's lines)."""
    prefix = ("stages", index)
    own = {path[2:]: origin for path, origin in origins.items() if path[:2] == prefix and len(path) > 2}
    shared = {
        path: origin
        for path, origin in origins.items()
        if path[:1] != ("stages",) and not (path[:1] == ("task",) and ("task",) in own)
    }
    return {**shared, **own}
