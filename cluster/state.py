"""The record of the local cluster `ftl cluster start --local` started: its processes, ports, token and storage.

Kept in $FTL_CLUSTER_DIR (default $FTL_HOME/cluster, else ~/.cache/ftl/cluster)/local.json. A process counts as ours only when its
pid *and* creation time match the record, so a recycled pid is never mistaken for the cluster.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_DIR_ENV = "FTL_CLUSTER_DIR"
STATE_FILE = "local.json"
JOINED_FILE = "joined.json"


def state_dir() -> Path:
    configured = os.environ.get(STATE_DIR_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    home = os.environ.get("FTL_HOME", "").strip()
    return Path(home).expanduser() / "cluster" if home else Path.home() / ".cache" / "ftl" / "cluster"


@dataclass
class NodeRecord:
    """A Ray node (raylet) ftl started beside a head: `ray start --address HEAD --block` and its children."""

    name: str  # node-2, node-3, ... (the head is node-1)
    pid: int
    create_time: float
    gcs_address: str  # the head it joined
    temp_dir: str
    log_file: str
    cpus: int | None = None
    ports: dict[str, int] = field(default_factory=dict)
    processes: list[tuple[int, float]] = field(default_factory=list)

    def alive(self) -> bool:
        return process_matches(self.pid, self.create_time)


@dataclass
class LocalCluster:
    pid: int  # `ray start --head --block`, the root of the cluster's process tree
    create_time: float
    dashboard_url: str
    gcs_address: str
    token_file: str
    storage: str
    temp_dir: str  # Ray's --temp-dir: sessions and logs of this cluster only
    log_file: str
    ports: dict[str, int] = field(default_factory=dict)
    processes: list[tuple[int, float]] = field(default_factory=list)  # (pid, create time) seen at start
    nodes: list[NodeRecord] = field(default_factory=list)  # the other nodes ftl started (--nodes, join)
    cpus: int | None = None  # CPUs the head offers (--num-cpus)

    def root_alive(self) -> bool:
        return process_matches(self.pid, self.create_time)


def process_matches(pid: int, create_time: float) -> bool:
    """The process with this pid exists and is the same process (same creation time) and not a zombie."""
    import psutil

    try:
        process = psutil.Process(pid)
        return abs(process.create_time() - create_time) < 0.01 and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def state_path() -> Path:
    return state_dir() / STATE_FILE


def read_state() -> LocalCluster | None:
    path = state_path()
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        data["processes"] = [tuple(p) for p in data.get("processes", [])]
        data["nodes"] = [_node(node) for node in data.get("nodes", [])]
        return LocalCluster(**data)
    except (ValueError, TypeError):
        return None  # an unreadable record is treated as no record (ftl cluster start replaces it)


def _node(data: dict) -> NodeRecord:
    data["processes"] = [tuple(p) for p in data.get("processes", [])]
    return NodeRecord(**data)


def read_joined() -> list[NodeRecord]:
    """Nodes `ftl cluster join` started on this machine for a head that is not this machine's local cluster."""
    path = state_dir() / JOINED_FILE
    try:
        return [_node(node) for node in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError):
        return []


def write_joined(nodes: list[NodeRecord]) -> None:
    path = state_dir() / JOINED_FILE
    if not nodes:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps([asdict(node) for node in nodes], indent=2) + "\n")
    os.replace(temporary, path)


def write_state(cluster: LocalCluster) -> Path:
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(asdict(cluster), indent=2) + "\n")
    os.replace(temporary, path)
    return path


def clear_state() -> None:
    state_path().unlink(missing_ok=True)


def running_local_cluster() -> LocalCluster | None:
    """The recorded local cluster when its root process is still the one ftl started."""
    cluster = read_state()
    return cluster if cluster is not None and cluster.root_alive() else None
