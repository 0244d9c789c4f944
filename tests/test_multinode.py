"""Multi-node, for real, on one machine: a local cluster of two Ray nodes (separate raylets, each with its own CPU,
object store and temp dir, token auth on), runs whose workers sit on both, a node killed mid-run, a node that
cannot see the driver's disk (a mount namespace hides the run directory from it).

Each node offers one CPU and each worker takes one, so a 2-worker run has a worker on each node.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import (
    TINY_BERT,
    edit_recipe,
    env_without_hub,
    write_classification_recipe,
    write_preference_recipe,
)

pytestmark = pytest.mark.slow

STEPS = 240  # long enough for the lost node to return while the run is still going
ELASTIC = [
    "distributed.zero_stage=2",
    "distributed.workers=2",
    "distributed.cpus_per_worker=1",
    "train.batch_size=4",
    "distributed.global_batch_size=8",
    f"train.max_steps={STEPS}",
    "train.checkpoint_every_steps=8",
    "eval.every_steps=120",
    "train.log_every_steps=1",
    "eval.select_best=false",
]


def _ftl(*args: str, env: dict, log: Path | None = None, wait: bool = True):
    command = [sys.executable, "-m", "ftl.launcher.cli", *args]
    if wait:
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    return subprocess.Popen(
        command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local cluster of two nodes (node-1 the head, node-2 beside it), stopped after the module."""
    home = tmp_path_factory.mktemp("cluster")
    env = {**env_without_hub(), "FTL_CLUSTER_DIR": str(home / "state"), "FTL_CACHE": str(home / "cache")}
    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(name, None)
    started = _ftl("cluster", "start", "--local", "--nodes", "2", "--num-cpus", "1", env=env)
    assert started.returncode == 0, started.stderr
    state = json.loads((home / "state" / "local.json").read_text())
    driver_env = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": state["token_file"]}
    yield {
        "env": env,
        "driver_env": driver_env,
        "state_file": home / "state" / "local.json",
        "gcs": state["gcs_address"],
    }
    stopped = _ftl("cluster", "stop", env=env)
    assert stopped.returncode == 0, stopped.stderr
    import psutil

    left = [pid for pid, _ in state["processes"] if psutil.pid_exists(pid)]
    assert not left, f"processes of the cluster still running: {left}"


def _deterministic(folder: Path) -> Path:
    """The tiny classifier without dropout (which draws per-worker random numbers: one worker and two would
    see different masks), a learning rate that does not memorise the data in a few dozen steps, and batches in
    plain order, so one worker with two micro-batches computes what two workers compute."""
    return edit_recipe(
        write_classification_recipe(folder),
        model={"config": {**TINY_BERT, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}},
        train={"lr": 1e-3, "warmup_ratio": 0.0, "group_by_length": False},
    )


def _state(cluster) -> dict:
    return json.loads(cluster["state_file"].read_text())


def _kill_node(cluster, name: str) -> None:
    """SIGKILL a node's raylet and everything it started, as a lost (pre-empted) machine would vanish."""
    import psutil

    node = next(n for n in _state(cluster)["nodes"] if n["name"] == name)
    root = psutil.Process(node["pid"])
    for process in [*root.children(recursive=True), root]:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signal.SIGKILL)


