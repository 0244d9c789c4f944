"""Argument types shared by the `ftl` verbs defined in several modules (launcher/cli.py, cluster/commands.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file.", show_default=False)]
OverridesArg = Annotated[
    list[str] | None, typer.Argument(help="KEY=VALUE overrides, e.g. train.lr=3e-5 data.max_train_rows=500.")
]
