"""`ftl jobs / status / logs / stop / fetch`: a submitted job, seen and handled through the Ray Jobs API.

Exit codes of commands that wait for a job's end (logs --follow, submit --follow): 0 succeeded, 1 failed,
3 stopped. Logs go to stdout as the job writes them; ftl's own lines go to stderr.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from ftl.cluster.client import Connection, connect
from ftl.cluster.storage import check_storage, copy_tree, exists, job_location
from ftl.launcher.console import log, out
from ftl.launcher.errors import FtlError

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 3}
STOP_WAIT_S = 60.0


def list_jobs(address: str | None, *, token_file: Path | None = None, as_json: bool = False) -> None:
    connection = connect(address, token_file=token_file)
    with connection.errors():
        jobs = connection.client.list_jobs()
    jobs = sorted(jobs, key=lambda job: job.start_time or 0)
    rows = [_summary(job) for job in jobs]
    if as_json:
        out.print(json.dumps(rows, indent=2), markup=False)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"jobs at {connection.address.url}", title_justify="left")
    for column in ("job", "status", "kind", "recipe", "started", "duration"):
        table.add_column(column, justify="right" if column == "duration" else "left", no_wrap=True)
    for row in rows:
        table.add_row(row["job"], row["status"], row["kind"], row["recipe"], row["started"], row["duration"])
    # piped output: whole ids (no terminal width to fit)
    (out if out.is_terminal else Console(highlight=False, width=240)).print(table)
    if not rows:
        log("no jobs yet; submit one: ftl submit RECIPE")


def status(job_id: str, address: str | None, *, token_file: Path | None = None) -> str:
    """The job's status on stdout; what it runs and how it ended on stderr."""
    connection = connect(address, token_file=token_file)
    info = _info(connection, job_id)
    row = _summary(info)
    meta = info.metadata or {}
    log(
        f"{job_id}: {row['status']} ({row['kind']} {row['recipe']}, started {row['started']}, {row['duration']})"
        + (f"; run directory: {meta['ftl_storage'].rstrip('/')}/{job_id}" if meta.get("ftl_storage") else "")
    )
    if info.message and row["status"] in ("FAILED", "STOPPED"):
        log(connection.redact(_last_lines(info.message)))
    out.print(row["status"], markup=False)
    return row["status"]


def logs(job_id: str, address: str | None, *, follow: bool = False, token_file: Path | None = None) -> int:
    connection = connect(address, token_file=token_file)
    if follow:
        return follow_logs(connection, job_id)
    _info(connection, job_id)
    with connection.errors(job_id):
        text = connection.client.get_job_logs(job_id)
    sys.stdout.write(connection.redact(text))
    sys.stdout.flush()
    return 0


def follow_logs(connection: Connection, job_id: str) -> int:
    """Stream the job's logs until it ends; the exit code says how it ended."""
    _info(connection, job_id)
    printed = 0

    async def tail() -> None:
        nonlocal printed
        async for chunk in connection.client.tail_job_logs(job_id):
            sys.stdout.write(connection.redact(chunk))
            sys.stdout.flush()
            printed += len(chunk)

    try:
        asyncio.run(tail())
    except KeyboardInterrupt:
        log(f"stopped following; the job goes on (ftl stop {job_id} ends it)")
        return 130
    except Exception:  # noqa: BLE001 - the websocket broke: poll the rest instead
        printed = _poll_logs(connection, job_id, printed)
    final = _wait_terminal(connection, job_id, timeout_s=30.0)
    _report_end(connection, job_id, final)
    return EXIT_CODES.get(final.status_name, 1)


def stop(job_id: str, address: str | None, *, token_file: Path | None = None) -> str:
    connection = connect(address, token_file=token_file)
    info = _info(connection, job_id)
    if _name(info.status) in TERMINAL:
        log(f"{job_id} has already ended: {_name(info.status)}")
        out.print(_name(info.status), markup=False)
        return _name(info.status)
    with connection.errors(job_id):
        connection.client.stop_job(job_id)
    final = _wait_terminal(connection, job_id, timeout_s=STOP_WAIT_S)
    log(f"{job_id}: {final.status_name}")
    out.print(final.status_name, markup=False)
    return final.status_name


