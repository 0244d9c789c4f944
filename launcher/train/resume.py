"""Continuing a run: find the newest complete checkpoint, and insist on the recipe the run started with."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ftl.launcher.console import log
from ftl.launcher.errors import FtlError
from ftl.launcher.files import is_main_process
from ftl.launcher.recipe.loader import LoadedRecipe
from ftl.launcher.train.checkpoints import clear_staging, damage
from ftl.launcher.train.rundir import RunDir


def resume_point(rundir: RunDir, *, announce: bool) -> Path | None:
    """The newest complete checkpoint; what a kill during saving left (staging, unsealed folders) is removed."""
    last = rundir.last_checkpoint()
    newest = int(last.name.split("-")[1]) if last else -1
    main = is_main_process()
    if main:
        clear_staging(rundir.checkpoints)
        check_not_damaged(rundir)
    for partial in _newer_than(rundir, newest) if main else []:
        log(f"[yellow]removing incomplete {partial.name} (interrupted while saving)[/]")
        shutil.rmtree(partial, ignore_errors=True)
    if last is not None and main:
        log(f"resuming from {last}")
    elif announce:
        log("[yellow]no complete checkpoint yet: starting from the beginning[/]")
    return last


DATA_FILE = "data_files.json"  # the content hash of the data files a run started on


def check_same_data(rundir: RunDir, data, *, resuming: bool) -> None:
    """A run resumes on the data files it started on (content hashes; how they are read is the recipe's, which
    check_same_recipe compares). Rank 0 records them when a run starts; every rank that finds the record checks."""
    current = data.files_fingerprint
    if not current:
        return
    try:
        stored = rundir.read_json(DATA_FILE)
    except (OSError, ValueError):  # damaged: recorded again below
        stored = {}
    if resuming and stored.get("fingerprint") not in (None, current):
        started = ", ".join(f"{split} {source}" for split, source in (stored.get("sources") or {}).items())
        raise FtlError(
            f"--resume: the data files differ from those the run started on ({started}); resume with them as "
            "they were, or train again into a new --output"
        )
    if is_main_process() and (not resuming or not stored):
        rundir.write_json(DATA_FILE, {"fingerprint": current, "sources": data.sources})


def check_not_damaged(rundir: RunDir) -> None:
    """A checkpoint newer than the newest complete one that was sealed and then changed is not ftl's to delete (a
    kill while saving leaves no seal): one line naming the damage. Run by the driver before any worker starts."""
    last = rundir.last_checkpoint()
    for partial in _newer_than(rundir, int(last.name.split("-")[1]) if last else -1):
        damaged = damage(partial)
        if damaged:
            instead = f"from {last.name}" if last else "from the beginning"
            raise FtlError(
                f"--resume: {partial} was written whole, but {damaged}; restore the folder from a copy, or move it "
                f"out of {rundir.checkpoints} to resume {instead}"
            )


def _newer_than(rundir: RunDir, step: int) -> list[Path]:
    found = rundir.checkpoints.glob("checkpoint-*") if rundir.checkpoints.exists() else []
    return [p for p in found if p.name.split("-")[-1].isdigit() and int(p.name.split("-")[-1]) > step]


def check_same_recipe(rundir: RunDir, loaded: LoadedRecipe) -> None:
    """Exact resume needs the recipe the run started with (logging and worker settings may differ)."""
    ignored = {"extends", "log"}
    stored = rundir.read_recipe().model_dump(mode="json", exclude=ignored)
    current = loaded.recipe.model_dump(mode="json", exclude=ignored)
    for section in (stored, current):  # a ZeRO checkpoint may resume on another number of workers
        for key in (
            "workers",
            "address",
            "cpus_per_worker",
            "gpus_per_worker",
            "max_failures",
            "global_batch_size",
        ):
            section["distributed"].pop(key, None)
        section["train"].pop("grad_accum_steps", None)
    differing = sorted(_diff(stored, current))
    if differing:
        shown = ", ".join(differing[:4]) + (" ..." if len(differing) > 4 else "")
        raise FtlError(
            f"--resume: the recipe differs from {rundir.recipe_file} at {shown}; resume with the same recipe and "
            "overrides, or start a new --output"
        )


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        found: list[str] = []
        for key in sorted(set(a) | set(b)):
            found.extend(_diff(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key))
        return found
    return [] if a == b else [prefix]
