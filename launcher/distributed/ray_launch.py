"""Driver side of a scaled-out run: connect to (or start) Ray, and run the recipe on Ray Train workers.

With no address ftl starts a private local Ray bound to 127.0.0.1 (the embedded default); with an address
it joins that cluster. Multi-node is the same code path: Ray places the workers.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from typing import Any

from ftl.launcher.console import log
from ftl.launcher.data.prepare import SAID_BY_DRIVER
from ftl.launcher.distributed.reshard import resharded, universal_files, universal_for
from ftl.launcher.distributed.storage import fetch_from_storage, push_to_storage
from ftl.launcher.distributed.worker import FINAL, train_worker
from ftl.launcher.distributed.worker_output import LOG_FOLDER, ConsoleRelay
from ftl.launcher.errors import FtlError, first_line
from ftl.launcher.model.load import load_tokenizer, quiet_transformers
from ftl.launcher.recipe.loader import LoadedRecipe
from ftl.launcher.tasks.registry import task_for
from ftl.launcher.track.spec import TRACKER_ENV
from ftl.launcher.train.deepspeed_config import deepspeed_config, validate_deepspeed_config
from ftl.launcher.train.device import plan_device
from ftl.launcher.train.rundir import RunDir

# Settings a worker must see exactly as the driver does (data homes, caches, offline mode).
_FORWARDED_ENV = (
    "FTL_CACHE",
    "FTL_DATA_HOME",
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "HF_DATASETS_CACHE",
    "TRANSFORMERS_OFFLINE",
    "TORCH_EXTENSIONS_DIR",
    "TQDM_DISABLE",
    "TOKENIZERS_PARALLELISM",
    *TRACKER_ENV,  # log.trackers: where MLflow and W&B runs go, and a search's parent runs (no secrets)
)
# Settings of the collective libraries (e.g. NCCL_SOCKET_IFNAME, NCCL_IB_DISABLE, TORCH_NCCL_ASYNC_ERROR_HANDLING)
# that a multi-node run needs on every node, not only where the driver runs.
_FORWARDED_PREFIXES = ("NCCL_", "TORCH_NCCL_", "GLOO_")
GPU_MASK = "CUDA_VISIBLE_DEVICES"


def launch(
    loaded: LoadedRecipe,
    rundir: RunDir,
    *,
    resume: bool,
    run_callbacks: list | None = None,
    train_only: bool = False,
    trainer_callbacks: list | None = None,
) -> dict[str, Any]:
    """Run the recipe on Ray Train workers. `run_callbacks` are Ray Train callbacks (e.g. Tune's reporter);
    `trainer_callbacks` (picklable HF Trainer callbacks) and `train_only` are passed to `execute` in every worker."""
    recipe = loaded.recipe
    distributed = recipe.distributed
    device = "cuda" if distributed.gpus_per_worker > 0 else "cpu"
    if device == "cpu":
        os.environ.setdefault(
            "DS_ACCELERATOR", "cpu"
        )  # DeepSpeed picks its CPU accelerator without a warning
    if distributed.uses_deepspeed:
        validate_deepspeed_config(deepspeed_config(recipe, device=device), distributed.workers)
    stable_name = distributed.storage_path is not None
    name = ray_run_name(recipe.name, rundir, stable=stable_name)
    experiment = f"{distributed.storage_path.rstrip('/')}/{name}" if stable_name else None
    # what the driver decides on (re-sharding) must follow storage, not only this machine's run directory
    checkpoint = fetch_from_storage(rundir, experiment) if experiment else rundir.last_checkpoint()
    if distributed.uses_deepspeed and checkpoint is not None and not distributed.elastic:
        extra = universal_for(checkpoint, distributed.workers)
        if extra and experiment:  # workers on other nodes download the re-sharded copy from storage
            push_to_storage(checkpoint, experiment, universal_files(checkpoint))
        if extra:
            log(
                "[yellow]after re-sharding this session ends with the last weights, not the best evaluation[/]"
            )
            recipe = resharded(recipe, extra)
    warmed = False
    if distributed.address is None:
        plan_device(recipe.train, distributed)  # a local cluster has this machine's devices
        warmed = warm_data_cache(loaded)

    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    env = forwarded_env(recipe)
    if warmed:  # what the data preparation warned of is said once, here, not again by rank 0
        env[SAID_BY_DRIVER] = "1"
    connect(distributed.address, env, worker_output=False)  # workers log to <run>/logs; rank 0 via the relay
    relay = ConsoleRelay()
    resources = {"CPU": distributed.cpus_per_worker}
    if distributed.gpus_per_worker:
        resources["GPU"] = distributed.gpus_per_worker
    storage = distributed.storage_path or str(rundir.root.resolve() / "ray")
    trainer = TorchTrainer(
        train_loop_per_worker=train_worker,
        train_loop_config={
            "recipe": replace(loaded, recipe=recipe).portable(),
            "run": str(rundir.root.resolve()),
            "resume": resume,
            "env": env,
            "train_only": train_only,
            "callbacks": list(trainer_callbacks or []),
            "console": relay.queue,
        },
        scaling_config=ScalingConfig(
            num_workers=(distributed.min_workers, distributed.workers)
            if distributed.elastic
            else distributed.workers,
            use_gpu=device == "cuda",
            resources_per_worker=resources,
            elastic_resize_monitor_interval_s=distributed.resize_check_s,
        ),
        torch_config=TorchConfig(backend="nccl" if device == "cuda" else "gloo"),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=distributed.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=recipe.train.keep_checkpoints + 1),
            callbacks=run_callbacks or None,
        ),
    )
    workers = (
        f"{distributed.min_workers}-{distributed.workers}" if distributed.elastic else distributed.workers
    )
    log(
        f"ray: {workers} worker(s) x {distributed.cpus_per_worker:g} CPU"
        + (f" + {distributed.gpus_per_worker:g} GPU" if distributed.gpus_per_worker else "")
        + (f", ZeRO-{distributed.zero_stage}" if distributed.uses_deepspeed else ", DDP")
        + f", backend {'nccl' if device == 'cuda' else 'gloo'}"
    )
    logs = rundir.root / LOG_FOLDER / "worker-*.log"
    try:
        with relay:
            result = trainer.fit()
    except Exception as exc:  # Ray wraps the worker's exception; show its last line
        raise FtlError(f"distributed run failed: {_root_cause(exc)} (workers' logs: {logs})") from None
    if getattr(result, "error", None):
        raise FtlError(f"distributed run failed: {_root_cause(result.error)} (workers' logs: {logs})")
    if not rundir.read_json(
        "metrics.json"
    ):  # rank 0 ran on a node without this disk: its results are in storage
        _copy_results(getattr(result, "checkpoint", None), rundir)
    metrics = rundir.read_json("metrics.json") or dict(getattr(result, "metrics", None) or {})
    if not metrics:
        raise FtlError(f"distributed run ended without metrics; see the workers' logs ({logs}) and {storage}")
    return metrics


def _copy_results(checkpoint, rundir: RunDir) -> None:
    """The results rank 0 reported to Ray storage (worker.FINAL) into the driver's run directory."""
    if checkpoint is None or not checkpoint.path.rstrip("/").endswith(FINAL):
        return
    with checkpoint.as_directory() as folder:
        shutil.copytree(folder, rundir.root, dirs_exist_ok=True)


def forwarded_env(recipe) -> dict[str, str]:
    """Environment every Ray worker gets: the driver's data homes, caches, offline settings and NCCL tuning.

    Workers, trials and folds that reserve no GPU see none: Ray leaves CUDA_VISIBLE_DEVICES alone for them,
    and `train.device: auto` would otherwise put every one of them on the GPUs the others reserved."""
    env = {name: os.environ[name] for name in _FORWARDED_ENV if name in os.environ}
    env.update({name: value for name, value in os.environ.items() if name.startswith(_FORWARDED_PREFIXES)})
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("TQDM_DISABLE", "1")
    if recipe.distributed.gpus_per_worker == 0 and (
        recipe.tune is None or recipe.tune.trial_resources.gpus == 0
    ):
        env["DS_ACCELERATOR"] = "cpu"
        env[GPU_MASK] = ""
    return env


def connect(address: str | None, env: dict[str, str], *, worker_output: bool = True) -> None:
    """Join a cluster, or start a private local one bound to 127.0.0.1.

    worker_output=False keeps the workers' stdout/stderr in Ray's log files instead of the driver's terminal
    (search trials write their own train.log)."""
    import logging

    import ray

    if ray.is_initialized():
        return
    if address is not None:
        check_reachable(address)
    runtime_env = {"env_vars": env}
    try:
        if address is None:
            ray.init(
                include_dashboard=True,  # Ray Train V2 queries controller state through it
                dashboard_host="127.0.0.1",
                _node_ip_address="127.0.0.1",
                runtime_env=runtime_env,
                logging_level=logging.ERROR,
                log_to_driver=worker_output,
            )
        else:
            ray.init(
                address=address,
                runtime_env=runtime_env,
                logging_level=logging.ERROR,
                log_to_driver=worker_output,
            )
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        reason = first_line(exc)
        raise FtlError(
            f"distributed.address: cannot reach the Ray cluster at {address}: {reason}; check the address "
            "(ray://host:10001 or host:6379) and that the cluster is running"
        ) from None


def ray_run_name(name: str, rundir: RunDir, *, stable: bool) -> str:
    """With Ray storage, one name per run directory, so a resumed run finds its checkpoints there."""
    import hashlib
    import time

    if stable:
        return f"{name}-{hashlib.sha256(str(rundir.root.resolve()).encode()).hexdigest()[:10]}"
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """Fail in seconds, not minutes, when nothing listens at a cluster address (Ray itself retries for long)."""
    import socket

    if address == "auto":
        return
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise FtlError(
            f"distributed.address: '{address}' is not host:port or ray://host:port (e.g. ray://head:10001)"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise FtlError(
            f"distributed.address: cannot reach the Ray cluster at {address} ({exc.strerror or exc}); check the "
            "address and that the cluster is running (ray status on the head node)"
        ) from None


def warm_data_cache(loaded: LoadedRecipe) -> bool:
    """Tokenise once on the driver, so workers on this machine load the cache instead of all tokenising; whether
    it did."""
    recipe = loaded.recipe
    if recipe.data is not None and not recipe.data.cache:
        return False
    quiet_transformers(recipe.log.level)
    tokenizer = load_tokenizer(recipe.model, loaded.search_dirs)
    task_for(recipe.task).prepare(recipe.data, tokenizer, dirs=loaded.search_dirs, log=log)
    return True


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