def fetch(
    job_id: str,
    output: Path,
    address: str | None,
    *,
    storage: str | None = None,
    token_file: Path | None = None,
) -> Path:
    """Copy <storage>/<job-id>/ to <output>/<job-id>/; the storage comes from the job's metadata unless given."""
    job_status = None
    if storage is None:
        connection = connect(address, token_file=token_file)
        info = _info(connection, job_id)
        job_status = _name(info.status)
        storage = (info.metadata or {}).get("ftl_storage")
        if not storage:
            raise FtlError(
                f"job '{job_id}' was not submitted by ftl submit (no storage in its metadata); give --storage"
            )
    else:
        storage = check_storage(storage)
    source = job_location(storage, job_id)
    target = output / job_id
    if target.exists() and any(target.iterdir()):
        raise FtlError(f"--output: {target} already holds files; remove it or choose another --output")
    if not exists(source):
        state = f" (the job is {job_status})" if job_status else ""
        raise FtlError(
            f"job '{job_id}': no run directory at {source}{state}; a job writes it when it starts training (a "
            "storage path must be mounted here too) and a job with URI storage uploads it when it ends: check "
            f"ftl status {job_id} and ftl logs {job_id}"
        )
    if job_status in ("PENDING", "RUNNING"):
        log(f"[yellow]{job_id} is still {job_status}: fetching what it has written so far[/]")
    copy_tree(source, str(target))
    log(f"fetched {source} -> {target}")
    out.print(str(target), markup=False)
    return target


class _Final:
    def __init__(self, info) -> None:
        self.info = info
        self.status_name = _name(info.status)


def _wait_terminal(connection: Connection, job_id: str, *, timeout_s: float) -> _Final:
    deadline = time.monotonic() + timeout_s
    while True:
        info = _info(connection, job_id)
        if _name(info.status) in TERMINAL or time.monotonic() > deadline:
            return _Final(info)
        time.sleep(0.5)


def _poll_logs(connection: Connection, job_id: str, printed: int) -> int:
    while True:
        status_name = _name(_info(connection, job_id).status)
        with connection.errors(job_id):
            text = connection.client.get_job_logs(job_id)
        if len(text) > printed:
            sys.stdout.write(connection.redact(text[printed:]))
            sys.stdout.flush()
            printed = len(text)
        if status_name in TERMINAL:
            return printed
        time.sleep(1.0)


def _report_end(connection: Connection, job_id: str, final: _Final) -> None:
    status_name = final.status_name
    if status_name == "SUCCEEDED":
        log(f"[bold green]{job_id} SUCCEEDED[/]; fetch it: ftl fetch {job_id} --output runs/")
    elif status_name in TERMINAL:
        detail = connection.redact(_last_lines(final.info.message or "", 1))
        log(f"[bold red]{job_id} {status_name}[/]" + (f": {detail}" if detail else ""))
    else:
        log(f"{job_id} is still {status_name}")


def _info(connection: Connection, job_id: str):
    with connection.errors(job_id):
        return connection.client.get_job_info(job_id)


def _summary(job) -> dict[str, str]:
    meta = job.metadata or {}
    started = job.start_time / 1000 if job.start_time else None
    ended = job.end_time / 1000 if job.end_time else None
    duration = (ended or time.time()) - started if started else None
    return {
        "job": job.submission_id or job.job_id or "-",
        "status": _name(job.status),
        "kind": meta.get("ftl_kind", "-"),
        "recipe": meta.get("recipe_name", "-"),
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "-",
        "duration": f"{duration:.0f} s" if duration is not None else "-",
    }


def _name(status) -> str:
    return str(getattr(status, "value", status))


def _last_lines(message: str, count: int = 3) -> str:
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return " | ".join(lines[-count:])
