"""Base class of every recipe section: strict (unknown keys are errors), documented fields, finite numbers.

Numbers the libraries cannot take are refused here, once, for every section: infinities and NaN anywhere
(pydantic's `allow_inf_nan=False`), and seeds outside the 32-bit range numpy and scikit-learn accept (`Seed`).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

SEED_MAX = 2**32 - 1
STEPS_MAX = 2**31 - 1  # counts of steps: PyTorch and HF keep them in 32-bit integers in places

Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]


class Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", validate_default=True, use_attribute_docstrings=False, allow_inf_nan=False
    )
