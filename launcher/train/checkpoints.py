"""Atomic checkpoints: under its name a checkpoint is complete and loadable, or it is not there at all.

HF's Trainer writes `checkpoint-N/` file by file (weights, optimizer, scheduler, RNG states, trainer_state.json),
so a kill or a full disk half-way would leave a folder that looks like the newest checkpoint and cannot be
loaded. ftl's Trainer (trainer.py) lets HF write into `<checkpoints>/.staging/checkpoint-N` instead; then
`seal` fsyncs every file and adds the completeness marker `ftl_checkpoint.json` (each file and its size), and
`publish` renames the folder to `checkpoint-N` and fsyncs the parent directory. Only folders whose marker
matches their files count (`is_complete`); whatever a killed save left in `.staging` is removed by the next
save or resume.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path

from ftl.launcher.errors import TransientFtlError
from ftl.launcher.files import current_umask, honour_umask

STAGING = ".staging"
MARKER = "ftl_checkpoint.json"
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def seal(folder: Path, step: int) -> None:
    """Flush every file of a written checkpoint to disk, then write its completeness marker (also flushed)."""
    honour_umask(folder)
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MARKER):
        _fsync_file(path)
        files[str(path.relative_to(folder))] = path.stat().st_size
    for directory in sorted({p.parent for p in folder.rglob("*")} | {folder}):
        _fsync_dir(directory)
    marker = folder / f".{MARKER}.tmp"
    with marker.open("w", encoding="utf-8") as stream:
        json.dump({"step": step, "files": files}, stream, indent=1)
        stream.flush()
        os.fsync(stream.fileno())
    os.chmod(marker, 0o666 & ~current_umask())
    os.replace(marker, folder / MARKER)
    _fsync_dir(folder)


def publish(staged: Path, final: Path) -> None:
    """Move a sealed checkpoint to its name in one step (a same-named leftover is replaced)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(staged, final)
    _fsync_dir(final.parent)


def is_complete(folder: Path) -> bool:
    """The folder holds its marker, and every file the marker lists with its size."""
    return (folder / MARKER).is_file() and damage(folder) is None


def damage(folder: Path) -> str | None:
    """What is wrong with a sealed checkpoint whose files no longer match its marker (damaged after it was
    written: a kill while saving leaves no marker); None when it is intact or was never sealed."""
    marker = folder / MARKER
    if not marker.exists():
        return None
    try:
        files = json.loads(marker.read_text(encoding="utf-8"))["files"]
        sizes = {str(name): int(size) for name, size in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"its marker {MARKER} is unreadable ({type(exc).__name__})"
    for name, size in sizes.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} holds {path.stat().st_size} bytes, {size} when it was written"
    return None


def newest_complete(root: Path) -> Path | None:
    """The complete checkpoint-N folder with the highest N in `root`, or None."""
    if not root.is_dir():
        return None
    complete = [
        p for p in root.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name) and is_complete(p)
    ]
    return max(complete, key=lambda p: int(p.name.split("-")[1]), default=None)


def clear_staging(checkpoints: Path) -> None:
    """Remove what a save that never finished left behind."""
    shutil.rmtree(checkpoints / STAGING, ignore_errors=True)


def save_failed(exc: OSError, name: str, checkpoints: Path, last: Path | None) -> Exception:
    """A full disk as one line saying what is kept; other OS errors stay as they are."""
    if exc.errno not in _DISK_FULL:
        return exc
    kept = f"the previous checkpoint {last.name} is intact" if last else "no earlier checkpoint exists"
    return TransientFtlError(
        f"no space left on the device while writing {name} in {checkpoints} ({exc.strerror or 'disk full'}); "
        f"{kept}: free some space (or lower train.keep_checkpoints), then continue with the same command plus --resume"
    )


def _fsync_file(path: Path) -> None:
    with path.open("rb") as stream:
        os.fsync(stream.fileno())


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
