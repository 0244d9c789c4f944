"""Base class of every recipe section: strict (unknown keys are errors), documented fields, finite numbers.

Numbers the libraries cannot take are refused here, once, for every section: infinities and NaN anywhere
(pydantic's `allow_inf_nan=False`), seeds outside the 32-bit range numpy and scikit-learn accept (`Seed`), and
booleans where a number is expected (YAML reads `yes`, `no`, `true` as booleans, and pydantic would otherwise
take them as 1 and 0).
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

SEED_MAX = 2**32 - 1
STEPS_MAX = 2**31 - 1  # counts of steps: PyTorch and HF keep them in 32-bit integers in places
BATCH_MAX = 2**20  # examples per batch: far above any real batch, far below what islice and torch accept
WORKERS_MAX = 256  # data loader worker processes
GLOBAL_BATCH_MAX = 2**31 - 1  # examples per optimizer step over every worker
WORKERS_MAX_RAY = 2**16  # Ray Train workers of one run
EPOCHS_MAX = 10**6  # passes over the data (the steps they give must stay countable)

BOOL_FOR_NUMBER = "bool_for_number"  # the error type; its ctx names the key

Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]


def _numeric_only(annotation: Any) -> bool:
    """True when the annotation takes numbers (int, float) and nothing else but None."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _numeric_only(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        kinds = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(kinds) and all(_numeric_only(a) for a in kinds)
    return annotation in (int, float)


def _or_null(annotation: Any) -> str:
    args = typing.get_args(annotation)
    return " (or null to unset it)" if type(None) in args else ""


class Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", validate_default=True, use_attribute_docstrings=False, allow_inf_nan=False
    )

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        """Refuse true/false (and YAML's yes/no/on/off) for number fields; pydantic would read them as 1 and 0."""
        if isinstance(data, dict):
            for key, value in data.items():
                field = cls.model_fields.get(key) if isinstance(key, str) else None
                if isinstance(value, bool) and field is not None and _numeric_only(field.annotation):
                    raise PydanticCustomError(
                        BOOL_FOR_NUMBER,
                        "expected a number, got the boolean {value} (YAML reads yes/no/true/false/on/off as "
                        "booleans); write a number{or_null}",
                        {"key": key, "value": str(value).lower(), "or_null": _or_null(field.annotation)},
                    )
        return data
