"""The job's working directory: the resolved recipe plus every local file it references, with relative paths.

    <job>/recipe.yaml                 the recipe as loaded here: extends merged, KEY=VALUE overrides applied
    <job>/files/data-train/...        data.train.path (a file, the files of a glob, or a directory)
    <job>/files/data-validation/...
    <job>/files/model/<name>          the model.local_copies entry or model.name_or_path that is local here
    <job>/files/tokenizer/<name>      model.tokenizer when it is a local directory (without weight files)
    <job>/files/space/<i>-<name>      local paths among the choices of tune.space path keys

`package:NAME` locations stay as they are: the package must be installed on the cluster. Paths that do not
exist here stay as they are too (they may exist on the cluster, or a hub source takes over). Ray uploads the
directory as the job's runtime_env working_dir; the job starts inside it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ftl.launcher.errors import FtlError
from ftl.launcher.locations import find_local, looks_local
from ftl.launcher.recipe.loader import LoadedRecipe, load_recipe

RECIPE_FILE = "recipe.yaml"
FILES = "files"
DEFAULT_LIMIT = 512 * 2**20  # Ray 2.60's gRPC message size
# Never worth shipping from a referenced folder.
EXCLUDES = (
    ".git",
    ".hg",
    ".svn",
    "__pycache__",
    "*.pyc",
    ".ipynb_checkpoints",
    ".DS_Store",
    ".cache",
    ".venv",
)
# A tokenizer folder is shipped without these (a model folder used only for its tokenizer holds its weights).
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.onnx", "*.gguf")
_PATH_KEYS = {
    "model.name_or_path": "model",
    "model.tokenizer": "tokenizer",
    "data.train": "data",
    "data.train.path": "data",
    "data.validation": "data",
    "data.validation.path": "data",
}


@dataclass
class Staged:
    root: Path
    recipe: LoadedRecipe  # the staged recipe, loaded from root
    sha256: str  # of recipe.yaml as staged
    size: int  # bytes under root
    notes: list[str] = field(default_factory=list)  # what the cluster must provide itself

    @property
    def recipe_file(self) -> Path:
        return self.root / RECIPE_FILE


def working_dir_limit() -> int:
    """Ray's limit for an uploaded working_dir (its gRPC message size; RAY_max_grpc_message_size changes it)."""
    try:
        from ray._private.runtime_env.packaging import GCS_STORAGE_MAX_SIZE

        return int(GCS_STORAGE_MAX_SIZE)
    except (ImportError, AttributeError, ValueError):  # pragma: no cover - depends on the Ray version
        return DEFAULT_LIMIT


def stage(
    loaded: LoadedRecipe, root: Path, *, limit: int | None = None, secrets: tuple[str, ...] = ()
) -> Staged:
    """Write the job's working directory into `root` (new or empty); raise FtlError when it is too large."""
    root.mkdir(parents=True, exist_ok=True)
    data = loaded.recipe.model_dump(mode="json", exclude={"extends"})
    stager = _Stager(root, loaded.search_dirs)
    for split in ("train", "validation"):
        source = data["data"].get(split)
        if isinstance(source, dict) and source.get("path"):
            source["path"] = stager.data(source["path"], f"data-{split}", f"data.{split}.path")
    stager.model(data["model"])
    space = (data.get("tune") or {}).get("space") or {}
    for key, domain in space.items():
        kind = _PATH_KEYS.get(key)
        if kind and isinstance(domain, dict):
            for values_key in ("choice", "grid"):
                if isinstance(domain.get(values_key), list):
                    domain[values_key] = [stager.space_value(v, kind, key) for v in domain[values_key]]
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    for secret in secrets:
        if secret and secret in text:
            raise FtlError(
                f"{loaded.path}: the recipe contains the cluster's token; remove it from the recipe"
            )
    limit = limit if limit is not None else working_dir_limit()
    size = _check_size(stager.files, len(text.encode("utf-8")), limit)
    for source, target in stager.files.items():  # copied only once the size is known to fit
        destination = root / target
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
    recipe_file = root / RECIPE_FILE
    recipe_file.write_text(text, encoding="utf-8")
    staged_recipe = load_recipe(recipe_file)  # the cluster loads exactly this; it must load here too
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return Staged(root, staged_recipe, digest, size, stager.notes)


