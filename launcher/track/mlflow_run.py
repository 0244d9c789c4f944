"""One MLflow run through `MlflowClient` (no fluent global run: a search's driver holds its parent run while
trials log their own, and one process may hold several runs one after another).

Nesting is MLflow's own: a child run carries the tag mlflow.parentRunId (what `start_run(nested=True)` sets).
The default store is a SQLite database in the output folder (<output>/mlflow.db, artifacts in
<output>/mlartifacts): MLflow 3 refuses new file stores (./mlruns).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ftl.launcher.errors import FtlError
from ftl.launcher.recipe.log import MlflowSettings, is_relative_local
from ftl.launcher.secrets import redact
from ftl.launcher.track.params import MAX_KEY, param_text
from ftl.launcher.track.spec import Parent, RunSpec

PARENT_TAG = "mlflow.parentRunId"
# MLflow's client retries a failed request 7 times with exponential backoff (minutes in all) and waits 120 s
# for an answer: a dead server would keep a run's delivery busy long after training ends. ftl's defaults, unless
# the environment sets them:
_CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # ftl says where the run is, once, on stderr
}
_BAD_KEY = re.compile(r"[^0-9A-Za-z_\-. :/]")  # what MLflow accepts in metric and param names
_BATCH = 100  # params or tags per request (MLflow's limit); metrics allow 1000


class MlflowRun:
    name = "mlflow"

    def __init__(self, settings: MlflowSettings, *, output: Path, parent: Parent | None) -> None:
        self.settings = settings
        from_parent = parent.of("mlflow") if parent else {}
        self.parent_run_id: str | None = from_parent.get("run_id")
        self.experiment_id: str | None = from_parent.get("experiment_id")
        self.uri = (
            settings.tracking_uri or from_parent.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
        )
        if self.uri and is_relative_local(self.uri):
            raise FtlError(
                f"MLFLOW_TRACKING_URI={redact(self.uri)} is a relative path, which Ray workers and cluster jobs "
                "resolve elsewhere; give an absolute one (sqlite:////abs/path/mlflow.db) or a server"
            )
        self.local_store = self.uri is None
        if self.uri is None:
            self.uri = f"sqlite:///{output.resolve() / 'mlflow.db'}"
        self.experiment_name = settings.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME")
        self.run_id: str | None = None
        self._client = None

    # ---- what the run keeps (trackers.json) and tells its children ---------------------------------
    def ids(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "experiment_id": self.experiment_id, "tracking_uri": self.uri}

    def shown_uri(self) -> str:
        """The UI's page of the run on a server, else the store."""
        shown = redact(self.uri)
        if shown.startswith(("http://", "https://")) and self.run_id:
            return f"{shown.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        return shown

    # ---- calls (on the courier's thread) -----------------------------------------------------------
    def start(self, spec: RunSpec, resume: dict[str, Any] | None, keep: Callable[[], None]) -> None:
        """Create the run (or continue `resume`'s), `keep` its id, log the parameters."""
        for name, value in _CLIENT_DEFAULTS.items():
            os.environ.setdefault(name, value)
        client = self.client()
        if resume and resume.get("run_id") and resume.get("tracking_uri") == redact(self.uri):
            self.run_id, self.experiment_id = resume["run_id"], resume.get("experiment_id")
            client.update_run(self.run_id, status="RUNNING")
            known = client.get_run(self.run_id).data.params
            params = {k: v for k, v in _clean(spec.params).items() if k not in known}
        else:
            if self.experiment_id is None:
                self.experiment_id = self._experiment(self.experiment_name or spec.recipe)
            tags = {"ftl.kind": spec.kind, **self.settings.tags, **spec.tags}
            if self.parent_run_id:
                tags[PARENT_TAG] = self.parent_run_id
            started = int(spec.started * 1000)
            run = client.create_run(
                self.experiment_id, start_time=started, run_name=spec.name, tags=_clean(tags)
            )
            self.run_id = run.info.run_id
            params = _clean(spec.params)
        keep()
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), _BATCH):
            client.log_batch(self.run_id, params=items[i : i + _BATCH], synchronous=True)

    def metrics(self, values: dict[str, float], step: int, when: float) -> None:
        from mlflow.entities import Metric

        batch = [Metric(_key(k), float(v), int(when * 1000), step) for k, v in values.items()]
        for i in range(0, len(batch), 1000):
            self.client().log_batch(self.run_id, metrics=batch[i : i + 1000], synchronous=True)

    def final(self, values: dict[str, float], step: int) -> None:
        """The run's final metrics, as final/<name> (the eval_* history keeps every evaluation)."""
        self.metrics({f"final/{k}": v for k, v in values.items()}, step, time.time())

    def tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, v) for k, v in _clean(tags).items()]
        for i in range(0, len(items), _BATCH):
            self.client().log_batch(self.run_id, tags=items[i : i + _BATCH], synchronous=True)

    def files(self, paths: list[Path], folder: str | None = None) -> None:
        for path in paths:
            if path.is_dir():
                self.client().log_artifacts(self.run_id, str(path), folder or path.name)
            elif path.exists():
                self.client().log_artifact(self.run_id, str(path), folder)

    def model(self, folder: Path) -> None:
        self.client().log_artifacts(self.run_id, str(folder), "model")

    def mark(self, child: dict[str, Any], status: str, best: bool) -> None:
        client, run_id = self.client(), child["run_id"]
        client.set_tag(run_id, "ftl.status", status)
        if best:
            client.set_tag(run_id, "ftl.best", "true")
        # the scheduler ends a stopped trial's process mid-run (its run is left RUNNING, or FAILED by the
        # interruption): KILLED, as MLflow calls a run stopped from outside
        ended = client.get_run(run_id).info.status
        if status == "stopped early" and ended != "FINISHED":
            client.set_terminated(run_id, status="KILLED")
        elif status == "error" and ended == "RUNNING":
            client.set_terminated(run_id, status="FAILED")

    def end(self, status: str) -> None:
        """status: FINISHED, FAILED or KILLED."""
        self.client().set_terminated(self.run_id, status=status)

    def close(self) -> None:
        return None

    # ---- helpers ------------------------------------------------------------------------------------
    def client(self):
        if self._client is None:
            import logging

            from mlflow.tracking import MlflowClient

            # the store's INFO lines (creating tables, ...) are not the run's business
            logging.getLogger("mlflow").setLevel(logging.WARNING)
            logging.getLogger("alembic").setLevel(logging.WARNING)
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def _experiment(self, name: str) -> str:
        client = self.client()
        found = client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        artifacts = None
        if self.uri.startswith(
            "sqlite:///"
        ):  # else MLflow puts artifacts in ./mlruns of the current directory
            artifacts = (Path(self.uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
        try:
            return client.create_experiment(name, artifact_location=artifacts)
        except Exception:  # another trial created it first
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id


def _key(name: str) -> str:
    return _BAD_KEY.sub("_", name)[:250]


def _clean(values: dict[str, Any]) -> dict[str, str]:
    return {_key(k)[:MAX_KEY]: param_text(v) for k, v in values.items()}
