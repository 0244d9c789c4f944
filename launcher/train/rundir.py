"""The run directory: self-describing, written atomically, never silently overwritten.

<run>/recipe.resolved.yaml   the validated recipe with every default filled in
<run>/manifest.json          versions, git sha, seed, data fingerprint, host, command, timings
<run>/metrics.json           final evaluation metrics (eval_accuracy, eval_perplexity, ...)
<run>/tensorboard/           event files
<run>/checkpoints/           checkpoint-N folders (resumable)
<run>/model/                 save_pretrained model + tokenizer + ftl_task.json
<run>/misclassified.jsonl    classification: validation rows the model gets wrong
"""

from __future__ import annotations

import json
import platform
import socket
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from ftl.launcher.errors import FtlError
from ftl.launcher.files import atomic_write, honour_umask, make_dir
from ftl.launcher.model.saved import write_base_record
from ftl.launcher.recipe.loader import load_recipe
from ftl.launcher.recipe.schema import Recipe
from ftl.launcher.secrets import redact
from ftl.launcher.train.checkpoints import newest_complete

_PACKAGES = (
    "ftl",
    "torch",
    "transformers",
    "datasets",
    "accelerate",
    "tokenizers",
    "deepspeed",
    "ray",
    "peft",
    "bitsandbytes",
    "pydantic",
    "numpy",
)
TASK_STATE_FILE = "ftl_task.json"


@dataclass
class RunDir:
    root: Path
    training_started: bool = False  # in this process (a failure before it leaves nothing worth keeping)

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def recipe_file(self) -> Path:
        return self.root / "recipe.resolved.yaml"

    @classmethod
    def open_for_run(cls, root: Path, *, resume: bool) -> RunDir:
        """A new or empty directory, or (with resume) one that holds this run's checkpoints."""
        run = cls(root)
        if root.exists() and not root.is_dir():
            raise FtlError(f"--output: {root} is a file; give a directory for the run")
        make_dir(root.parent, "--output")
        occupied = root.exists() and any(root.iterdir())
        if resume:
            if not occupied:
                raise FtlError(f"--resume: {root} holds no run to resume; start it without --resume")
            if not run.recipe_file.exists():
                raise FtlError(
                    f"--resume: {root} holds files but no run ({_some_entries(root)}); choose another --output"
                )
        elif occupied:
            if not run.recipe_file.exists():
                raise FtlError(
                    f"--output: {root} already holds files that are not a run ({_some_entries(root)}); choose "
                    "another --output"
                )
            raise FtlError(
                f"--output: {root} already holds a run; pass --resume to continue it, or choose another --output"
            )
        make_dir(root, "--output")
        return run

    @classmethod
    def existing(cls, root: Path) -> RunDir:
        run = cls(root)
        if not run.recipe_file.exists():
            raise FtlError(
                f"{root}: not a run directory (no recipe.resolved.yaml); give the --output of an ftl run"
            )
        if not (run.model / "config.json").exists():
            if run.model.is_dir():
                raise FtlError(
                    f"{run.model / 'config.json'} is missing: the run's model folder is incomplete; run the recipe "
                    "again (or ftl run --resume from its checkpoints)"
                )
            raise FtlError(
                f"{root}: the run has no final model yet (model/ is missing); finish or resume the run"
            )
        return run

    def remove_if_unused(self, up_to: Path | None) -> None:
        """Delete a run directory that holds nothing but its recipe and empty folders (the run failed before it
        began: no checkpoint, log or result), and its parents up to `up_to` when they are left empty."""
        if not self.root.is_dir():
            return
        files = [p for p in self.root.rglob("*") if not p.is_dir()]
        if any(p != self.recipe_file for p in files):
            return
        self.recipe_file.unlink(missing_ok=True)
        for folder in sorted((p for p in self.root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            folder.rmdir()
        if up_to is None:
            return
        for directory in [self.root, *self.root.parents]:
            if any(directory.iterdir()):
                return
            directory.rmdir()
            if directory == up_to:
                return

    def finished(self) -> bool:
        """The run wrote its final model and results (what `finish` writes last)."""
        return (self.root / "metrics.json").is_file() and (self.model / "config.json").is_file()

    def last_checkpoint(self) -> Path | None:
        """The newest complete checkpoint: sealed, with every file its marker lists (see checkpoints.py)."""
        return newest_complete(self.checkpoints)

    # ---- files ----------------------------------------------------------------------------------
    def write_recipe(self, recipe: Recipe) -> None:
        data = recipe.model_dump(mode="json", exclude={"extends"})
        atomic_write(self.recipe_file, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))

    def read_recipe(self) -> Recipe:
        return load_recipe(self.recipe_file).recipe

    def write_json(self, name: str, payload: dict[str, Any]) -> Path:
        path = self.root / name
        atomic_write(path, json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
        return path

    def read_json(self, name: str) -> dict[str, Any]:
        path = self.root / name
        return json.loads(path.read_text()) if path.exists() else {}

    # ---- a finished run's results (rank 0) ---------------------------------------------------------
    def write_model_files(self, tokenizer, *, task_state: dict[str, Any], adapter: Any = None) -> None:
        """Beside the saved weights in model/: the tokenizer, the task's state (label names, ...) and, for a
        LoRA adapter (`adapter`: the LoadedModel it was trained on), where its base model lives."""
        tokenizer.save_pretrained(str(self.model))
        if adapter is not None:
            write_base_record(self.model, adapter.model, adapter.location, adapter.base_weights)
        (self.model / TASK_STATE_FILE).write_text(json.dumps(task_state, indent=1))
        honour_umask(self.model)

    def write_results(self, metrics: dict[str, Any], *, log_history: list, manifest: dict[str, Any]) -> None:
        """log_history.json, metrics.json (a run with it counts as finished) and manifest.json."""
        self.write_json("log_history.json", {"log_history": log_history})
        self.write_json("metrics.json", metrics)
        self.write_json("manifest.json", manifest)


def manifest(
    recipe: Recipe, *, data_fingerprint: str, sources: dict[str, str], device: str, extra: dict
) -> dict:
    versions = {}
    for package in _PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return {
        "name": recipe.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": [redact(arg) for arg in [Path(sys.argv[0]).name, *sys.argv[1:]]],
        "cwd": str(Path.cwd()),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "git_sha": git_sha(),
        "seed": recipe.seed,
        "device": device,
        "data_fingerprint": data_fingerprint,
        "data_sources": sources,
        **extra,
    }


def git_sha() -> str | None:
    """The commit of the ftl source tree (None when not a git checkout)."""
    source = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    if not sha:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=5,
        check=False,
    ).stdout.strip()
    return sha + ("-dirty" if dirty else "")


def _some_entries(folder: Path) -> str:
    names = sorted(entry.name for entry in folder.iterdir())
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
