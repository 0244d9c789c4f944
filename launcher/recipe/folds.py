"""k-fold splits of the training data: the settings shared by `tune.cv` and a fold run's `data.fold`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ftl.launcher.recipe.section import Section, Seed

FoldMethod = Literal["auto", "stratified", "random", "contiguous", "group"]


class KFold(Section):
    """k folds of the training data: each fold is the validation split once, the other folds train."""

    folds: int = Field(5, ge=2, description="Number of folds.")
    method: FoldMethod = Field(
        "auto",
        description="stratified keeps label ratios; random shuffles; contiguous cuts the rows in file order (text "
        "corpora); group keeps all rows sharing a group_column value in one fold (stratified too for "
        "classification). auto: group when group_column is set, else stratified for classification and "
        "contiguous for language modelling.",
    )
    group_column: str | None = Field(
        None, description="Column whose values must not be split across folds (a user, a document, ...)."
    )
    seed: Seed = Field(42, description="Seed of the fold assignment.")

    @model_validator(mode="after")
    def _group_needs_a_column(self) -> KFold:
        if self.method == "group" and not self.group_column:
            raise ValueError("method group needs group_column (the column whose values stay together)")
        return self


class FoldSplit(KFold):
    """Train on every fold but `index`, validate on fold `index` (what `ftl cv` sets for each fold run)."""

    index: int = Field(..., ge=0, description="The fold held out for validation, from 0.")

    @model_validator(mode="after")
    def _index_is_a_fold(self) -> FoldSplit:
        if self.index >= self.folds:
            raise ValueError(f"index {self.index} is not a fold of {self.folds}; use 0 to {self.folds - 1}")
        return self
