"""What a tracker run is told when it starts, and how a run finds its parent (a search or a bench)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

# A search (or a trial of tune.cv) tells its trials and folds where its own tracker runs are, through the
# environment: it crosses Ray Tune trials, Ray tasks and Ray Train workers alike (ray_launch forwards it).
PARENT_ENV = "FTL_TRACKING_PARENT"
# Tracker settings a Ray worker or cluster job needs as the driver has them. Never the secrets (WANDB_API_KEY,
# MLFLOW_TRACKING_TOKEN/PASSWORD): they would travel in Ray's runtime_env, which the cluster shows to anyone who
# can list jobs. A local Ray inherits them from ftl's own environment; a remote cluster's nodes hold their own.
TRACKER_ENV = (
    PARENT_ENV,
    "MLFLOW_TRACKING_URI",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "WANDB_MODE",
    "WANDB_PROJECT",
    "WANDB_ENTITY",
    "WANDB_BASE_URL",
)


@dataclass
class RunSpec:
    name: str  # the run's display name
    kind: str  # run | trial | fold | search | cv | bench | cell
    recipe: str  # the recipe's name: the default MLflow experiment and W&B project of a run and its children
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    group: str | None = None  # W&B group (a search's trials share the search's)
    started: float = field(default_factory=time.time)  # when ftl opened it (delivery may come later)


@dataclass
class Parent:
    """The tracker runs of the search this run belongs to: {"mlflow": {...}, "wandb": {...}}."""

    kind: str  # search | cv | trial (the trial of a tune.cv search, for its folds)
    trackers: dict[str, dict[str, Any]]

    def of(self, tracker: str) -> dict[str, Any]:
        return self.trackers.get(tracker, {})

    def to_env(self) -> dict[str, str]:
        return {PARENT_ENV: json.dumps({"kind": self.kind, "trackers": self.trackers})}

    @classmethod
    def from_env(cls) -> Parent | None:
        text = os.environ.get(PARENT_ENV)
        if not text:
            return None
        data = json.loads(text)
        return cls(data["kind"], data["trackers"])
