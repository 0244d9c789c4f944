"""A real local Ray head with token auth (ftl cluster start --local), shared by this module: submit a tiny
recipe and a tiny search, follow their logs to the end, fetch their run directories, stop a running job, a
wrong token, and the cluster stopped with every one of its processes gone."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from ftl.launcher.cli import main

pytestmark = pytest.mark.slow

WRONG = "wrong-token-0123456789abcdef0123456789"


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory):
    """One local head for the module (state dir under tmp); stopped at the end, its processes checked gone."""
    import psutil

    from ftl.cluster.state import read_state, state_path

    saved = {
        name: os.environ.get(name) for name in ("FTL_CLUSTER_DIR", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    }
    os.environ["FTL_CLUSTER_DIR"] = str(tmp_path_factory.mktemp("cluster-state"))
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "FTL_RAY_ADDRESS", "FTL_STORAGE"):
        os.environ.pop(name, None)
    try:
        assert main(["cluster", "start", "--local", "--num-cpus", "2"]) == 0
        cluster = read_state()
        assert cluster is not None and cluster.root_alive()
        yield cluster
    finally:
        cluster = read_state()
        main(["cluster", "stop"])
        if cluster is not None:
            left = []
            for pid, created in cluster.processes:
                try:
                    process = psutil.Process(pid)
                    if (
                        abs(process.create_time() - created) < 0.01
                        and process.status() != psutil.STATUS_ZOMBIE
                    ):
                        left.append(process)
                except psutil.Error:
                    pass
            assert not left, f"processes of the local cluster still running: {left}"
            ours = []  # anything started later (workers, job drivers) runs with the cluster's own temp dir
            for process in psutil.process_iter(["cmdline"]):
                if any(cluster.temp_dir in part for part in process.info["cmdline"] or []):
                    ours.append(process)
            assert not ours, f"processes of the local cluster still running: {ours}"
            assert not state_path().exists() and not Path(cluster.token_file).exists()
            assert Path(cluster.storage).is_dir()  # the runs stay
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _client(cluster):
    from ray.job_submission import JobSubmissionClient

    token = Path(cluster.token_file).read_text().strip()
    return JobSubmissionClient(cluster.dashboard_url, headers={"Authorization": f"Bearer {token}"})


def _wait_status(cluster, job_id: str, wanted: str, timeout_s: float = 90.0) -> str:
    client = _client(cluster)
    deadline = time.monotonic() + timeout_s
    status = ""
    while time.monotonic() < deadline:
        status = str(client.get_job_status(job_id))
        if wanted in status:
            return status
        time.sleep(0.5)
    raise AssertionError(f"{job_id} did not reach {wanted} (last: {status})")


def test_the_head_is_local_and_private(local_cluster, capsys):
    import psutil

    listening = {
        c.laddr.port: c.laddr.ip
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.pid in {pid for pid, _ in local_cluster.processes}
    }
    dashboard_port = local_cluster.ports["dashboard-port"]
    # the job API (where code gets in) is loopback-only; Ray 2.60's gRPC servers take no bind address but
    # check the token like every request
    assert listening[dashboard_port] == "127.0.0.1"
    assert os.stat(local_cluster.token_file).st_mode & 0o777 == 0o600
    assert main(["cluster", "status"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "running" and local_cluster.token_file in captured.err
    assert Path(local_cluster.token_file).read_text().strip() not in captured.err + captured.out
    assert main(["cluster", "start", "--local"]) == 2
    assert "already running" in capsys.readouterr().err


def test_submit_follow_fetch_with_the_token_never_shown(
    local_cluster, classification_recipe, tmp_path, capsys, monkeypatch
):
    token = Path(local_cluster.token_file).read_text().strip()
    monkeypatch.setenv("RAY_AUTH_TOKEN", token)  # planted where a careless ftl would pass it on
    code = main(["submit", str(classification_recipe), "train.epochs=2", "--follow"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    job_id = captured.out.splitlines()[0].strip()
    assert job_id.startswith("ftl-tiny-cls-") and "done: eval_loss" in captured.out
    assert "SUCCEEDED" in captured.err

    assert main(["status", job_id]) == 0
    assert capsys.readouterr().out.strip() == "SUCCEEDED"
    assert main(["jobs", "--json"]) == 0
    listed = {row["job"]: row for row in json.loads(capsys.readouterr().out)}
    assert listed[job_id]["recipe"] == "tiny-cls" and listed[job_id]["kind"] == "run"

    assert main(["fetch", job_id, "--output", str(tmp_path / "fetched")]) == 0
    run = Path(capsys.readouterr().out.strip())
    assert run == tmp_path / "fetched" / job_id
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and metrics["train_steps"] > 0
    assert (run / "model" / "config.json").is_file()

    info = _client(local_cluster).get_job_info(job_id)
    assert info.metadata["recipe_name"] == "tiny-cls" and info.metadata["ftl_kind"] == "run"
    assert info.metadata["ftl_storage"] == local_cluster.storage
    assert json.loads((run / "ftl-job.json").read_text())["recipe_sha256"] == info.metadata["recipe_sha256"]
    seen = json.dumps([info.metadata, info.runtime_env, info.entrypoint]) + captured.out + captured.err
    seen += _client(local_cluster).get_job_logs(job_id)
    seen += "".join(
        p.read_text(errors="replace") for p in run.rglob("*") if p.is_file() and p.stat().st_size < 2**20
    )
    assert token not in seen


def test_stop_a_running_job(local_cluster, classification_recipe, capsys):
    assert main(["submit", str(classification_recipe), "train.epochs=2000", "eval.every_steps=100000"]) == 0
    job_id = capsys.readouterr().out.strip()
    _wait_status(local_cluster, job_id, "RUNNING")
    assert main(["stop", job_id]) == 0
    assert capsys.readouterr().out.strip() == "STOPPED"
    assert "STOPPED" in str(_client(local_cluster).get_job_status(job_id))
    assert main(["logs", job_id, "--follow"]) == 3  # the exit code says how the job ended
    capsys.readouterr()
    assert main(["status", job_id + "x"]) == 2
    err = capsys.readouterr().err
    assert f"job '{job_id}x' not found" in err and f"did you mean '{job_id}'" in err


def test_a_search_runs_as_one_job_with_uri_storage(local_cluster, classification_recipe, tmp_path, capsys):
    space = "tune={space: {train.lr: [0.01, 0.001]}, scheduler: {type: fifo}, resources: {cpus: 1}}"
    store = f"file://{tmp_path}/object-store"
    argv = ["submit", str(classification_recipe), "train.epochs=1", space, "--tune", "--samples", "2"]
    code = main([*argv, "--storage", store, "--follow"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    job_id = captured.out.splitlines()[0].strip()
    assert main(["fetch", job_id, "--output", str(tmp_path / "fetched")]) == 0
    search = tmp_path / "fetched" / job_id
    trials = (search / "trials.csv").read_text().strip().splitlines()
    assert len(trials) == 3  # a header and two trials
    assert (search / "best.yaml").is_file()
    assert json.loads((search / "ftl-job.json").read_text())["kind"] == "tune"


def test_a_wrong_token_is_one_line_naming_auth(local_cluster, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_AUTH_TOKEN", WRONG)
    assert main(["jobs"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "auth" in lines[0] and "rejected the token from $RAY_AUTH_TOKEN" in lines[0]
    assert WRONG not in err
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    wrong_file = tmp_path / "token"
    wrong_file.write_text(WRONG)
    assert main(["jobs", "--token-file", str(wrong_file)]) == 2
    err = capsys.readouterr().err
    assert "rejected the token from --token-file" in err and WRONG not in err


def test_no_token_is_one_line_saying_the_cluster_requires_one(local_cluster, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv(
        "FTL_CLUSTER_DIR", str(tmp_path / "elsewhere")
    )  # ftl does not know this cluster's token
    monkeypatch.setenv("HOME", str(tmp_path))  # and there is no ~/.ray/auth_token
    assert main(["jobs", "--address", local_cluster.dashboard_url]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "auth: the cluster requires a token" in lines[0]
