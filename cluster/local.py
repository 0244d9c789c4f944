"""`ftl cluster start --local [--nodes N] / join / stop / status`: a Ray head on 127.0.0.1 for trying submission,
with more nodes beside it (cluster/nodes.py) to try multi-node runs on one machine.

`ray start --head --block` runs as a child in its own session, with token auth on (a fresh token in the
state directory, mode 0600, never printed), every port chosen free by ftl, the dashboard on 127.0.0.1, and a
Ray temp dir of its own (so `ray.init()` elsewhere on this machine never attaches to it). Its PATH starts with
this interpreter's bin directory, so jobs find this `ftl`. `stop` ends exactly the processes of the head's
tree and of every node ftl started or joined (also one that was killed), each checked by pid and creation time;
other Ray clusters on the machine are never touched.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from ftl.cluster.nodes import list_nodes, marker, start_node, stop_node
from ftl.cluster.processes import HOST, free_ports, kill, last_line, ray_env, ray_executable, terminate, tree
from ftl.cluster.state import (
    LocalCluster,
    NodeRecord,
    clear_state,
    process_matches,
    read_joined,
    read_state,
    state_dir,
    write_joined,
    write_state,
)
from ftl.launcher.console import console, log, out
from ftl.launcher.errors import FtlError

START_TIMEOUT_S = 120.0
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
    nodes: int = 1,
) -> LocalCluster:
    """The head (node-1) and `nodes - 1` more nodes, each offering `num_cpus` CPUs (default: all)."""
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
    ports = free_ports(_PORT_OPTIONS, fixed={"port": port, "dashboard-port": dashboard_port})
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
        ray_executable(),
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
            env=ray_env(token_file),
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
        cpus=num_cpus,
    )
    write_state(cluster)  # recorded at once: ftl cluster stop works even if the start below fails
    log(
        f"starting a local Ray head on {HOST} (ports {ports['port']}, dashboard {ports['dashboard-port']}) ..."
    )
    try:
        _wait_ready(cluster, process)
        cluster.processes = tree(cluster.pid)
        write_state(cluster)
        for index in range(2, nodes + 1):
            add_node(cluster, cpus=num_cpus, name=f"node-{index}")
    except BaseException:
        _end(cluster)
        _cleanup(cluster)
        raise
    more = f" and {nodes - 1} more node(s)" if nodes > 1 else ""
    log(
        f"[bold green]local cluster ready[/] at {cluster.dashboard_url}{more}; token file {token_file} (Ray token "
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
        kill([(pid, created) for pid, created in cluster.processes if process_matches(pid, created)])
        for node in cluster.nodes:
            stop_node(node)
        _cleanup(cluster)
        raise FtlError(
            f"the local cluster recorded in {state_dir()} is not running (pid {cluster.pid} has ended); its record "
            "is removed"
        )
    gone = _end(cluster)
    _cleanup(cluster)
    nodes = f" and {len(cluster.nodes)} more node(s)" if cluster.nodes else ""
    log(f"stopped the local cluster at {cluster.dashboard_url}{nodes} ({gone} process(es) ended)")


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
    console.print(nodes_table(cluster))
    out.print("running", markup=False)
    return cluster


def nodes_table(cluster: LocalCluster):
    """The nodes the head knows (Ray's view: alive or dead, resources) beside the ones ftl started."""
    from rich.table import Table

    known = list_nodes(cluster.dashboard_url, Path(cluster.token_file).read_text().strip())
    started = {marker(node.name): node for node in cluster.nodes}
    table = Table(title="nodes", title_justify="left", show_edge=False)
    for column in ("node", "id", "state", "CPUs", "GPUs", "object store", "started by ftl"):
        table.add_column(column, justify="right" if column in ("CPUs", "GPUs", "object store") else "left")
    for node in sorted(known, key=lambda n: (not n["head"], n["state"] != "ALIVE")):
        ours = next((started[m] for m in node["markers"] if m in started), None)
        name = "node-1 (head)" if node["head"] else (ours.name if ours else "-")
        table.add_row(
            name,
            node["node_id"][:12],
            node["state"].lower(),
            f"{node['cpus']:g}",
            f"{node['gpus']:g}",
            f"{node['object_store_gib']:.1f} GiB",
            "yes" if node["head"] or ours else "no",
        )
    return table


def add_node(cluster: LocalCluster, *, cpus: int | None, name: str | None = None) -> NodeRecord:
    """Start one more node for the local cluster and record it (so ftl cluster stop ends it)."""
    name = name or f"node-{len(cluster.nodes) + 2}"
    index = int(name.removeprefix("node-"))
    node = start_node(
        cluster.gcs_address,
        Path(cluster.token_file),
        name=name,
        temp_dir=Path(f"{cluster.temp_dir}-{name.removeprefix('node-')}"),  # short: Ray's socket paths
        log_file=Path(cluster.log_file).with_name(f"ray-{name}.log"),
        cpus=cpus,
        # an address of its own on the loopback network (127.0.0.2, ...): Ray tells nodes, and a driver its
        # node, apart by IP (a driver attached to a node that is then killed would die with it)
        node_ip=f"127.0.0.{index}",
    )
    cluster.nodes = [existing for existing in cluster.nodes if existing.name != name] + [node]
    write_state(cluster)
    log(f"{name} joined the local cluster ({cpus if cpus is not None else 'all'} CPUs; log {node.log_file})")
    return node


def join(address: str, token_file: Path, *, cpus: int | None, temp_dir: Path | None = None) -> NodeRecord:
    """Start a node that joins the head at `address` (host:port of its Ray/GCS port) with the head's token.

    On the machine of the local cluster it becomes one of that cluster's nodes (a node that was killed comes
    back this way); anywhere else it is recorded on its own, and ftl cluster stop ends it."""
    token_file = token_file.expanduser()
    if not token_file.is_file():
        raise FtlError(
            f"--token-file {token_file}: no such file; copy the head's token file (ftl cluster status)"
        )
    cluster = read_state()
    if cluster is not None and cluster.root_alive() and cluster.gcs_address == address:
        stale = [node for node in cluster.nodes if not node.alive()]
        name = stale[0].name if stale else None
        for node in stale:
            stop_node(node)  # what a killed node left behind
        return add_node(cluster, cpus=cpus, name=name)
    joined = read_joined()
    name = f"joined-{len(joined) + 1}"
    node = start_node(
        address,
        token_file,
        name=name,
        temp_dir=temp_dir or Path(tempfile.gettempdir()) / f"ftl-ray-{name}",
        log_file=state_dir() / f"ray-{name}.log",
        cpus=cpus,
        node_ip=None,  # another machine: Ray finds its address
    )
    write_joined([*joined, node])
    log(f"joined {address} as {name} (log {node.log_file}); ftl cluster stop ends it")
    return node


def _end(cluster: LocalCluster) -> int:
    """Stop the other nodes first (they would otherwise try to reach the vanished head), then the head."""
    ended = sum(stop_node(node) for node in cluster.nodes)
    return ended + terminate(cluster.pid, cluster.create_time, cluster.processes)


def _cleanup(cluster: LocalCluster) -> None:
    """The record, the token and the nodes' Ray temp dirs go; the storage (the runs) stays."""
    clear_state()
    Path(cluster.token_file).unlink(missing_ok=True)
    for temp_dir in [cluster.temp_dir, *(node.temp_dir for node in cluster.nodes)]:
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_ready(cluster: LocalCluster, process: subprocess.Popen) -> None:
    """Until the job API answers with the token (the dashboard and its job agent are up)."""
    import requests

    headers = {"Authorization": f"Bearer {Path(cluster.token_file).read_text().strip()}"}
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise FtlError(
                f"ray start exited with code {process.returncode} before the cluster was ready: "
                f"{last_line(Path(cluster.log_file))} (full log: {cluster.log_file})"
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
