"""The recipe's `log:` section: the terminal, TensorBoard, and the experiment trackers (MLflow, W&B).

Secrets never go here: the W&B API key and MLflow credentials are read from the environment
(WANDB_API_KEY, MLFLOW_TRACKING_TOKEN, MLFLOW_TRACKING_USERNAME/PASSWORD) by the trackers' own clients.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ftl.launcher.errors import did_you_mean
from ftl.launcher.recipe.section import Section

TRACKERS = ("tensorboard", "mlflow", "wandb")
TrackerName = Literal["tensorboard", "mlflow", "wandb"]
# a path, file: URI or sqlite URL that is not absolute means something else in every Ray worker (another cwd)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
# where MLflow keeps runs: servers, files, SQLAlchemy databases (dialect+driver), Databricks and Azure ML
MLFLOW_SCHEMES = (
    "http",
    "https",
    "file",
    "sqlite",
    "postgresql",
    "mysql",
    "mssql",
    "databricks",
    "databricks-uc",
    "uc",
    "azureml",
    "arn",  # SageMaker's managed MLflow
)
_WANDB_PROJECT_FORBIDS = "/\\#?%:"
_RELATIVE = re.compile(r"^(sqlite:///(?!/)|file:(?!/)|(?![A-Za-z][A-Za-z0-9+.-]*:)(?!/)(?!databricks))")


def _plugin_schemes() -> list[str]:
    """Schemes MLflow plugins installed here add (the mlflow.tracking_store entry points)."""
    from importlib.metadata import entry_points

    return [entry.name.lower() for entry in entry_points(group="mlflow.tracking_store")]


def is_relative_local(uri: str) -> bool:
    """A relative path, file: URI or sqlite:/// database (not a server, not an absolute path)."""
    return bool(_RELATIVE.match(uri))


class MlflowSettings(Section):
    """Where MLflow runs go. The tracking server's credentials come from the environment
    (MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)."""

    tracking_uri: str | None = Field(
        None,
        description="A tracking server (http://host:5000) or a database (sqlite:////abs/path/mlflow.db). Default: "
        "$MLFLOW_TRACKING_URI, else a local store in the output folder (<output>/mlflow.db, artifacts in "
        "<output>/mlartifacts).",
    )
    experiment: str | None = Field(
        None, description="Experiment name. Default: $MLFLOW_EXPERIMENT_NAME, else the recipe's name."
    )
    log_model: bool = Field(
        False, description="Upload the final model directory as an artifact (large for big models)."
    )
    tags: dict[str, str] = Field(default_factory=dict, description="Extra tags on every run.")

    @field_validator("tracking_uri")
    @classmethod
    def _absolute(cls, uri: str | None) -> str | None:
        if uri is not None and is_relative_local(uri):
            raise ValueError(
                f"'{uri}' is a relative path, which Ray workers and cluster jobs would resolve elsewhere; give an "
                "absolute one (sqlite:////abs/path/mlflow.db) or a server (http://host:5000), or leave it unset "
                "for a store in the output folder"
            )
        scheme = _SCHEME.match(uri or "")
        if scheme and scheme.group(1).lower().split("+")[0] not in (*MLFLOW_SCHEMES, *_plugin_schemes()):
            name = scheme.group(1)
            raise ValueError(
                f"'{uri}' starts with '{name}:', a scheme MLflow does not store runs at"
                f"{did_you_mean(name.lower(), MLFLOW_SCHEMES)}; give http(s)://host:port, "
                "sqlite:////abs/path/mlflow.db, file:///abs/path or a database URL (postgresql://...)"
            )
        return uri


class WandbSettings(Section):
    """Where Weights & Biases runs go. The API key comes from the environment (WANDB_API_KEY) or `wandb login`;
    offline mode needs neither (sync later with `wandb sync <output>/wandb/offline-run-*`)."""

    project: str | None = Field(None, description="Project. Default: $WANDB_PROJECT, else the recipe's name.")
    entity: str | None = Field(None, description="Team or user. Default: $WANDB_ENTITY, else your default.")
    mode: Literal["online", "offline"] | None = Field(
        None,
        description="online uploads as the run goes (needs a login); offline writes <output>/wandb/ only. "
        "Default: $WANDB_MODE, else online.",
    )
    log_model: bool = Field(
        False, description="Upload the final model directory as an artifact (large for big models)."
    )
    tags: list[str] = Field(default_factory=list, description="Extra tags on every run.")

    @field_validator("project")
    @classmethod
    def _project_name(cls, project: str | None) -> str | None:
        bad = sorted({ch for ch in project or "" if ch in _WANDB_PROJECT_FORBIDS})
        if bad:
            raise ValueError(
                f"'{project}' holds {' '.join(bad)}, which W&B project names cannot; use letters, digits, - _ ."
            )
        return project


class LogSection(Section):
    trackers: list[TrackerName] | None = Field(
        None,
        description="Where a run's parameters and metrics go: tensorboard (<run>/tensorboard), mlflow, wandb. "
        "Default: [tensorboard] (or [] with tensorboard: false). A tracker that fails during a run never stops "
        "training: ftl warns once and lists what it could not deliver.",
    )
    tensorboard: bool | None = Field(
        None,
        description="Older form of listing tensorboard in trackers: true adds it, false leaves it out.",
    )
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)
    wandb: WandbSettings = Field(default_factory=WandbSettings)
    progress: bool = Field(True, description="Show a progress bar on an interactive terminal.")
    level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _resolve_trackers(self) -> LogSection:
        trackers = list(self.trackers) if self.trackers is not None else None
        if trackers is not None:
            twice = sorted({name for name in trackers if trackers.count(name) > 1})
            if twice:
                raise ValueError(f"trackers: {', '.join(twice)} listed twice; list each tracker once")
        if self.tensorboard is False and trackers is not None and "tensorboard" in trackers:
            raise ValueError(
                "tensorboard: false but trackers lists tensorboard; drop log.tensorboard (trackers replaces it)"
            )
        if trackers is None:
            trackers = [] if self.tensorboard is False else ["tensorboard"]
        elif self.tensorboard and "tensorboard" not in trackers:
            trackers.insert(0, "tensorboard")
        # one form from here on: the trackers list (also in recipe.resolved.yaml)
        self.trackers, self.tensorboard = trackers, None
        return self

    def uses(self, tracker: str) -> bool:
        return tracker in (self.trackers or ())
