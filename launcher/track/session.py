"""The tracker runs of one ftl run (or search, trial, bench): opened with the run, fed its metrics, closed with its
results and status. Each tracker is delivered to by its own `Courier`, so none can stop or slow training.

<output>/trackers.json keeps each tracker's run id (and what it did not receive): a resumed run, a restarted
Ray worker or a resumed search continues the same tracker runs instead of starting new ones.
"""

from __future__ import annotations

import importlib.util
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ftl.launcher.console import log
from ftl.launcher.errors import FtlError
from ftl.launcher.files import atomic_write
from ftl.launcher.recipe.log import LogSection
from ftl.launcher.secrets import redact
from ftl.launcher.track.courier import Courier, Parcel
from ftl.launcher.track.mlflow_run import MlflowRun
from ftl.launcher.track.spec import Parent, RunSpec
from ftl.launcher.track.wandb_run import WandbRun, check_login, wandb_mode

TRACKERS_FILE = "trackers.json"
EXTERNAL = ("mlflow", "wandb")  # tensorboard writes files in the run directory (a Trainer callback)
_PACKAGES = {"mlflow": "mlflow", "wandb": "wandb"}
CLOSE_TIMEOUT_S = 120.0


def external_trackers(log_section: LogSection) -> list[str]:
    return [name for name in log_section.trackers or () if name in EXTERNAL]


def check_installed(log_section: LogSection) -> None:
    """One line naming how to install a tracker the recipe lists but this environment lacks."""
    for name in external_trackers(log_section):
        if importlib.util.find_spec(_PACKAGES[name]) is None:
            raise FtlError(
                f"log.trackers: {name} is not installed; install it with pip install 'ftl[trackers]' (or pip "
                f"install {_PACKAGES[name]}), or remove {name} from log.trackers"
            )


def preflight(log_section: LogSection) -> None:
    """What `ftl check` and every run find before training: the trackers' libraries, and a W&B login online."""
    check_installed(log_section)
    if "wandb" in external_trackers(log_section) and wandb_mode(log_section.wandb) == "online":
        check_login()
    if "mlflow" in external_trackers(log_section):
        _check_sqlite_store(log_section.mlflow.tracking_uri)


def _check_sqlite_store(uri: str | None) -> None:
    """An sqlite store that is a folder can never be opened, and MLflow retries it for minutes."""
    key = "log.mlflow.tracking_uri" if uri else "$MLFLOW_TRACKING_URI"
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri.startswith("sqlite:///") and Path(uri.removeprefix("sqlite:///")).is_dir():
        raise FtlError(
            f"{key}: {uri.removeprefix('sqlite:///')} is a folder, not a database file; name a file in it "
            f"({uri.rstrip('/')}/mlflow.db)"
        )