def _join(cluster, *wrapper: str) -> None:
    state = _state(cluster)
    joined = subprocess.run(
        [*wrapper, sys.executable, "-m", "ftl.launcher.cli", "cluster", "join", state["gcs_address"],
         "--token-file", state["token_file"], "--num-cpus", "1"],
        env=cluster["env"], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert joined.returncode == 0, joined.stderr


def _history(run: Path) -> list[dict]:
    return json.loads((run / "log_history.json").read_text())["log_history"]


def _steps_and_losses(run: Path) -> tuple[list[int], list[float]]:
    logged = [entry for entry in _history(run) if "loss" in entry]
    return [entry["step"] for entry in logged], [entry["loss"] for entry in logged]


def test_the_cluster_lists_two_alive_nodes_with_one_cpu_each(cluster):
    shown = _ftl("cluster", "status", env=cluster["env"])
    assert shown.returncode == 0 and shown.stdout.strip() == "running"
    rows = [line for line in shown.stderr.splitlines() if "node-" in line and "alive" in line]
    assert len(rows) == 2 and all(" 1 " in row for row in rows), shown.stderr


def test_a_two_worker_run_places_a_worker_on_each_node_and_its_console_reads_as_one_process(
    cluster, tmp_path
):
    recipe = write_classification_recipe(tmp_path)
    out = tmp_path / "run"
    done = _ftl(
        "run", str(recipe), *ELASTIC[:5], "train.max_steps=8", "eval.every_steps=8", "train.checkpoint_every_steps=8",
        f"distributed.address={cluster['gcs']}", "--output", str(out), env=cluster["driver_env"],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    placement = json.loads((out / "manifest.json").read_text())["placement"]
    assert len({rank["node"] for rank in placement}) == 2, placement  # two Ray nodes
    assert "2 workers on 2 node(s)" in done.stderr and "done:" in done.stderr
    _assert_reads_as_one_process(done.stderr)
    assert sorted(p.name for p in (out / "logs").iterdir()) == ["worker-0.log", "worker-1.log"]


def _assert_reads_as_one_process(console: str) -> None:
    """What Ray's and the libraries' workers print stays in the worker logs, not on the user's console."""
    noise = ("RayTrainWorker", "TrainController", "Traceback", "Warning", "PreemptionWatcher", "(pid=")
    for found in noise:
        assert found not in console, f"{found} on the console:\n{console}"


def test_a_lost_node_leaves_the_run_to_the_other_and_it_grows_back_when_the_node_returns(cluster, tmp_path):
    recipe = _deterministic(tmp_path)
    storage = tmp_path / "storage"
    settings = [*ELASTIC, "distributed.min_workers=1", "distributed.max_failures=5", "distributed.resize_check_s=5",
                f"distributed.storage_path={storage}", f"distributed.address={cluster['gcs']}"]  # fmt: skip
    whole = tmp_path / "whole"
    done = _ftl("run", str(recipe), *settings, "--output", str(whole), env=cluster["driver_env"])
    assert done.returncode == 0, done.stderr[-3000:]

    run = tmp_path / "elastic"
    process = _ftl("run", str(recipe), *settings, "--output", str(run), env=cluster["driver_env"],
                   log=tmp_path / "elastic.log", wait=False)  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while not list(storage.glob("*/checkpoint-8/trainer_state.json")):
            assert process.poll() is None and time.monotonic() < deadline, (
                tmp_path / "elastic.log"
            ).read_text()
            time.sleep(0.2)
        killed_at = time.monotonic()
        _kill_node(cluster, "node-2")
        while (
            "resized: 2 -> 1 workers" not in (tmp_path / "elastic.log").read_text()
        ):  # training again, 1 worker
            assert process.poll() is None and time.monotonic() < deadline, (
                tmp_path / "elastic.log"
            ).read_text()
            time.sleep(0.2)
        recovered_s = time.monotonic() - killed_at
        _join(cluster)  # node-2 returns
        assert process.wait(timeout=600) == 0, (tmp_path / "elastic.log").read_text()[-4000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    manifest = json.loads((run / "manifest.json").read_text())
    sizes = [entry["workers"] for entry in manifest["workers_over_time"]]
    assert sizes[:2] == [2, 1] and sizes[-1] == 2, manifest["workers_over_time"]  # shrank, then grew back
    steps, losses = _steps_and_losses(run)
    assert steps == list(range(1, STEPS + 1))  # every step once: none lost, none repeated
    whole_steps, whole_losses = _steps_and_losses(whole)
    assert losses == pytest.approx(whole_losses, rel=2e-3)  # the same global batches in the same order
    final = json.loads((run / "metrics.json").read_text())["eval_loss"]
    assert final == pytest.approx(json.loads((whole / "metrics.json").read_text())["eval_loss"], rel=2e-3)
    assert recovered_s < 300
    log = (tmp_path / "elastic.log").read_text()
    assert "resized: 2 -> 1 workers" in log and "resized: 1 -> 2 workers" in log


def test_a_node_that_cannot_see_the_run_directory_is_named_before_training(
    cluster, tmp_path, chat_tokenizer_dir
):
    """node-2 is restarted in a mount namespace where a tmpfs hides the outputs folder: no shared disk. With a
    storage_path both nodes reach, a classifier and a LoRA DPO run (its reference: the adapters disabled) train
    with a worker on each node."""
    inputs, outputs = tmp_path / "inputs", tmp_path / "outputs"
    inputs.mkdir()
    outputs.mkdir()
    recipe = write_classification_recipe(inputs)
    _kill_node(cluster, "node-2")
    time.sleep(2)
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is needed to give a node a disk of its own")
    _join(cluster, "unshare", "--mount", "--propagation", "private", "sh", "-c",
          f'mount -t tmpfs tmpfs "{outputs}" && exec "$0" "$@"')  # fmt: skip
    common = [
        *ELASTIC[:5],
        "train.max_steps=8",
        "eval.every_steps=4",
        f"distributed.address={cluster['gcs']}",
    ]
    refused = _ftl("run", str(recipe), *common, "--output", str(outputs / "run"), env=cluster["driver_env"])
    assert refused.returncode == 2
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot see the run directory" in errors[0] and "storage_path" in errors[0]
    assert "Traceback" not in refused.stderr

    storage = tmp_path / "storage"  # reachable from both nodes (outside the hidden folder)
    done = _ftl("run", str(recipe), *common, f"distributed.storage_path={storage}", "--output",
                str(outputs / "run2"), env=cluster["driver_env"])  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    run = outputs / "run2"
    assert (run / "model" / "config.json").exists() and json.loads((run / "metrics.json").read_text())[
        "train_steps"
    ] == 8
    placement = json.loads((run / "manifest.json").read_text())["placement"]
    assert len({rank["node"] for rank in placement}) == 2

    pairs = write_preference_recipe(
        inputs, chat_tokenizer_dir, top={"eval": {"every_steps": 8, "select_best": False}}
    )
    done = _ftl("run", str(pairs), *common, "lora.r=4", "lora.dropout=0", f"distributed.storage_path={storage}",
                "--output", str(outputs / "dpo"), env=cluster["driver_env"])  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    run = outputs / "dpo"
    metrics = json.loads((run / "metrics.json").read_text())
    assert (
        metrics["train_steps"] == 8
        and metrics["eval_reward_accuracy"] > 0.5
        and metrics["eval_reward_margin"] > 0
    )
    assert (run / "model" / "adapter_model.safetensors").exists()
    placement = json.loads((run / "manifest.json").read_text())["placement"]
    assert len({rank["node"] for rank in placement}) == 2
    _assert_reads_as_one_process(done.stderr)
