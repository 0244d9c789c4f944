"""What a submitted job runs on the cluster: `ftl run` or `ftl tune` of the staged recipe into <storage>/<job-id>.

The job starts in its working directory (recipe.yaml + files/). With a shared path as storage the run
directory is written there directly; with a URI it is written locally and uploaded when the job ends, also
when it fails or is stopped (Ray stops a job with SIGTERM, which ends the run as an interrupt).
A recipe that scales out (several workers, DeepSpeed, GPUs per worker) and every search join the cluster the
job runs on (address auto), whatever address the recipe names from the submitting machine.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import signal
import socket
import time
from pathlib import Path

from ftl.cluster.package import RECIPE_FILE
from ftl.cluster.storage import copy_tree, is_uri, job_location
from ftl.launcher.console import log
from ftl.launcher.errors import FtlError
from ftl.launcher.recipe import load_recipe
from ftl.tune.search import run_search

JOB_RECORD = "ftl-job.json"
LOCAL_OUTPUT = "ftl-output"


def entry_command(kind: str, job_id: str, storage: str, samples: int | None = None) -> str:
    """The job's entrypoint (a shell command line; `ftl` must be on the cluster's PATH)."""
    argv = ["ftl", "job-entry", kind, "--job-id", job_id, "--storage", storage]
    if samples is not None:
        argv += ["--samples", str(samples)]
    return shlex.join(argv)


def run_job(
    kind: str, job_id: str, storage: str, *, samples: int | None = None, workdir: Path | None = None
) -> None:
    """Run the staged recipe; the run directory ends up at <storage>/<job-id> however the run ends."""
    if kind not in ("run", "tune"):
        raise FtlError(f"job-entry: unknown kind '{kind}'; use run or tune")
    workdir = (workdir or Path.cwd()).resolve()
    recipe_file = workdir / RECIPE_FILE
    if not recipe_file.is_file():
        raise FtlError(f"job-entry: no {RECIPE_FILE} in {workdir}; this verb runs inside a job ftl submitted")
    destination = job_location(storage, job_id)
    upload = is_uri(storage)
    output = workdir / LOCAL_OUTPUT / job_id if upload else Path(destination)
    started = time.time()
    record = {
        "job_id": job_id,
        "kind": kind,
        "recipe_sha256": hashlib.sha256(recipe_file.read_bytes()).hexdigest(),
        "host": socket.gethostname(),
        "started": started,
        "storage": storage,
    }
    previous = signal.signal(signal.SIGTERM, _interrupt)
    log(f"job {job_id}: {kind} {RECIPE_FILE} -> {destination}")
    output.mkdir(parents=True, exist_ok=True)  # the job's folder holds its record however the run ends
    try:
        _run(kind, recipe_file, output, samples)
        record["outcome"] = "succeeded"
    except BaseException as exc:
        record["outcome"] = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        record["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        record["ended"] = time.time()
        output.mkdir(parents=True, exist_ok=True)  # a run failing before its first step removed its folder
        if not (output / "recipe.resolved.yaml").is_file():
            (output / RECIPE_FILE).write_bytes(recipe_file.read_bytes())  # what ran, beside why it failed
        (output / JOB_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        if upload:
            log(f"uploading the run directory to {destination}")
            copy_tree(str(output), destination)


def _run(kind: str, recipe_file: Path, output: Path, samples: int | None) -> None:
    loaded = load_recipe(recipe_file)
    if kind == "tune":
        run_search(loaded, output, samples=samples, address="auto")
        return
    from ftl.launcher.run import run_recipe

    if loaded.recipe.distributed.needs_workers:
        loaded = load_recipe(recipe_file, ["distributed.address=auto"])
    run_recipe(loaded, output)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
