"""Time to recover from a lost node, on a real 2-node Ray cluster on this machine (`ftl cluster start --local
--nodes 2`): a 2-worker ZeRO-2 run, one worker per node; node-2 (its raylet and everything it started) is
SIGKILLed once a checkpoint is in Ray storage, and the clock runs until training is going again.

  elastic   distributed.min_workers=1: the run re-shards its checkpoint and goes on with one worker at once
            (recovered = kill -> "resized: 2 -> 1 workers" on the console, i.e. the first step after the restart)
  fixed     distributed.max_failures=3, 2 workers: the run waits for a second node; node-2 joins again right
            after the kill (recovered = kill -> the next checkpoint written by the restarted 2 workers)

    python benchmarks/node_loss.py [--repeats 2]

Results: benchmarks/results/node_loss.{md,json} (each repeat's seconds and the median).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib

from benchmarks.common import RESULTS, machine  # noqa: E402

RECIPE_ARGS = [
    "distributed.zero_stage=2",
    "distributed.workers=2",
    "distributed.cpus_per_worker=1",
    "train.batch_size=4",
    "distributed.global_batch_size=8",
    "train.max_steps=400",
    "train.checkpoint_every_steps=8",
    "eval.every_steps=400",
    "eval.select_best=false",
]


def _ftl(*args: str, env: dict, **kwargs):
    return subprocess.run([sys.executable, "-m", "ftl.launcher.cli", *args], env=env, **kwargs)


def _state(home: Path) -> dict:
    return json.loads((home / "state" / "local.json").read_text())


def _kill_node(home: Path, name: str) -> None:
    import psutil

    node = next(n for n in _state(home)["nodes"] if n["name"] == name)
    root = psutil.Process(node["pid"])
    for process in [*root.children(recursive=True), root]:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signal.SIGKILL)


def _wait(condition, process, seconds: float = 900) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the run ended (or timed out) before the moment being waited for")
        time.sleep(0.1)


def one(kind: str, home: Path, env: dict, recipe: Path) -> float:
    work = Path(tempfile.mkdtemp(prefix=f"node-loss-{kind}-", dir=home))
    storage, log = work / "storage", work / "console.log"
    settings = [
        *RECIPE_ARGS,
        f"distributed.storage_path={storage}",
        f"distributed.address={_state(home)['gcs_address']}",
    ]
    settings += (
        ["distributed.min_workers=1", "distributed.max_failures=5", "distributed.resize_check_s=600"]
        if kind == "elastic"
        else ["distributed.max_failures=3"]
    )
    with log.open("w") as stream:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ftl.launcher.cli",
                "run",
                str(recipe),
                *settings,
                "--output",
                str(work / "run"),
            ],
            env=env,
            stdout=stream,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait(lambda: list(storage.glob("*/checkpoint-16/trainer_state.json")), process)
        killed = time.monotonic()
        _kill_node(home, "node-2")
        if kind == "elastic":
            _wait(lambda: "resized: 2 -> 1 workers" in log.read_text(), process)
        else:
            state = _state(home)
            _ftl("cluster", "join", state["gcs_address"], "--token-file", state["token_file"], "--num-cpus", "1",
                 env=env, check=True, capture_output=True)  # fmt: skip
            before = {p.name for p in storage.glob("*/checkpoint-*")}
            _wait(
                lambda: {p.name for p in storage.glob("*/checkpoint-*/trainer_state.json")} - before, process
            )
        return time.monotonic() - killed
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        if kind == "elastic":  # node-2 back for the next repeat
            state = _state(home)
            _ftl("cluster", "join", state["gcs_address"], "--token-file", state["token_file"], "--num-cpus", "1",
                 env=env, capture_output=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from tests.conftest import write_classification_recipe

    home = Path(tempfile.mkdtemp(prefix="ftl-node-loss-"))
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    }
    env.update(FTL_CLUSTER_DIR=str(home / "state"), FTL_CACHE=str(home / "cache"), HF_HUB_OFFLINE="1")
    _ftl(
        "cluster",
        "start",
        "--local",
        "--nodes",
        "2",
        "--num-cpus",
        "1",
        env=env,
        check=True,
        capture_output=True,
    )
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=_state(home)["token_file"])
    recipe = write_classification_recipe(home)
    seconds: dict[str, list[float]] = {"elastic": [], "fixed": []}
    try:
        for _ in range(args.repeats):
            for kind in seconds:
                seconds[kind].append(round(one(kind, home, env, recipe), 1))
                print(kind, seconds[kind][-1], flush=True)
    finally:
        _ftl("cluster", "stop", env=env, capture_output=True)
    result = {
        "machine": machine(),
        "seconds": seconds,
        "median": {k: statistics.median(v) for k, v in seconds.items()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "node_loss.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Time to recover from a lost node (2 Ray nodes on one machine, tiny BERT, ZeRO-2)",
        "",
        "| run | what counts as recovered | seconds (each repeat) | median |",
        "| --- | --- | --- | ---: |",
        f"| elastic (min_workers 1) | kill -> training again on the surviving node | {seconds['elastic']} | "
        f"{result['median']['elastic']} |",
        f"| fixed 2 workers (max_failures 3) | kill -> node rejoined and the next checkpoint written | "
        f"{seconds['fixed']} | {result['median']['fixed']} |",
        "",
        f"Machine: {result['machine']}",
    ]
    (RESULTS / "node_loss.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
