"""Where recipe paths point: local files near the recipe or in the data homes, installed packages, or the hub.

One recipe must run offline here and from the hub elsewhere without edits, so every location is tried
local-first:

* data paths: next to the recipe, the working directory, each directory in `$FTL_DATA_HOME`
  (separated by `os.pathsep`), then the default data homes `<project>/data` and `<project>/../shared/data`
  (project = the recipe's parent folder, and the working directory);
* model locations: `package:NAME[/sub/path]` (a model shipped in an installed Python package), a local
  directory or `.gguf` file, else a hub id.
"""

from __future__ import annotations

import importlib.util
import os
from itertools import zip_longest
from pathlib import Path

from ftl.launcher.errors import FtlError

DATA_HOME_ENV = "FTL_DATA_HOME"


def data_homes(recipe_dirs: list[Path]) -> list[Path]:
    """Directories searched, in order, for a relative data path."""
    homes: list[Path] = []
    homes.extend(recipe_dirs)
    homes.append(Path.cwd())
    for entry in os.environ.get(DATA_HOME_ENV, "").split(os.pathsep):
        if entry.strip():
            homes.append(Path(entry).expanduser())
    for base in [*(d.parent for d in recipe_dirs), Path.cwd()]:
        homes.extend([base / "data", base.parent / "shared" / "data"])
    unique: list[Path] = []
    for home in homes:
        resolved = home.resolve()
        if resolved not in unique:
            unique.append(resolved)
    return unique


def find_local(path: str, recipe_dirs: list[Path]) -> Path | None:
    """The first existing match for `path` (absolute, or relative to a data home), else None."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute():
        return candidate if _present(candidate) or _has_glob(path) and _glob_any(candidate) else None
    for home in data_homes(recipe_dirs):
        full = home / candidate
        if _present(full) or (_has_glob(path) and _glob_any(full)):
            return full
    return None


def _present(path: Path) -> bool:
    """There is something at `path`: a file, folder, or a symbolic link even when broken (reading it then says
    what is wrong, rather than 'not found')."""
    return path.exists() or path.is_symlink()


def looked_in(recipe_dirs: list[Path]) -> str:
    shown = [str(home) for home in data_homes(recipe_dirs)]
    return ", ".join(shown[:6]) + (f" and {len(shown) - 6} more" if len(shown) > 6 else "")


def package_dir(spec: str) -> Path | None:
    """`package:NAME[/sub]` -> the directory or file inside the installed package, without importing it."""
    name, _, sub = spec.removeprefix("package:").partition("/")
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        return None
    root = Path(next(iter(found.submodule_search_locations)))
    return root / sub if sub else root


def looks_local(location: str) -> bool:
    """Paths that can only be local (never a hub id)."""
    return (
        location.startswith(("/", "./", "../", "~"))
        or location.endswith(".gguf")
        or os.sep + os.sep in location
    )


def _has_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def _glob_any(path: Path) -> bool:
    return bool(glob_matches(path))


def glob_matches(path: Path) -> list[Path]:
    """What a glob matches, sorted; the glob may be in any part ('d/*/a.tsv', 'd/**/*.tsv'): it is matched from
    the last folder before the first part that holds one. As in `datasets`, hidden files and folders (and
    '__pycache__'-like ones) are left out unless the pattern names them."""
    parts = path.parts
    first = next((i for i, part in enumerate(parts) if _has_glob(part)), len(parts))
    base = Path(*parts[:first]) if first else Path(".")
    if first == len(parts) or not base.is_dir():
        return []
    pattern = parts[first:]
    return sorted(
        match
        for match in base.glob("/".join(pattern))
        if all(
            not _hidden(name) or _hidden(given)
            for name, given in zip_longest(match.relative_to(base).parts, pattern, fillvalue="")
        )
    )


def _hidden(name: str) -> bool:
    return name.startswith((".", "__"))


# the libraries' own folders: one that is a file fails deep inside them, blamed on whatever they were reading
_CACHE_ENV = (
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_DATASETS_CACHE",
    "TRANSFORMERS_CACHE",
    "FTL_CACHE",
    "TORCH_EXTENSIONS_DIR",
)


def check_cache_environment() -> None:
    """Each cache folder the environment names is a folder (or does not exist yet)."""
    for name in _CACHE_ENV:
        value = os.environ.get(name, "")
        if value and Path(value).expanduser().is_file():
            raise FtlError(f"${name}={value} is a file; point {name} at a folder, or unset it")
