"""Where a job's run directory lives: <storage>/<job-id>/, on a shared filesystem or behind a URI.

A plain path (or the local cluster's storage folder) is written by the job directly: every node must see it
at the same path. A URI (s3://, gs://, file://, anything pyarrow.fs opens) is written locally by the job and
uploaded when it ends, also after a failure. `ftl fetch` copies it back through the same pyarrow filesystems
Ray Train uses for its own storage.

This is not `distributed.storage_path`, where Ray Train keeps the checkpoints of a multi-worker run; a job
can use both (checkpoints there, the run directory here).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

from ftl.launcher.errors import FtlError, first_line

STORAGE_ENV = "FTL_STORAGE"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(storage: str) -> bool:
    return bool(_SCHEME.match(storage))


def resolve_storage(option: str | None, *, local_cluster_storage: str | None) -> str:
    """--storage, else the local cluster's folder (when submitting to it), else $FTL_STORAGE, else an error."""
    storage = option or local_cluster_storage or os.environ.get(STORAGE_ENV, "").strip() or None
    source = "--storage" if option else ("the local cluster" if local_cluster_storage else f"${STORAGE_ENV}")
    if storage is None:
        raise FtlError(
            "--storage: a cluster job needs a place for its run directory that the cluster writes and ftl fetch "
            f"reads: give --storage /shared/path or a URI (s3://bucket/runs, gs://...), or set ${STORAGE_ENV}"
        )
    return check_storage(storage, source)


def check_storage(storage: str, source: str = "--storage") -> str:
    """An absolute path or a URI without credentials (they would show in the job's command line)."""
    if is_uri(storage):
        try:
            parts = urlsplit(storage)
        except ValueError as exc:
            raise FtlError(f"{source}: '{storage}' is not a valid URI ({exc})") from None
        if parts.password or parts.username:
            raise FtlError(
                f"{source}: the URI holds credentials, which would show in the job's command line; give them "
                "to the cluster through its environment (e.g. AWS_ACCESS_KEY_ID, GOOGLE_APPLICATION_CREDENTIALS)"
            )
        return storage.rstrip("/")
    return str(Path(storage).expanduser().resolve())


def job_location(storage: str, job_id: str) -> str:
    return f"{storage.rstrip('/')}/{job_id}"


def _filesystem(location: str):
    """(pyarrow filesystem, path inside it) for a URI or a local path."""
    import pyarrow.fs as pafs

    if not is_uri(location):
        return pafs.LocalFileSystem(), str(Path(location).resolve())
    try:
        return pafs.FileSystem.from_uri(location)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ... per scheme
        raise FtlError(f"storage: cannot open {location}: {first_line(exc)}") from None


def exists(location: str) -> bool:
    import pyarrow.fs as pafs

    filesystem, path = _filesystem(location)
    return filesystem.get_file_info(path).type != pafs.FileType.NotFound


def copy_tree(source: str, destination: str) -> None:
    """Copy a directory between any two of: local path, file://, s3://, gs://, ... (pyarrow.fs)."""
    import pyarrow.fs as pafs

    source_fs, source_path = _filesystem(source)
    destination_fs, destination_path = _filesystem(destination)
    info = source_fs.get_file_info(source_path)
    if info.type != pafs.FileType.Directory:
        raise FtlError(f"storage: {source} is not a directory")
    destination_fs.create_dir(destination_path, recursive=True)
    try:
        pafs.copy_files(
            source_path,
            destination_path,
            source_filesystem=source_fs,
            destination_filesystem=destination_fs,
        )
    except Exception as exc:  # noqa: BLE001
        raise FtlError(f"storage: copying {source} to {destination} failed: {first_line(exc)}") from None
