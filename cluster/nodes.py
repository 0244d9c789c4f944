"""The nodes of a Ray cluster ftl starts: more raylets beside a head (`ftl cluster start --local --nodes N`), a
node joining a head from another machine (`ftl cluster join`), and the list of nodes the head knows.

Each node is its own `ray start --address HEAD --block` in a session of its own, with its own CPUs, object store,
ports and Ray temp dir, token auth on: on one machine they behave as separate machines do to Ray (a node can be
killed, and join again), which is how ftl's multi-node paths are tested here.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from ftl.cluster.processes import HOST, free_ports, last_line, ray_env, ray_executable, terminate, tree
from ftl.cluster.state import NodeRecord
from ftl.launcher.errors import FtlError

JOIN_TIMEOUT_S = 120.0
_NODE_PORTS = (
    "node-manager-port",
    "object-manager-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
    "metrics-export-port",
)
_STARTED = "Ray runtime started"


SETTLE_S = 8.0  # a node must stay up this long after starting: a port taken meanwhile kills its agents
ATTEMPTS = 3


def start_node(
    gcs_address: str,
    token_file: Path,
    *,
    name: str,
    temp_dir: Path,
    log_file: Path,
    cpus: int | None = None,
    node_ip: str | None = HOST,
) -> NodeRecord:
    """Start a raylet that joins the head at `gcs_address` (host:port); returns once it runs and stays up.
    Ports are chosen free just before `ray start` binds them; one taken in between fails the node, which is
    then started again on other ports."""
    for attempt in range(1, ATTEMPTS + 1):
        node = _start_once(gcs_address, token_file, name=name, temp_dir=temp_dir, log_file=log_file, cpus=cpus,
                           node_ip=node_ip)  # fmt: skip
        deadline = time.monotonic() + SETTLE_S
        while time.monotonic() < deadline and node.alive():
            time.sleep(0.5)
        if node.alive():
            node.processes = tree(node.pid)
            return node
        stop_node(node)
        if attempt == ATTEMPTS:
            raise FtlError(
                f"{name}: ray start ended right after joining {gcs_address}: {last_line(log_file)} (full log: "
                f"{log_file})"
            )
    raise AssertionError("unreachable")


def _start_once(
    gcs_address: str,
    token_file: Path,
    *,
    name: str,
    temp_dir: Path,
    log_file: Path,
    cpus: int | None = None,
    node_ip: str | None = HOST,
) -> NodeRecord:
    ports = free_ports(_NODE_PORTS)
    argv = [
        ray_executable(),
        "start",
        "--address",
        gcs_address,
        "--block",
        *(["--node-ip-address", node_ip] if node_ip else []),
        "--temp-dir",
        str(temp_dir),
        "--disable-usage-stats",
        "--resources",
        json.dumps({marker(name): 1}),  # tells this node apart in the head's list (same IP as the others)
        *[item for port, value in ports.items() for item in (f"--{port}", str(value))],
    ]
    if cpus is not None:
        argv += ["--num-cpus", str(cpus)]
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("w") as stream:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=stream,
            stderr=subprocess.STDOUT,
            env=ray_env(token_file),
            start_new_session=True,  # survives this command; stopped by ftl cluster stop
        )
    import psutil

    record = NodeRecord(
        name=name,
        pid=process.pid,
        create_time=psutil.Process(process.pid).create_time(),
        gcs_address=gcs_address,
        temp_dir=str(temp_dir),
        log_file=str(log_file),
        cpus=cpus,
        ports=ports,
    )
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while _STARTED not in log_file.read_text(errors="replace"):
        if process.poll() is not None:
            raise FtlError(
                f"{name}: ray start exited with code {process.returncode} before joining {gcs_address}: "
                f"{last_line(log_file)} (full log: {log_file})"
            )
        if time.monotonic() > deadline:
            stop_node(record)
            raise FtlError(
                f"{name}: did not join {gcs_address} within {JOIN_TIMEOUT_S:.0f} s; see {log_file}"
            )
        time.sleep(0.5)
    return record


def marker(name: str) -> str:
    """The custom resource a node ftl started carries: ftl_node_2 for node-2."""
    return "ftl_" + name.replace("-", "_")


def stop_node(node: NodeRecord) -> int:
    """End the node's processes (also when the node was killed: its leftovers); how many there were."""
    return terminate(node.pid, node.create_time, node.processes)


def list_nodes(dashboard_url: str, token: str) -> list[dict[str, Any]]:
    """The nodes the head knows, alive or dead: id, state, head or not, CPUs, object store (Ray's state API)."""
    import requests

    response = requests.get(
        f"{dashboard_url}/api/v0/nodes",
        params={"detail": "1", "limit": "1000"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    response.raise_for_status()
    found = []
    for node in response.json()["data"]["result"]["result"]:
        resources = node.get("resources_total") or {}
        found.append(
            {
                "node_id": node["node_id"],
                "state": node["state"],
                "head": bool(node.get("is_head_node")),
                "cpus": resources.get("CPU", 0.0),
                "gpus": resources.get("GPU", 0.0),
                "object_store_gib": resources.get("object_store_memory", 0.0) / 2**30,
                "markers": sorted(name for name in resources if name.startswith("ftl_")),
            }
        )
    return found
