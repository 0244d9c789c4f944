"""`ftl cluster start --local / stop / status`: a single-node Ray head on 127.0.0.1 for trying submission.

`ray start --head --block` runs as a child in its own session, with token auth on (a fresh token in the
state directory, mode 0600, never printed), every port chosen free by ftl, the dashboard on 127.0.0.1, and a
Ray temp dir of its own (so `ray.init()` elsewhere on this machine never attaches to it). Its PATH starts with
this interpreter's bin directory, so jobs find this `ftl`. `stop` ends exactly the processes of that tree,
each checked by pid and creation time; other Ray clusters on the machine are never touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ftl.cluster.state import LocalCluster, clear_state, process_matches, read_state, state_dir, write_state
from ftl.launcher.console import log, out
from ftl.launcher.errors import FtlError

HOST = "127.0.0.1"
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
_PORT_OPTIONS = (
    "port",
    "dashboard-port",
    "ray-client-server-port",
    "node-manager-port",
    "object-manager-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
    "metrics-export-port",
)


def start(
    *,
    port: int | None = None,
    dashboard_port: int | None = None,
    storage: Path | None = None,
    num_cpus: int | None = None,
) -> LocalCluster:
    existing = read_state()
    if existing is not None and existing.root_alive():
        raise FtlError(
            f"a local cluster is already running at {existing.dashboard_url} (pid {existing.pid}); use it, or "
            "stop it first: ftl cluster stop"
        )
    if existing is not None:
        log("removing the record of a local cluster that is no longer running")
        _cleanup(existing)
    home = state_dir()
    home.mkdir(parents=True, exist_ok=True)
    ports = _free_ports(len(_PORT_OPTIONS), fixed={"port": port, "dashboard-port": dashboard_port})
    token_file = home / "auth_token"
    _write_token(token_file)
    storage_dir = (storage or home / "storage").expanduser().resolve()
    storage_dir.mkdir(parents=True, exist_ok=True)
    temp_dir = (
        Path(tempfile.gettempdir())
        / f"ftl-ray-{hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:10]}"
    )
    log_file = home / "ray-start.log"
    argv = [
        _ray_executable(),
        "start",
        "--head",
        "--block",
        "--node-ip-address",
        HOST,
        "--dashboard-host",
        HOST,
        "--include-dashboard",
        "true",
        "--temp-dir",
        str(temp_dir),
        "--disable-usage-stats",
        *[item for name, value in ports.items() for item in (f"--{name}", str(value))],
    ]
    if num_cpus is not None:
        argv += ["--num-cpus", str(num_cpus)]
    with log_file.open("w") as stream:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=stream,
            stderr=subprocess.STDOUT,
            env=_head_env(token_file),
            start_new_session=True,  # Ctrl+C in this terminal, or ftl exiting, leaves the cluster running
        )
    import psutil

    cluster = LocalCluster(
        pid=process.pid,
        create_time=psutil.Process(process.pid).create_time(),
        dashboard_url=f"http://{HOST}:{ports['dashboard-port']}",
        gcs_address=f"{HOST}:{ports['port']}",
        token_file=str(token_file),
        storage=str(storage_dir),
        temp_dir=str(temp_dir),
        log_file=str(log_file),
        ports=ports,
    )
    write_state(cluster)  # recorded at once: ftl cluster stop works even if the start below fails
    log(
        f"starting a local Ray head on {HOST} (ports {ports['port']}, dashboard {ports['dashboard-port']}) ..."
    )
    try:
        _wait_ready(cluster, process)
    except BaseException:
        _terminate(cluster)
        _cleanup(cluster)
        raise
    cluster.processes = _tree(cluster.pid)
    write_state(cluster)
    log(
        f"[bold green]local cluster ready[/] at {cluster.dashboard_url}; token file {token_file} (Ray token "
        f"auth on); job files go to {storage_dir}\n"
        f"  ftl submit RECIPE --address {cluster.dashboard_url}   (or no --address: the local cluster is the "
        "default)\n  ftl cluster stop   ends it"
    )
    out.print(cluster.dashboard_url, markup=False)
    return cluster


def stop() -> None:
    cluster = read_state()
    if cluster is None:
        raise FtlError(
            f"no local cluster is recorded in {state_dir()} (nothing to stop); start one with ftl cluster start --local"
        )
    if not cluster.root_alive():
        leftovers = [(pid, created) for pid, created in cluster.processes if process_matches(pid, created)]
        _kill(leftovers)
        _cleanup(cluster)
        raise FtlError(
            f"the local cluster recorded in {state_dir()} is not running (pid {cluster.pid} has ended); its record "
            "is removed"
        )
    gone = _terminate(cluster)
    _cleanup(cluster)
    log(f"stopped the local cluster at {cluster.dashboard_url} ({gone} process(es) ended)")


def status() -> LocalCluster | None:
    cluster = read_state()
    if cluster is None or not cluster.root_alive():
        log("no local cluster is running" + (" (a stale record was found)" if cluster else ""))
        out.print("stopped", markup=False)
        return None
    alive = sum(process_matches(pid, created) for pid, created in cluster.processes)
    log(
        f"local cluster at {cluster.dashboard_url} (pid {cluster.pid}, {alive} process(es) at start alive); Ray "
        f"address {cluster.gcs_address}; token file {cluster.token_file}; job files in {cluster.storage}; log "
        f"{cluster.log_file}"
    )
    out.print("running", markup=False)
    return cluster


def _terminate(cluster: LocalCluster) -> int:
    """SIGTERM the `ray start` root (it stops its processes), then SIGKILL whatever of its tree is left."""
    import psutil

    family = {(pid, created) for pid, created in [*cluster.processes, *_tree(cluster.pid)]}
    family = {(pid, created) for pid, created in family if process_matches(pid, created)}
    if process_matches(cluster.pid, cluster.create_time):
        with contextlib.suppress(psutil.Error):
            psutil.Process(cluster.pid).terminate()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and any(process_matches(p, c) for p, c in family):
        time.sleep(0.3)
    _kill([(p, c) for p, c in family if process_matches(p, c)])
    return len(family)


def _kill(members: list[tuple[int, float]]) -> None:
    import psutil

    processes = []
    for pid, created in members:
        if process_matches(pid, created):
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                process.kill()
                processes.append(process)
    psutil.wait_procs(processes, timeout=15)


def _cleanup(cluster: LocalCluster) -> None:
    """The record, the token and Ray's temp dir go; the storage (the runs) stays."""
    clear_state()
    Path(cluster.token_file).unlink(missing_ok=True)
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)


