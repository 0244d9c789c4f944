"""The data sections of a recipe: where each split comes from, how validation is carved, subsets, folds."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ftl.launcher.recipe.folds import FoldSplit
from ftl.launcher.recipe.section import Section, Seed


class DataSource(Section):
    """One split's data: a local file first, else a hub dataset."""

    path: str | None = Field(
        None,
        description="A file (csv, tsv, json, jsonl, txt, parquet), a glob, or a directory. Relative paths are "
        "looked up next to the recipe, then in each directory of $FTL_DATA_HOME, then in the default data homes.",
    )
    hub: str | None = Field(
        None, description="A `datasets.load_dataset` id, used when `path` is absent or not found."
    )
    hub_config: str | None = Field(None, description="Configuration name of the hub dataset.")
    split: str = Field("train", description="Split of the hub dataset to read.")
    format: Literal["auto", "csv", "tsv", "json", "jsonl", "text", "parquet", "conll", "squad"] = Field(
        "auto",
        description="File format; 'auto' uses the file extension (.conll/.iob/.bio: CoNLL token-per-line columns; a "
        ".json file in SQuAD's nested layout: squad).",
    )
    rename: dict[str, str] = Field(
        default_factory=dict,
        description="Rename columns of this source, old: new (e.g. a hub dataset's ner_tags: tags), so one task "
        "section reads local files and hub datasets alike. A source that already has the new name is left as is.",
    )
    text_sample_by: Literal["line", "paragraph", "document"] = Field(
        "paragraph",
        description="For text files: one example per line, per blank-line paragraph, or per file.",
    )

    @model_validator(mode="after")
    def _needs_a_location(self) -> DataSource:
        if not self.path and not self.hub:
            raise ValueError("give a path (a local file) or hub (a dataset id), or both")
        return self


class ValidationSplit(Section):
    """How to carve a validation split out of train when no validation data is given."""

    fraction: float = Field(0.1, gt=0, lt=1, description="Share of the training rows held out.")
    seed: Seed = Field(42, description="Seed of the split (independent of the training seed).")
    method: Literal["auto", "stratified", "random", "tail", "group"] = Field(
        "auto",
        description="stratified keeps label ratios (classification); random shuffles; tail holds out the last "
        "rows in file order (e.g. the last chapters of a book); group holds out whole groups of group_column "
        "(e.g. every question of an article), so no group is on both sides. auto: group when group_column is "
        "set, else stratified for classification, random for question answering, tail otherwise.",
    )
    group_column: str | None = Field(
        None, description="Column whose values never straddle train and validation (method group)."
    )

    @model_validator(mode="after")
    def _group_needs_a_column(self) -> ValidationSplit:
        if self.method == "group" and not self.group_column:
            raise ValueError("method group needs group_column (e.g. title: no article on both sides)")
        if self.group_column and self.method not in ("group", "auto"):
            raise ValueError(f"group_column needs method group (or auto), not {self.method}")
        return self


def _source_shorthand(value: Any) -> Any:
    return {"path": value} if isinstance(value, str) else value


class DataSection(Section):
    """Training and evaluation data."""

    train: DataSource
    validation: DataSource | None = Field(None, description="Validation data; carved from train when absent.")
    validation_split: ValidationSplit = Field(default_factory=ValidationSplit)
    max_train_rows: int | None = Field(
        None, gt=0, description="Use a seeded random subset of train (quick runs)."
    )
    max_eval_rows: int | None = Field(None, gt=0, description="Use a seeded random subset of validation.")
    oversample: bool = Field(
        False,
        description="Classification: repeat rows of the rarer classes (seeded) until every class has as many "
        "training rows as the largest one. Validation rows are never repeated.",
    )
    fold: FoldSplit | None = Field(
        None,
        description="Validate on one fold of a k-fold split of train and train on the rest (set by ftl cv for "
        "each fold; max_train_rows applies before the split).",
    )
    cache: bool = Field(True, description="Cache tokenised data under $FTL_CACHE (default ~/.cache/ftl).")

    _shorthand = field_validator("train", "validation", mode="before")(_source_shorthand)
