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


def state_dir() -> Path:
    configured = os.environ.get(STATE_DIR_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    home = os.environ.get("FTL_HOME", "").strip()
    return Path(home).expanduser() / "cluster" if home else Path.home() / ".cache" / "ftl" / "cluster"


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
        return LocalCluster(**data)
    except (ValueError, TypeError):
        return None  # an unreadable record is treated as no record (ftl cluster start replaces it)


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