class _Stager:
    def __init__(self, root: Path, search_dirs: list[Path]) -> None:
        self.root = root
        self.search_dirs = search_dirs
        self.notes: list[str] = []
        # source -> (staged relative path, with weights): a folder used twice ships once
        self.staged: dict[Path, tuple[str, bool]] = {}
        self.files: dict[Path, str] = {}  # every file to copy -> its path under the job's root
        self.counter = 0

    def data(self, path: str, folder: str, what: str) -> str:
        found = find_local(path, self.search_dirs)
        if found is None:
            self.notes.append(f"{what} '{path}' is not here: the cluster must have it (or a hub source)")
            return path
        if any(ch in found.name for ch in "*?["):
            for match in sorted(p for p in found.parent.glob(found.name) if p.is_file()):
                self.files[match.resolve()] = f"{FILES}/{folder}/{match.name}"
            return f"./{FILES}/{folder}/{found.name}"
        return self._copy(found, folder, weights=True)

    def model(self, model: dict[str, Any]) -> None:
        staged_model: str | None = None
        copies = []
        for candidate in model.get("local_copies") or []:
            if staged_model is None:
                new = self._model_location(candidate, "model.local_copies")
                staged_model = new if new != candidate else None
                copies.append(new)
            else:
                copies.append(candidate)  # never reached on the cluster: an earlier copy ships with the job
        model["local_copies"] = copies
        name = model.get("name_or_path")
        if name and staged_model is None:
            model["name_or_path"] = self._model_location(name, "model.name_or_path")
        tokenizer = model.get("tokenizer")
        if tokenizer:
            model["tokenizer"] = self._model_location(tokenizer, "model.tokenizer", folder="tokenizer")

    def space_value(self, value: Any, kind: str, key: str) -> Any:
        if not isinstance(value, str):
            return value
        self.counter += 1
        folder = f"space/{self.counter}"
        if kind == "data":
            return self.data(value, folder, f"tune.space.{key}")
        return self._model_location(value, f"tune.space.{key}", folder=folder, tokenizer=kind == "tokenizer")

    def _model_location(
        self, location: str, what: str, *, folder: str = "model", tokenizer: bool | None = None
    ) -> str:
        if location.startswith("package:"):
            self.notes.append(f"{what} '{location}': the package must be installed on the cluster")
            return location
        found = _local_model(location, self.search_dirs)
        if found is None:
            if looks_local(location):
                self.notes.append(f"{what} '{location}' is not here: the cluster must have it")
            return location  # a hub id, or a path that exists only on the cluster
        weights = not (tokenizer if tokenizer is not None else folder == "tokenizer")
        return self._copy(found, folder, weights=weights)

    def _copy(self, source: Path, folder: str, *, weights: bool) -> str:
        """Plan the copy of a file or folder to files/<folder>/<name>; returns the path the recipe uses."""
        source = source.resolve()
        if source in self.staged and (self.staged[source][1] or not weights):
            return self.staged[source][0]
        target = f"{FILES}/{folder}/{source.name}"
        if source.is_dir():
            for file in _walk(source, EXCLUDES if weights else EXCLUDES + WEIGHT_FILES):
                self.files[file] = f"{target}/{file.relative_to(source).as_posix()}"
        else:
            self.files[source] = target
        self.staged[source] = (f"./{target}", weights)
        return f"./{target}"


def _local_model(location: str, search_dirs: list[Path]) -> Path | None:
    """The same lookup as launcher.model.locate: absolute, next to the recipe, then the working directory."""
    path = Path(location).expanduser()
    options = [path] if path.is_absolute() else [d / path for d in search_dirs] + [Path.cwd() / path]
    return next((option for option in options if option.exists()), None)


def _walk(root: Path, excludes: tuple[str, ...]) -> list[Path]:
    """Files under root (symlinks followed), without excluded names at any depth."""
    files = []
    for directory, subdirectories, names in os.walk(root, followlinks=True):
        subdirectories[:] = sorted(d for d in subdirectories if not _excluded(d, excludes))
        files += [Path(directory) / name for name in sorted(names) if not _excluded(name, excludes)]
    return files


def _excluded(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def _check_size(files: dict[Path, str], recipe_size: int, limit: int) -> int:
    """The job's size before anything is copied; a one-line error naming the biggest files over Ray's limit."""
    sizes = [(source.stat().st_size, target) for source, target in files.items()]
    total = recipe_size + sum(size for size, _ in sizes)
    if total <= limit:
        return total
    biggest = sorted(sizes, key=lambda item: item[0], reverse=True)[:3]
    shown = ", ".join(f"{target} ({_mib(size)})" for size, target in biggest)
    raise FtlError(
        f"the job's files are {_mib(total)}, over Ray's {_mib(limit)} limit for a job's working_dir (biggest: "
        f"{shown}); put large data and models where the cluster reads them itself: an absolute path on a shared "
        "filesystem, a hub id or package:NAME for models, data.<split>.hub for data"
    )


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"
