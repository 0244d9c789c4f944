"""Experiment trackers (log.trackers): the recipe keys, and runs read back from a real MLflow tracking server
(started here on 127.0.0.1, stopped afterwards) through MlflowClient and from W&B's offline run files."""

from __future__ import annotations

import json
import sys

import pytest
from transformers import TrainerCallback

from ftl.launcher.errors import FtlError
from ftl.launcher.recipe import load_recipe
from ftl.launcher.run import run_recipe
from tests.conftest import edit_recipe, fails
from tests.trackers import MlflowServer, wandb_offline_runs

FAST = {
    "train": {"max_steps": 16, "log_every_steps": 4, "checkpoint_every_steps": 8},
    "eval": {"every_steps": 8},
}


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield server
    server.stop()


@pytest.fixture
def no_wandb_login(tmp_path, monkeypatch):
    """No W&B key or netrc: offline mode must not need one."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))


# ---- the recipe keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("log", "expected"),
    [
        (
            {"trackers": ["tensorboard", "mlfow"]},
            "log.trackers[1]: 'mlfow' is not allowed (did you mean 'mlflow'?)",
        ),
        ({"trackers": ["mlflow", "mlflow"]}, "log: trackers: mlflow listed twice; list each tracker once"),
        (
            {"tensorboard": False, "trackers": ["tensorboard"]},
            "tensorboard: false but trackers lists tensorboard",
        ),
        ({"mlflow": {"tracking_uri": "sqlite:///mlflow.db"}}, "'sqlite:///mlflow.db' is a relative path"),
        (
            {"mlflow": {"experimnt": "x"}},
            "unknown key 'experimnt' in log.mlflow (did you mean 'experiment'?)",
        ),
        ({"wandb": {"mode": "ofline"}}, "log.wandb.mode: 'ofline' is not allowed (did you mean 'offline'?)"),
    ],
)
def test_tracker_keys_are_checked_with_one_line_errors(capsys, classification_recipe, log, expected):
    edit_recipe(classification_recipe, log=log)
    message = fails(capsys, ["check", str(classification_recipe)])
    assert "tiny-cls.yaml:" in message and expected in message


def test_trackers_default_to_tensorboard_and_log_tensorboard_keeps_working(classification_recipe):
    assert load_recipe(classification_recipe).recipe.log.trackers == ["tensorboard"]
    assert load_recipe(classification_recipe, ["log.tensorboard=false"]).recipe.log.trackers == []
    both = load_recipe(classification_recipe, ["log.trackers=[mlflow]", "log.tensorboard=true"]).recipe.log
    assert both.trackers == ["tensorboard", "mlflow"] and both.tensorboard is None  # one form once resolved
    assert load_recipe(classification_recipe, ["log.trackers=[]"]).recipe.log.trackers == ["tensorboard"]
    none = load_recipe(classification_recipe, ["log.trackers=[]", "log.tensorboard=null"]).recipe.log
    assert none.trackers == []


def test_a_missing_tracker_library_or_wandb_login_is_one_line(
    capsys, monkeypatch, tmp_path, classification_recipe
):
    monkeypatch.setitem(sys.modules, "wandb", None)  # Python's own "not importable" marker
    edit_recipe(classification_recipe, log={"trackers": ["wandb"], "wandb": {"mode": "offline"}})
    message = fails(capsys, ["run", str(classification_recipe), "--output", str(tmp_path / "a")])
    assert message.endswith(
        "log.trackers: wandb is not installed; install it with pip install 'ftl[trackers]' (or pip install "
        "wandb), or remove wandb from log.trackers"
    )
    monkeypatch.delitem(sys.modules, "wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    edit_recipe(classification_recipe, log={"trackers": ["wandb"], "wandb": {"mode": "online"}})
    message = fails(capsys, ["run", str(classification_recipe), "--output", str(tmp_path / "b")])
    assert "finds no W&B login; set WANDB_API_KEY" in message and "log.wandb.mode: offline" in message
    assert fails(capsys, ["check", str(classification_recipe)]) == message  # ftl check finds it too
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # refused before anything ran


# ---- a run, read back ---------------------------------------------------------------------------------


class InterruptAt(TrainerCallback):
    """Ctrl+C at a step (ftl turns it into 'interrupted; ... --resume')."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def _history(client, run_id: str, name: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))


