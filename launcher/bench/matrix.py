"""The bench matrix: `--matrix KEY=v1,v2 [KEY=...]` -> cells (the cartesian product of typed overrides).

Every cell is validated by loading the recipe with its overrides before anything runs; a bad key or value is
one line naming the dimension or the cell. Values are split on commas outside brackets and quotes, so a
value may be a YAML list or mapping: `lora.target_modules=[query,value],[query]`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from ftl.launcher.errors import FtlError, did_you_mean
from ftl.launcher.recipe.keypaths import key_path_problem
from ftl.launcher.recipe.loader import LoadedRecipe, load_recipe
from ftl.launcher.recipe.schema import Recipe

MATRIX_FLAG = "--matrix"
OPTIONS = (
    "--matrix",
    "--steps",
    "--warmup",
    "--output",
    "--peak-tflops",
    "--probe-seconds",
    "--cell-timeout",
)
# Settings every cell gets: bench decides how long a cell trains, nothing is evaluated, checkpointed, retried
# or shown as a progress bar or TensorBoard curve (the timed steps are training steps only).
RESERVED = {"train.max_steps": "the number of steps is --warmup + --steps"}


def bench_overrides(warmup: int, steps: int) -> list[str]:
    return [
        f"train.max_steps={warmup + steps}",
        "train.early_stopping=null",
        "eval.before_training=false",
        "log.tensorboard=null",
        "log.trackers=[]",  # a cell's numbers go to the bench's own tracker runs (bench/tracking.py)
        "log.progress=false",
        "distributed.max_failures=0",
    ]


@dataclass(frozen=True)
class Dimension:
    key: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Cell:
    index: int  # 1-based
    settings: tuple[tuple[str, str], ...]  # (key, value) per dimension

    @property
    def name(self) -> str:
        return f"cell-{self.index:02d}"

    @property
    def overrides(self) -> list[str]:
        return [f"{key}={value}" for key, value in self.settings]

    def label(self, separator: str = " ", *, full: bool = False) -> str:
        return (
            separator.join(f"{key if full else short_key(key)}={value}" for key, value in self.settings)
            or "the recipe"
        )


def short_key(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def split_arguments(arguments: list[str]) -> tuple[list[str], list[str]]:
    """Positional arguments -> (plain KEY=VALUE overrides, matrix dimensions): every argument after a
    `--matrix` is a dimension (`--matrix=KEY=...` works too)."""
    overrides: list[str] = []
    dimensions: list[str] = []
    in_matrix = False
    saw_flag = False
    for argument in arguments:
        if argument == MATRIX_FLAG:
            in_matrix = saw_flag = True
            continue
        if argument.startswith(MATRIX_FLAG + "="):
            in_matrix = saw_flag = True
            argument = argument[len(MATRIX_FLAG) + 1 :]
        elif argument.startswith("-"):
            name = argument.partition("=")[0]
            raise FtlError(
                f"{name}: no such option of ftl bench{did_you_mean(name, OPTIONS)} (see 'ftl bench --help')"
            )
        (dimensions if in_matrix else overrides).append(argument)
    if saw_flag and not dimensions:
        raise FtlError("--matrix: give at least one KEY=v1,v2 after it, e.g. --matrix train.batch_size=16,32")
    return overrides, dimensions


def parse_dimensions(tokens: list[str]) -> list[Dimension]:
    dimensions: list[Dimension] = []
    for token in tokens:
        key, equals, raw = token.partition("=")
        if not equals or not key or not all(part.isidentifier() for part in key.split(".")):
            raise FtlError(
                f"--matrix: '{token}' is not KEY=v1,v2,... with a dotted recipe key, e.g. train.batch_size=16,32"
            )
        if key in RESERVED:
            raise FtlError(f"--matrix {key}: bench sets it ({RESERVED[key]})")
        if any(d.key == key for d in dimensions):
            raise FtlError(f"--matrix {key}: given twice; put all its values in one list: {key}=v1,v2")
        values = split_values(raw)
        if not values:
            raise FtlError(f"--matrix {key}: no values; give a comma-separated list, e.g. {key}=v1,v2")
        if any(not v.strip() for v in values):
            raise FtlError(f"--matrix {token}: an empty value in the list; remove the extra comma")
        if len(set(values)) != len(values):
            raise FtlError(f"--matrix {token}: a value is listed twice")
        dimensions.append(Dimension(key, tuple(v.strip() for v in values)))
    return dimensions


def split_values(raw: str) -> list[str]:
    """'a,[b,c],{d: 1, e: 2},"f,g"' -> ['a', '[b,c]', '{d: 1, e: 2}', '"f,g"']."""
    if not raw.strip():
        return []
    values, current, depth, quote = [], [], 0, None
    for char in raw:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append("".join(current))
            current = []
            continue
        current.append(char)
    values.append("".join(current))
    return values


def expand(dimensions: list[Dimension]) -> list[Cell]:
    """The cartesian product, the first dimension varying slowest."""
    combos = itertools.product(*[[(d.key, v) for v in d.values] for d in dimensions])
    return [Cell(index, tuple(combo)) for index, combo in enumerate(combos, start=1)]


def validate(
    recipe: Path, overrides: list[str], dimensions: list[Dimension], cells: list[Cell], fixed: list[str]
) -> dict[str, LoadedRecipe]:
    """Load the recipe once per cell (overrides, then the cell's values, then `fixed`); cell name -> recipe."""
    base = load_recipe(recipe, overrides)
    if base.stages:
        raise FtlError(
            "ftl bench: a staged recipe cannot be benchmarked as a whole; bench one stage's recipe"
        )
    raw = base.recipe.model_dump(mode="json")
    given = {o.partition("=")[0] for o in overrides}
    for dimension in dimensions:
        problem = key_path_problem(Recipe, tuple(dimension.key.split(".")), raw)
        if problem:
            raise FtlError(f"--matrix {dimension.key}: {problem}")
        if dimension.key in given:
            raise FtlError(f"--matrix {dimension.key}: also given as an override; keep it in one place")
    loaded: dict[str, LoadedRecipe] = {}
    for cell in cells:
        try:
            loaded[cell.name] = load_recipe(recipe, [*overrides, *cell.overrides, *fixed])
        except FtlError as exc:
            where = f"{cell.name} of {len(cells)} ({cell.label(', ', full=True)})"
            raise FtlError(f"--matrix {where}: {exc}") from None
    return loaded
