"""Writing files so that a kill never leaves half of one, with the modes the user's umask asks for.

The lowest layer's file helpers: run directories, checkpoints, caches, tasks' error files and search results
all write through here.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a kill never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def honour_umask(root: Path) -> None:
    """Give what libraries wrote under `root` the modes the user's umask asks for (some write 0600 temporary
    files and rename them; a shared project's umask 002 expects group-readable models)."""
    umask = current_umask()
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        wanted = (0o777 if path.is_dir() or path.stat().st_mode & 0o111 else 0o666) & ~umask
        if path.stat().st_mode & 0o777 != wanted:
            os.chmod(path, wanted)


def is_main_process() -> bool:
    """Rank 0 of a distributed run (or the only process): the one that writes the run directory."""
    return int(os.environ.get("RANK", "0")) == 0