@pytest.mark.slow
def test_a_run_logs_to_mlflow_and_wandb_and_resume_continues_the_same_runs(
    mlflow_server, tmp_path, classification_recipe, no_wandb_login
):
    edit_recipe(
        classification_recipe,
        **FAST,
        log={
            "progress": False,
            "trackers": ["tensorboard", "mlflow", "wandb"],
            "mlflow": {"tracking_uri": mlflow_server.url, "experiment": "resume-test", "log_model": True},
            "wandb": {"mode": "offline", "project": "ftl-tests", "tags": ["ci"]},
        },
    )
    out = tmp_path / "run"
    with pytest.raises(FtlError, match="interrupted"):
        run_recipe(load_recipe(classification_recipe), out, callbacks=[InterruptAt(10)])
    ids = json.loads((out / "trackers.json").read_text())
    client = mlflow_server.client()
    run_id = ids["mlflow"]["run_id"]
    assert client.get_run(run_id).info.status == "KILLED"
    assert [step for step, _ in _history(client, run_id, "loss")] == [1, 4, 8]

    metrics = run_recipe(load_recipe(classification_recipe), out, resume=True)

    assert json.loads((out / "trackers.json").read_text())["mlflow"]["run_id"] == run_id
    experiment = client.get_experiment_by_name("resume-test")
    assert len(client.search_runs([experiment.experiment_id])) == 1  # the same run, continued
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["train.lr"] == "0.01" and params["model.config.hidden_size"] == "32"
    assert json.loads(params["task.labels"]) == ["negative", "positive"]
    assert params["log.mlflow.tracking_uri"] == mlflow_server.url
    loss = _history(client, run_id, "loss")
    assert [step for step, _ in loss] == [1, 4, 8, 12, 16]  # resumed from checkpoint-8: steps 9-16 again
    stamps = [m.timestamp for m in sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.step)]
    assert run.info.start_time <= stamps[0] and stamps == sorted(stamps)  # when logged, not when delivered
    assert [step for step, _ in _history(client, run_id, "eval_accuracy")] == [8, 16]
    final = _history(client, run_id, "final/eval_accuracy")
    assert final == [(16, pytest.approx(metrics["eval_accuracy"]))]
    manifest = json.loads((out / "manifest.json").read_text())
    tags = run.data.tags
    assert tags["ftl.data_fingerprint"] == manifest["data_fingerprint"] and tags["ftl.kind"] == "run"
    assert tags["ftl.resumed_from"] == "checkpoint-8" and tags["ftl.version.transformers"]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"manifest.json", "metrics.json", "recipe.resolved.yaml", "model"} <= artifacts
    assert "model/config.json" in {a.path for a in client.list_artifacts(run_id, "model")}

    first, second = wandb_offline_runs(out)  # W&B offline: one folder per session, the same run id
    assert first.run_id == second.run_id == ids["wandb"]["run_id"]
    assert first.exit_code == 1 and second.exit_code == 0
    assert first.project == "ftl-tests" and first.job_type == "run"
    assert first.config["train.lr"] == 0.01 and first.config["task.labels"] == ["negative", "positive"]
    assert [step for step, _ in first.history["loss"]] == [1, 4, 8]
    assert [step for step, _ in second.history["loss"]] == [12, 16]
    assert second.summary["eval_accuracy"] == pytest.approx(metrics["eval_accuracy"])
    assert {"manifest.json", "metrics.json", "recipe.resolved.yaml"} <= second.files


class StopServerAt(TrainerCallback):
    def __init__(self, step: int, server: MlflowServer) -> None:
        self.step, self.server = step, server

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.server.stop()


