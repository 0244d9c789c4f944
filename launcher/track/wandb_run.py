"""One Weights & Biases run through `wandb.init(...)` and the Run it returns (reinit="create_new": never the
global `wandb.run` of someone else).

W&B has no nested runs: a search's trials share the search run's group (and the search run has job_type
search). Metrics are logged against the trainer's step as the metric `global_step` (W&B's own step must only
grow, which a resumed run, going back to its checkpoint's step, would break). Offline mode writes
<output>/wandb/offline-run-*/ and needs no login.
"""

from __future__ import annotations

import os
import secrets
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ftl.launcher.errors import FtlError
from ftl.launcher.recipe.log import WandbSettings
from ftl.launcher.track.spec import Parent, RunSpec

STEP = "global_step"
# wandb runs its runs in a service process and tells child processes where it is (WANDB_SERVICE). Ray's
# workers inherit the environment of the process that started Ray, so a search's trials would all use the
# driver's service, which keeps the run of a trial the scheduler killed open ("run ID ... is in use"). Each
# process of ftl uses a service of its own.
_SERVICE_ENV = "WANDB_SERVICE"
_own_service = False


class WandbRun:
    name = "wandb"

    def __init__(self, settings: WandbSettings, *, output: Path, parent: Parent | None) -> None:
        self.settings = settings
        from_parent = parent.of("wandb") if parent else {}
        self.project = settings.project or from_parent.get("project") or os.environ.get("WANDB_PROJECT")
        self.entity = settings.entity or from_parent.get("entity") or os.environ.get("WANDB_ENTITY")
        self.mode = settings.mode or from_parent.get("mode") or wandb_mode(settings)
        self.group = from_parent.get("group")
        self.dir = output
        self.run_id: str | None = None
        self.run: Any = None
        if self.mode == "online":
            check_login()

    def ids(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "project": self.project,
            "entity": self.entity,
            "mode": self.mode,
            "group": self.group,
            "dir": str(self.dir.resolve()),
        }

    def shown_uri(self) -> str:
        where = Path(self.run.dir).parent if self.mode == "offline" and self.run is not None else self.project
        return f"{self.mode} {where}"

    # ---- calls (on the courier's thread) -----------------------------------------------------------
    def start(self, spec: RunSpec, resume: dict[str, Any] | None, keep: Callable[[], None]) -> None:
        """`keep` the run's id first (ftl chooses it: a trial stopped while W&B starts still names its run),
        then start or continue the run."""
        import wandb

        self.project = self.project or spec.recipe
        self.group = self.group or (resume or {}).get("group") or spec.group
        resumed = resume.get("run_id") if resume else None
        self.run_id = resumed or _new_id()
        keep()
        self.dir.mkdir(parents=True, exist_ok=True)
        _use_own_service()
        self.run = wandb.init(
            project=self.project,
            entity=self.entity,
            mode=self.mode,
            dir=str(self.dir),
            id=self.run_id,
            resume="allow",
            name=spec.name,
            group=self.group,
            job_type=spec.kind,
            tags=self.settings.tags or None,
            config={**spec.params, **{f"ftl.{k}": v for k, v in spec.tags.items()}},
            reinit="create_new",
            settings=_settings(wandb),
        )
        self.run.define_metric(STEP)
        self.run.define_metric("*", step_metric=STEP, step_sync=True)

    def metrics(self, values: dict[str, float], step: int, when: float) -> None:
        """`when` is not W&B's to set: its history's _timestamp is when the values reach wandb."""
        self.run.log({**values, STEP: step})

    def final(self, values: dict[str, float], step: int) -> None:
        """The run's final metrics: in the summary (what the runs table shows) and as final/<name>."""
        self.run.log({**{f"final/{k}": v for k, v in values.items()}, STEP: step})
        self.run.summary.update(values)

    def tags(self, tags: dict[str, str]) -> None:
        self.run.config.update({f"ftl.{k}": v for k, v in tags.items()}, allow_val_change=True)

    def files(self, paths: list[Path], folder: str | None = None) -> None:
        import shutil

        for path in paths:  # files in the run's folder are uploaded when it ends (wandb.save would symlink)
            if path.is_file():
                shutil.copy2(path, Path(self.run.dir) / path.name)

    def model(self, folder: Path) -> None:
        import wandb

        artifact = wandb.Artifact(f"model-{self.run_id}", type="model")
        artifact.add_dir(str(folder))
        self.run.log_artifact(artifact)

    def mark(self, child: dict[str, Any], status: str, best: bool) -> None:
        """Reopen a child run for a moment (W&B runs cannot be changed from outside offline) to record its status:
        only for the best trial and those that did not complete (a stopped trial's process ended mid-run)."""
        if status == "completed" and not best:
            return
        import wandb

        _use_own_service()
        run = wandb.init(
            project=child.get("project"),
            entity=child.get("entity"),
            mode=child.get("mode", self.mode),
            dir=child["dir"],
            id=child["run_id"],
            resume="allow",
            group=child.get("group"),
            reinit="create_new",
            settings=_settings(wandb, x_disable_stats=True),
        )
        run.tags = tuple(tag for tag in (status.replace(" ", "-"), "best" if best else None) if tag)
        run.summary.update({"ftl.status": status, "ftl.best": best})
        run.finish(exit_code=1 if status == "error" else 0)

    def end(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)

    def close(self) -> None:
        return None


def wandb_mode(settings: WandbSettings) -> str:
    mode = settings.mode or os.environ.get("WANDB_MODE") or "online"
    if mode not in ("online", "offline"):
        raise FtlError(f"WANDB_MODE={mode}: ftl runs W&B online or offline (log.wandb.mode)")
    return mode


def check_login() -> None:
    if not _logged_in():
        raise FtlError(
            "log.trackers: wandb runs online and finds no W&B login; set WANDB_API_KEY in the environment (or "
            "run `wandb login`), or set log.wandb.mode: offline"
        )


def _logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    try:
        from wandb.sdk.lib.wbauth.wbnetrc import read_netrc_auth

        return bool(read_netrc_auth(host=os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")))
    except Exception:  # noqa: BLE001 - no readable login: as if none
        return False


def _new_id() -> str:
    """A W&B run id as wandb makes them: 8 random base-36 characters."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def _use_own_service() -> None:
    """Forget a wandb service inherited from another process (once, before this process's first run)."""
    global _own_service
    if not _own_service:
        os.environ.pop(_SERVICE_ENV, None)
        _own_service = True


def _settings(wandb, **extra):
    """No console capture (ftl has its own logs), and the run's file written every 2 s rather than every 15 s: a
    trial the scheduler stops ends its process, and wandb's service with it, before the run finishes."""
    fields = getattr(wandb.Settings, "model_fields", {})
    if "x_transaction_log_flush_interval" in fields:  # wandb >= 0.23
        extra.setdefault("x_transaction_log_flush_interval", 2.0)
    return wandb.Settings(console="off", silent=True, **extra)
