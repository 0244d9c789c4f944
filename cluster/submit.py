"""`ftl submit`: a recipe (or a whole search) as one Ray Job.

Story: load the recipe here (every recipe error before any network) -> resolve address and token, refuse an
open remote cluster -> decide the storage -> stage the working directory -> submit with metadata (ftl version,
recipe name and sha256, kind, storage) -> print the job id (stdout) -> optionally follow its logs.
"""

from __future__ import annotations

import secrets
import tempfile
import time
from importlib import metadata
from pathlib import Path

from ftl.cluster.address import local_cluster_at
from ftl.cluster.auth import secrets_of
from ftl.cluster.client import Connection, connect
from ftl.cluster.entry import entry_command
from ftl.cluster.jobs import follow_logs
from ftl.cluster.package import Staged, stage
from ftl.cluster.storage import check_storage, job_location, resolve_storage
from ftl.launcher.console import log, out
from ftl.launcher.distributed.ray_launch import GPU_MASK, forwarded_env
from ftl.launcher.errors import FtlError
from ftl.launcher.recipe import load_recipe
from ftl.launcher.recipe.loader import where as origin_of
from ftl.launcher.recipe.variants import check_space

# Path-valued settings: forwarded only to a cluster on this machine (elsewhere the paths mean nothing).
_LOCAL_PATH_ENV = ("FTL_CACHE", "FTL_DATA_HOME", "HF_HOME", "HF_DATASETS_CACHE", "TORCH_EXTENSIONS_DIR")
JOB_ENV = {
    "PYTHONUNBUFFERED": "1",  # logs stream as they are written
    # `ftl tune` calls ray.init(runtime_env=...) inside the job; let it add to the job's runtime_env
    "RAY_OVERRIDE_JOB_RUNTIME_ENV": "1",
}


def submit(
    recipe_path: Path,
    overrides: list[str],
    *,
    address: str | None,
    tune: bool = False,
    samples: int | None = None,
    storage: str | None = None,
    insecure: bool = False,
    token_file: Path | None = None,
    gpus: float | None = None,
    follow: bool = False,
) -> int:
    loaded = load_recipe(recipe_path, overrides)
    recipe = loaded.recipe
    kind = "tune" if tune else "run"
    if tune:
        if recipe.tune is None or not recipe.tune.space:
            raise FtlError(
                f"{recipe_path}: --tune: the recipe has no tune.space to search; add a tune: section"
            )
        check_space(
            recipe, origin_of(loaded.origins, ("tune", "space"), loaded.path)
        )  # here, not on the cluster
    if storage is not None:
        check_storage(storage)  # a bad --storage fails before any network
    connection = connect(address, token_file=token_file, insecure=insecure, for_submission=True)
    local = local_cluster_at(connection.address)
    where = resolve_storage(storage, local_cluster_storage=local.storage if local else None)
    job_id = new_job_id(recipe.name)
    with tempfile.TemporaryDirectory(prefix="ftl-job-") as scratch:
        staged = stage(loaded, Path(scratch) / "job", secrets=_secrets(connection))
        for note in staged.notes:
            log(f"[yellow]note[/]: {note}")
        entrypoint = entry_command(kind, job_id, where, samples)
        single = kind == "run" and not recipe.distributed.needs_workers
        with connection.errors():
            connection.client.submit_job(
                entrypoint=entrypoint,
                submission_id=job_id,
                runtime_env={"working_dir": str(staged.root), "env_vars": job_env(connection, recipe)},
                metadata=job_metadata(staged, kind, where),
                entrypoint_num_cpus=1 if single else 0,
                entrypoint_num_gpus=_driver_gpus(gpus, recipe, single),
            )
    log(
        f"submitted [bold]{job_id}[/] ({kind} {recipe.name}, {staged.size / 2**20:.1f} MiB of files) to "
        f"{connection.address.url}; its run directory: {job_location(where, job_id)}"
    )
    out.print(job_id, markup=False)
    if not follow:
        log(f"follow it: ftl logs {job_id} --follow; fetch it: ftl fetch {job_id} --output runs/")
        return 0

    return follow_logs(connection, job_id)


def new_job_id(name: str) -> str:
    """ftl-<name>-<yyyymmdd-hhmmss>-<4 hex>: sortable, readable, unique."""
    return f"ftl-{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def job_metadata(staged: Staged, kind: str, storage: str) -> dict[str, str]:
    try:
        version = metadata.version("ftl")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        version = "unknown"
    return {
        "ftl_version": version,
        "ftl_kind": kind,
        "recipe_name": staged.recipe.recipe.name,
        "recipe_sha256": staged.sha256,
        "ftl_storage": storage,
    }


def job_env(connection: Connection, recipe) -> dict[str, str]:
    """The job's environment: ftl's settings (data homes, caches, offline mode) and streaming logs.

    Never a token: the cluster's own processes authenticate the job's driver."""

    env = forwarded_env(recipe)
    env.pop(GPU_MASK, None)  # the job's driver reserves its GPUs from Ray; it hides them from its own workers
    if not connection.address.is_loopback:
        env = {key: value for key, value in env.items() if key not in _LOCAL_PATH_ENV}
    env.update(JOB_ENV)
    return {key: value for key, value in env.items() if not key.startswith("RAY_AUTH")}


def _driver_gpus(gpus: float | None, recipe, single: bool) -> float:
    """GPUs reserved for the job's driver: a single-process run trains there (train.device: cuda -> 1)."""
    if gpus is not None:
        return gpus
    return 1.0 if single and recipe.train.device == "cuda" else 0.0


def _secrets(connection: Connection) -> tuple[str, ...]:
    return secrets_of(connection.address, connection.token)