@pytest.mark.slow
def test_a_tracking_server_that_dies_mid_run_does_not_stop_training(
    mlflow_server, tmp_path, classification_recipe, capsys
):
    server = mlflow_server  # stopped mid-run, started again (the same database and port) to read it back
    try:
        edit_recipe(
            classification_recipe,
            **FAST,
            log={"progress": False, "trackers": ["mlflow"], "mlflow": {"tracking_uri": server.url}},
        )
        out = tmp_path / "run"
        capsys.readouterr()
        metrics = run_recipe(load_recipe(classification_recipe), out, callbacks=[StopServerAt(6, server)])
        err = capsys.readouterr().err
        assert metrics["train_steps"] == 16 and (out / "metrics.json").exists() and (out / "model").is_dir()
        assert err.count("warning: mlflow failed") == 1, err
        assert "training goes on, and ftl sends nothing more to mlflow" in err
        report = next(line for line in err.splitlines() if "mlflow did not receive" in line)
        assert "loss" in report and "eval_accuracy" in report and "the final metrics" in report
        record = json.loads((out / "trackers.json").read_text())["mlflow"]
        missed = record["undelivered"]["metrics"]
        # delivery is asynchronous: step 4's loss may still be queued when the server dies at step 6 (a slow
        # first request), so it is either delivered or reported undelivered; what came after always is missed
        assert missed["loss"] in ([8, 12, 16], [4, 8, 12, 16]) and missed["eval_accuracy"] == [8, 16]
        assert "the run's end (FINISHED)" in record["undelivered"]["items"]

        server.start()  # the same database: what was delivered before the server died is there
        client = server.client()
        run = client.get_run(record["run_id"])
        assert run.info.status == "RUNNING"  # its end was never delivered
        delivered = [m.step for m in client.get_metric_history(record["run_id"], "loss")]
        # nothing lost unreported (a request cut off by the dying server may have been stored and still be reported)
        assert delivered in ([1], [1, 4]) and set(delivered) | set(missed["loss"]) == {1, 4, 8, 12, 16}
    finally:
        if server.process is None:
            server.start()  # for the module's other tests


def test_ray_workers_and_cluster_jobs_get_tracker_settings_but_no_tracker_secret(
    monkeypatch, classification_recipe
):
    from ftl.cluster.address import parse_address
    from ftl.cluster.client import Connection
    from ftl.cluster.submit import job_env
    from ftl.launcher.distributed.ray_launch import forwarded_env

    settings = {
        "MLFLOW_TRACKING_URI": "http://mlflow.internal:5000",
        "WANDB_PROJECT": "p",
        "WANDB_MODE": "offline",
    }
    secrets = {
        "WANDB_API_KEY": "planted-wandb-key-0123456789",
        "MLFLOW_TRACKING_TOKEN": "planted-mlflow-tok-42",
    }
    for name, value in {**settings, **secrets}.items():
        monkeypatch.setenv(name, value)
    recipe = load_recipe(classification_recipe).recipe
    remote = job_env(Connection(parse_address("https://ray-head.example:8265"), None, None), recipe)
    for env in (forwarded_env(recipe), remote):
        assert settings.items() <= env.items()
        assert not set(secrets) & set(env)


def test_a_dead_tracker_costs_the_run_one_warning_and_no_waiting(tmp_path, capsys):
    """Nothing listens at the tracking URI from the start: every call returns at once, one warning, and the
    report names what was not delivered."""
    import time

    from ftl.launcher.recipe.log import LogSection
    from ftl.launcher.track.session import Tracking
    from ftl.launcher.track.spec import RunSpec
    from tests.trackers import free_port

    log = LogSection(trackers=["mlflow"], mlflow={"tracking_uri": f"http://127.0.0.1:{free_port()}"})
    started = time.perf_counter()
    tracking = Tracking.open(log, tmp_path, RunSpec(name="r", kind="run", recipe="r", params={"a": 1}))
    for step in range(1, 51):
        tracking.metrics({"loss": 1.0 / step}, step)
    assert time.perf_counter() - started < 1.0  # none of it waits for the tracker
    tracking.wait()
    tracking.finish(final={"eval_loss": 0.5}, step=50)
    err = capsys.readouterr().err
    assert err.count("warning: mlflow failed") == 1
    assert "mlflow did not receive: loss at steps 1-50 (50 logs); the run's start (parameters); " in err
    assert (
        not (tmp_path / "trackers.json").exists() or "run_id" not in (tmp_path / "trackers.json").read_text()
    )
