"""The processes of a Ray node ftl started: `ray start --block` and its children, each known by pid and creation
time (a recycled pid is never mistaken for one of them), started, checked and ended here."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from ftl.cluster.state import process_matches
from ftl.launcher.errors import FtlError

HOST = "127.0.0.1"
STOP_TIMEOUT_S = 30.0


def tree(pid: int) -> list[tuple[int, float]]:
    """(pid, create time) of a process and all its descendants."""
    import psutil

    try:
        root = psutil.Process(pid)
        members = [root, *root.children(recursive=True)]
    except psutil.Error:
        return []
    family = []
    for member in members:
        with contextlib.suppress(psutil.Error):
            family.append((member.pid, member.create_time()))
    return family


def kill(members: list[tuple[int, float]]) -> None:
    import psutil

    processes = []
    for pid, created in members:
        if process_matches(pid, created):
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                process.kill()
                processes.append(process)
    psutil.wait_procs(processes, timeout=15)


def terminate(pid: int, create_time: float, known: list[tuple[int, float]]) -> int:
    """SIGTERM a `ray start` root (it stops its processes), then SIGKILL whatever of its tree (and of the
    processes `known` from its start) is left. Returns how many processes there were."""
    import psutil

    family = {(p, c) for p, c in [*known, *tree(pid)] if process_matches(p, c)}
    if process_matches(pid, create_time):
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).terminate()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and any(process_matches(p, c) for p, c in family):
        time.sleep(0.3)
    kill([(p, c) for p, c in family if process_matches(p, c)])
    return len(family)


def ray_env(token_file: Path) -> dict[str, str]:
    """The environment of a `ray start`: token auth on with this token file, no other cluster's address."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN")
    }
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN_PATH"] = str(token_file)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    interpreter_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([interpreter_bin, env.get("PATH", "")])
    return env


def ray_executable() -> str:
    beside = Path(sys.executable).parent / "ray"
    found = str(beside) if beside.exists() else shutil.which("ray")
    if not found:
        raise FtlError("the ray command is not installed; pip install 'ray[default]'")
    return found


def free_ports(names: tuple[str, ...], fixed: dict[str, int | None] | None = None) -> dict[str, int]:
    """Ports nothing listens on now (kept open together, so they differ); fixed ones are checked free."""
    fixed = fixed or {}
    ports: dict[str, int] = {}
    sockets = []
    try:
        for name in names:
            wanted = fixed.get(name)
            handle = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                handle.bind((HOST, wanted or 0))
            except OSError:
                handle.close()
                raise FtlError(f"--{name} {wanted}: the port is in use; choose another") from None
            sockets.append(handle)
            ports[name] = handle.getsockname()[1]
    finally:
        for handle in sockets:
            handle.close()
    return ports


def last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"