class Tracking:
    """Zero or more tracker runs, driven together. Every method returns at once and never raises because of a
    tracker; `finish` waits for the deliveries (at most CLOSE_TIMEOUT_S) and reports what did not arrive."""

    def __init__(self, root: Path, backends: list, warn: Callable[[str], None]) -> None:
        self.root = root
        self.backends = backends
        self.couriers = {backend.name: Courier(backend.name, warn) for backend in backends}
        self._lock = threading.Lock()
        self._closed = False

    def __bool__(self) -> bool:
        return bool(self.backends)

    @classmethod
    def open(
        cls,
        log_section: LogSection,
        root: Path,
        spec: RunSpec,
        *,
        parent: Parent | None = None,
        warn: Callable[[str], None] = log,
    ) -> Tracking:
        """Start (or, when root/trackers.json names them, continue) the runs of the recipe's trackers."""
        names = external_trackers(log_section)
        check_installed(log_section)
        if parent is None:
            parent = Parent.from_env()
        backends: list[Any] = []
        for name in names:
            if name == "mlflow":
                backends.append(MlflowRun(log_section.mlflow, output=root, parent=parent))
            else:
                backends.append(WandbRun(log_section.wandb, output=root, parent=parent))
        tracking = cls(root, backends, warn)
        previous = tracking._read()
        for backend in backends:

            def start(backend=backend) -> None:  # keeps the run id as soon as it is known (a kill may follow)
                backend.start(spec, previous.get(backend.name), keep=tracking._write)

            tracking.couriers[backend.name].call("the run's start (parameters)", start)
        return tracking

    # ---- during the run -----------------------------------------------------------------------------
    def metrics(self, values: dict[str, float], step: int) -> None:
        when = time.time()  # MLflow keeps when a value was logged, not when it arrived
        for backend in self.backends:
            self.couriers[backend.name].send(
                Parcel("metrics", lambda b=backend: b.metrics(values, step, when), metrics=values, step=step)
            )

    def tags(self, tags: dict[str, str]) -> None:
        self._each("tags", lambda backend: backend.tags(tags))

    def files(self, paths: list[Path], what: str = "files") -> None:
        self._each(what, lambda backend: backend.files(paths))

    def wait(self, timeout: float = 60.0) -> None:
        """Block until what was sent so far is delivered (a search's run must exist before its trials)."""
        done = [threading.Event() for _ in self.backends]
        for backend, event in zip(self.backends, done, strict=True):
            self.couriers[backend.name].call("", event.set)
        for event in done:
            event.wait(timeout)

    def mark_child(self, ids: dict[str, dict[str, Any]], status: str, *, best: bool, label: str) -> None:
        """Tag a child run (a trial, fold or cell, by the ids in its trackers.json) with how it ended: completed,
        stopped early (by the scheduler, which ends the trial's process) or error; `best` marks the best trial."""
        for backend in self.backends:
            if ids.get(backend.name, {}).get("run_id"):
                self.couriers[backend.name].call(
                    f"the status of {label}", lambda b=backend: b.mark(ids[b.name], status, best)
                )

    def parent_for_children(self, kind: str) -> Parent:
        """What this run's children (trials, folds, cells) need to nest under it."""
        return Parent(kind, {backend.name: backend.ids() for backend in self.backends if backend.run_id})

    # ---- the end ------------------------------------------------------------------------------------
    def finish(
        self,
        *,
        final: dict[str, float] | None = None,
        step: int = 0,
        files: list[Path] = (),
        model: Path | None = None,
        log_model: dict[str, bool] | None = None,
        status: str = "FINISHED",
    ) -> None:
        """Final metrics, files (manifest, recipe, metrics) and optionally the model; end the runs; report."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if final:
            self._each("the final metrics", lambda backend: backend.final(final, step))
        if files:
            self._each("the run's files", lambda backend: backend.files(list(files)))
        for backend in self.backends:
            if model is not None and (log_model or {}).get(backend.name):
                self.couriers[backend.name].call("the model artifact", lambda b=backend: b.model(model))
        self._each(f"the run's end ({status})", lambda backend: backend.end(status))
        for courier in self.couriers.values():
            courier.close(CLOSE_TIMEOUT_S)
        self._write()
        self._report()

    def _report(self) -> None:
        for backend in self.backends:
            courier = self.couriers[backend.name]
            if courier.undelivered:
                log(
                    f"[bold yellow]{backend.name} did not receive[/]: {courier.undelivered.describe()} "
                    f"({courier.down}); the run directory keeps ftl's own record (log_history.json, metrics.json)"
                )
            elif backend.run_id:
                log(f"{backend.name}: run {backend.run_id} ({backend.shown_uri()})")

    # ---- trackers.json ------------------------------------------------------------------------------
    def _each(self, what: str, call: Callable[[Any], Any]) -> None:
        for backend in self.backends:
            self.couriers[backend.name].call(what, lambda b=backend: call(b))

    def _read(self) -> dict[str, Any]:
        path = self.root / TRACKERS_FILE
        try:
            return json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError):
            return {}

    def _write(self) -> None:
        with self._lock:
            record = self._read()
            for backend in self.backends:
                if backend.run_id is None:
                    continue
                ids = {k: redact(v) if isinstance(v, str) else v for k, v in backend.ids().items()}
                courier = self.couriers[backend.name]
                if courier.undelivered:
                    ids["undelivered"] = courier.undelivered.as_json()
                    ids["failure"] = courier.down
                record[backend.name] = ids
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write(self.root / TRACKERS_FILE, json.dumps(record, indent=2) + "\n")