def _tree(pid: int) -> list[tuple[int, float]]:
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


def _wait_ready(cluster: LocalCluster, process: subprocess.Popen) -> None:
    """Until the job API answers with the token (the dashboard and its job agent are up)."""
    import requests

    headers = {"Authorization": f"Bearer {Path(cluster.token_file).read_text().strip()}"}
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise FtlError(
                f"ray start exited with code {process.returncode} before the cluster was ready: "
                f"{_last_line(Path(cluster.log_file))} (full log: {cluster.log_file})"
            )
        try:
            response = requests.get(f"{cluster.dashboard_url}/api/jobs/", headers=headers, timeout=5)
            if response.status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1.0)
    raise FtlError(
        f"the local cluster did not answer at {cluster.dashboard_url} within {START_TIMEOUT_S:.0f} s; see "
        f"{cluster.log_file}"
    )


def _write_token(path: Path) -> None:
    """A fresh random token, readable by this user only."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as stream:
        stream.write(secrets.token_hex(32))


def _head_env(token_file: Path) -> dict[str, str]:
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


def _ray_executable() -> str:
    beside = Path(sys.executable).parent / "ray"
    found = str(beside) if beside.exists() else shutil.which("ray")
    if not found:
        raise FtlError("the ray command is not installed; pip install 'ray[default]'")
    return found


def _free_ports(count: int, fixed: dict[str, int | None]) -> dict[str, int]:
    """Ports nothing listens on now (kept open together, so they differ); fixed ones are checked free."""
    ports: dict[str, int] = {}
    sockets = []
    try:
        for name in _PORT_OPTIONS[:count]:
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


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"
