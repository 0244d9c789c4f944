"""The real trackers for tests: an `mlflow server` on 127.0.0.1 (SQLite backend, local artifact store) started and
stopped by the test, and a reader of W&B's offline run files (run-<id>.wandb: W&B's header, then LevelDB log
records holding protobuf `Record`s)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import kill_process_tree


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class MlflowServer:
    """`mlflow server` in a process group of its own; `stop` kills its whole tree (uvicorn and job workers)."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "server.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> MlflowServer:
        if self.process is not None and self.process.poll() is None:
            return self
        command = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.folder.resolve() / 'server.db'}",
            "--artifacts-destination",
            str(self.folder.resolve() / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=self.folder)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.log.read_text()[-2000:]}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer,
            ):
                if answer.status == 200:
                    return self
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"mlflow server not ready after {timeout:g}s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            kill_process_tree(self.process)
        self.process = None

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.url)


# ---- W&B offline files ---------------------------------------------------------------------------------
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    position, pieces, payloads = 7, [], []
    while position + 7 <= len(data):
        left = _BLOCK - position % _BLOCK
        if left < 7:  # a block's tail too short for a record header is padding
            position += left
            continue
        length = int.from_bytes(data[position + 4 : position + 6], "little")
        kind = data[position + 6]
        payload = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind == _FULL:
            payloads.append(payload)
        elif kind == _FIRST:
            pieces = [payload]
        elif kind == _MIDDLE:
            pieces.append(payload)
        elif kind == _LAST:
            payloads.append(b"".join([*pieces, payload]))
    return [pb.Record.FromString(payload) for payload in payloads]


@dataclass
class WandbOfflineRun:
    folder: Path
    run_id: str = ""
    project: str = ""
    group: str = ""
    job_type: str = ""
    config: dict = field(default_factory=dict)
    history: dict[str, list[tuple[int, float]]] = field(default_factory=lambda: defaultdict(list))
    summary: dict = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    exit_code: int | None = None
    files: set[str] = field(default_factory=set)
    artifacts: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, folder: Path) -> WandbOfflineRun:
        import json

        # offline-run-<time>-<id>: the run id even if the run's record never reached the file
        found = cls(folder, run_id=folder.name.rsplit("-", 1)[-1])
        (run_file,) = folder.glob("run-*.wandb")
        for record in wandb_records(run_file):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run = record.run
                found.run_id, found.project, found.job_type = run.run_id, run.project, run.job_type
                found.group = run.run_group
                found.tags = list(run.tags)
                for item in run.config.update:
                    found.config[item.key] = json.loads(item.value_json)
            elif kind == "config":
                for item in record.config.update:
                    found.config[item.key] = json.loads(item.value_json)
            elif kind == "history":
                row = {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
                for key, value in row.items():
                    if not key.startswith("_") and key != "global_step" and isinstance(value, (int, float)):
                        found.history[key].append((int(row["global_step"]), float(value)))
            elif kind == "summary":
                for item in record.summary.update:
                    found.summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
            elif kind == "exit":
                found.exit_code = record.exit.exit_code
            elif kind == "artifact":
                found.artifacts.append(record.artifact.name)
        found.files = {p.name for p in (folder / "files").iterdir()} if (folder / "files").exists() else set()
        return found


def wandb_offline_runs(root: Path) -> list[WandbOfflineRun]:
    """Every offline run under root/wandb/, oldest first (a resumed run has one folder per session)."""
    return [WandbOfflineRun.read(folder) for folder in sorted((root / "wandb").glob("offline-run-*"))]


def mlflow_runs(store: Path) -> dict[str, list]:
    """The runs of a local MLflow store (<output>/mlflow.db) by their ftl.kind tag (search, trial, fold, ...)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store.resolve()}")
    found: dict[str, list] = defaultdict(list)
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            found[run.data.tags.get("ftl.kind", "")].append(run)
    return found
