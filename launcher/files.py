"""Writing files so that a kill never leaves half of one, with the modes the user's umask asks for; folders
made and files named by the user checked, so an OS error on a path the user gave is one line naming it.

The lowest layer's file helpers: run directories, checkpoints, caches, tasks' error files and search results
all write through here.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

from ftl.launcher.errors import FtlError


def make_dir(path: Path, what: str) -> Path:
    """`mkdir -p path`; an OS error is one FtlError naming `what` (e.g. --output), the path and why (a part of
    it that is a file, a read-only or virtual file system, ...)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
    except OSError as exc:
        raise FtlError(f"{what}: {os_error_line(exc, path)}") from None
    return path


def check_writable(folder: Path, what: str, fix: str = "") -> None:
    """`folder` exists or can be made, and a file can be written in it (one FtlError line otherwise)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".ftl-write-test-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise FtlError(f"{what}: {os_error_line(exc, folder)}{'; ' + fix if fix else ''}") from None


def os_error_line(exc: OSError, path: Path | str | None = None) -> str:
    """'cannot use PATH: REASON' for an OS error, naming the part of the path that is a file when a folder was
    needed (the kernel only says 'Not a directory')."""
    target = Path(path if path is not None else (exc.filename or "?"))
    reason = exc.strerror or type(exc).__name__
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        blocker = next((p for p in [target, *target.parents] if _is_non_folder(p)), None)
        if blocker is not None:
            return f"cannot make or use {target}: {blocker} is a file, not a folder"
    if exc.errno == errno.ELOOP:
        return f"cannot use {target}: a loop of symbolic links"
    if exc.errno == errno.EISDIR:
        return f"{target} is a directory; give a file"
    return f"cannot make or use {target} ({reason})"


def _is_non_folder(path: Path) -> bool:
    try:
        return not stat.S_ISDIR(path.stat().st_mode)
    except OSError:
        return False


def readable_file(path: Path, what: str, *, pipes: bool = False) -> Path:
    """A file the user named, checked before reading: one FtlError line when it is missing (or a broken link),
    a directory, or a named pipe or device (unless `pipes`: read once, e.g. a recipe from <(...))."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            raise FtlError(f"{what}: {path} is a broken symbolic link (to {os.readlink(path)})") from None
        raise FtlError(f"{what}: {path} not found") from None
    except OSError as exc:
        raise FtlError(f"{what}: {os_error_line(exc, path)}") from None
    if stat.S_ISDIR(mode):
        raise FtlError(f"{what}: {path} is a directory; give a file")
    if not stat.S_ISREG(mode) and not pipes:
        kind = "a named pipe" if stat.S_ISFIFO(mode) else "not a regular file (a device or socket)"
        raise FtlError(
            f"{what}: {path} is {kind}; ftl reads a data file more than once (to fingerprint it for the cache, "
            "then to load it): save its contents to a file and give that"
        )
    return path


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
