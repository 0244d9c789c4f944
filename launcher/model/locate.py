"""Resolve `model:` to one concrete location: a local HF directory, a GGUF file, a hub id, or a config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ftl.launcher.errors import FtlError
from ftl.launcher.locations import looks_local, package_dir
from ftl.launcher.recipe.schema import ModelSection


@dataclass(frozen=True)
class ModelLocation:
    kind: str  # "local" | "gguf" | "hub" | "config"
    path: str  # directory, hub id, or "" for config
    gguf_file: str | None = None
    note: str = ""  # why this candidate won (for the log)

    def __str__(self) -> str:
        if self.kind == "gguf":
            return f"{Path(self.path) / (self.gguf_file or '')}"
        return self.path or "from config"

    def hf_kwargs(self) -> dict:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def locate_model(section: ModelSection, recipe_dirs: list[Path]) -> ModelLocation:
    """First local copy that exists, else name_or_path (local, or a hub id)."""
    if section.config is not None and not section.name_or_path and not section.local_copies:
        return ModelLocation("config", "")
    tried: list[str] = []
    for candidate in [*section.local_copies, *([section.name_or_path] if section.name_or_path else [])]:
        found = _local(candidate, section.gguf_file, recipe_dirs)
        if found is not None:
            return found
        tried.append(candidate)
    name = section.name_or_path
    if name and not name.startswith("package:") and not looks_local(name):
        return ModelLocation("hub", name, section.gguf_file, note="not found locally; using the hub")
    raise FtlError(
        f"model: none of {', '.join(repr(t) for t in tried)} is available locally "
        "(install the package, or fix the path) and no hub id is given in model.name_or_path"
    )


def locate_path(location: str, recipe_dirs: list[Path], what: str) -> ModelLocation:
    """Resolve a single location string (e.g. model.tokenizer)."""
    found = _local(location, None, recipe_dirs, what)
    if found is not None:
        return found
    if location.startswith("package:") or looks_local(location):
        raise FtlError(f"{what}: '{location}' not found locally")
    return ModelLocation("hub", location)


def _local(
    candidate: str, gguf_file: str | None, recipe_dirs: list[Path], what: str = "model"
) -> ModelLocation | None:
    if candidate.startswith("package:"):
        path = package_dir(candidate)
        if path is None or not path.exists():
            return None
        return _inspect(path, gguf_file, note=f"from installed {candidate}", what=what)
    path = Path(candidate).expanduser()
    options = [path] if path.is_absolute() else [d / path for d in recipe_dirs] + [Path.cwd() / path]
    for option in options:
        if option.exists():
            return _inspect(option.resolve(), gguf_file, note="local", what=what)
    return None


def _inspect(path: Path, gguf_file: str | None, note: str, what: str = "model") -> ModelLocation | None:
    """A directory with config.json (or one level below it), or a GGUF file."""
    if path.is_file():
        if path.suffix == ".gguf":
            return ModelLocation("gguf", str(path.parent), path.name, note)
        raise FtlError(f"{what}: {path} is a file but not a .gguf model; give its directory instead")
    if gguf_file:
        if not (path / gguf_file).is_file():
            present = ", ".join(p.name for p in path.glob("*.gguf")) or "none"
            raise FtlError(f"model.gguf_file: '{gguf_file}' is not in {path} (GGUF files there: {present})")
        return ModelLocation("gguf", str(path), gguf_file, note)
    if (path / "config.json").is_file():
        return ModelLocation("local", str(path), None, note)
    nested = sorted(p.parent for p in path.glob("*/config.json"))
    if len(nested) == 1:
        return ModelLocation("local", str(nested[0]), None, note)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelLocation("gguf", str(path), ggufs[0].name, note)
    if len(ggufs) > 1:
        raise FtlError(
            f"model: {path} holds several GGUF files ({', '.join(g.name for g in ggufs)}); choose one with model.gguf_file"
        )
    raise FtlError(f"model: {path} has no config.json or .gguf file; it is not a model directory")
