"""Searches and cross-validation that really run: Ray Tune trials on a local Ray, Optuna, ASHA, PBT, kills."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from ftl.launcher.cli import main
from tests.conftest import TINY_BERT, edit_recipe, env_without_hub, kill_process_tree, minilm_dir

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_after_module")]


@pytest.fixture
def search_recipe(classification_recipe):
    """Six trials of 3 epochs, 2 evaluations per epoch; the objective is the loss (no ties, so ASHA can rank)."""
    edit_recipe(
        classification_recipe,
        train={"epochs": 3, "batch_size": 16, "lr": 1e-2, "warmup_ratio": 0.1},
        eval={"every_steps": 6},
        log={"progress": False, "tensorboard": False},
        tune={
            "metric": "loss",
            "samples": 6,
            "seed": 1,
            "space": {
                "train.lr": {"loguniform": [1e-5, 3e-2]},
                "train.warmup_ratio": {"uniform": [0.0, 0.2]},
            },
            "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 3},
        },
    )
    return classification_recipe


def _trials(out: Path) -> list[dict[str, str]]:
    with (out / "trials.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_search_writes_trials_a_runnable_best_recipe_plots_and_the_study(tmp_path, search_recipe, capsys):
    import optuna

    out = tmp_path / "search"
    edit_recipe(search_recipe, log={"trackers": ["mlflow", "wandb"], "wandb": {"mode": "offline"}})
    assert main(["tune", str(search_recipe), "--output", str(out)]) == 0
    trials = _trials(out)
    assert len(trials) == 6
    assert {t["status"] for t in trials} <= {"completed", "stopped early"}
    assert any(t["status"] == "stopped early" for t in trials), trials  # ASHA stopped at least one trial
    assert any(t["status"] == "completed" for t in trials)
    stopped = [t for t in trials if t["status"] == "stopped early"]
    assert all(int(t["evaluations"]) < 6 for t in stopped)
    for trial in trials:  # every trial is an ftl run directory with its own values
        recipe = yaml.safe_load((Path(trial["run_dir"]) / "recipe.resolved.yaml").read_text())
        assert recipe["train"]["lr"] == pytest.approx(float(trial["train.lr"]), rel=1e-2)
        assert recipe.get("tune") is None
    best = min((t for t in trials if t["status"] == "completed"), key=lambda t: float(t["eval_loss"]))
    best_yaml = yaml.safe_load((out / "best.yaml").read_text())
    assert best_yaml["train"]["lr"] == pytest.approx(float(best["train.lr"]), rel=1e-2)
    for plot in ("history.png", "importances.png", "parallel_coordinates.png"):
        assert (out / "plots" / plot).stat().st_size > 10_000
    study = optuna.load_study(study_name="tiny-cls", storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.trials) == 6 and all(t.state.name == "COMPLETE" for t in study.trials)
    assert not list(out.glob("trials/*/checkpoints"))  # a finished search keeps final models, not checkpoints
    capsys.readouterr()
    assert main(["runs", str(out), "--sort", "loss", "--json"]) == 0  # every trial, best first
    listed = json.loads(capsys.readouterr().out)
    by_dir = {Path(t["run_dir"]).resolve(): t for t in trials}
    assert {Path(r["path"]).resolve() for r in listed} == set(by_dir)
    for row in listed:
        trial = by_dir[Path(row["path"]).resolve()]
        assert row["status"] == {"completed": "finished", "error": "failed"}.get(
            trial["status"], trial["status"]
        )
        assert row["metrics"]["loss"] == pytest.approx(float(trial["eval_loss"]))
    losses = [row["metrics"]["loss"] for row in listed]
    assert losses == sorted(losses)
    run = tmp_path / "best-run"
    assert main(["run", str(out / "best.yaml"), "--output", str(run)]) == 0
    assert json.loads((run / "metrics.json").read_text())["eval_loss"] == pytest.approx(
        float(best["eval_loss"])
    )
    _check_search_in_trackers(out, trials, best)


def _check_search_in_trackers(out: Path, trials: list[dict], best: dict) -> None:
    """MLflow: a parent run with a nested run per trial, ASHA's stopped ones KILLED and tagged, the best one
    tagged and named on the parent; W&B (offline): the trials share the search run's group."""
    from tests.trackers import mlflow_runs, wandb_offline_runs

    runs = mlflow_runs(out / "mlflow.db")
    (parent,) = runs["search"]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["tune.space.train.lr.loguniform"] == "[1e-05, 0.03]"
    assert parent.data.tags["ftl.best_trial"] == best["trial"]
    assert parent.data.metrics["final/best_eval_loss"] == pytest.approx(float(best["eval_loss"]))
    children = {Path(run.data.tags["ftl.run_dir"]).name: run for run in runs["trial"]}
    assert len(children) == 6
    for trial in trials:
        child = children[Path(trial["run_dir"]).name]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["ftl.status"] == trial["status"]
        assert child.info.status == {"completed": "FINISHED", "stopped early": "KILLED"}[trial["status"]]
        assert child.data.params["train.lr"] == repr(
            float(
                yaml.safe_load((Path(trial["run_dir"]) / "recipe.resolved.yaml").read_text())["train"]["lr"]
            )
        )
        assert (child.data.tags.get("ftl.best") == "true") == (trial is best)
    (search_run,) = wandb_offline_runs(out)
    assert search_run.job_type == "search" and search_run.summary["best_eval_loss"] == pytest.approx(
        float(best["eval_loss"])
    )
    for trial in trials:
        sessions = wandb_offline_runs(Path(trial["run_dir"]))
        # Tune ends a stopped trial's process: its first session's file may end before wandb flushed the run's
        # record (every 2 s); a completed trial's first session, and the session ftl reopens, always have it
        recorded = [s for s in sessions if s.project]
        assert sessions[-1] in recorded and all(s.group == search_run.group for s in recorded)
        assert sessions[0] not in recorded or sessions[0].job_type == "trial"
        assert trial["status"] == "stopped early" or sessions[0] in recorded
        if trial["status"] == "stopped early":  # Tune ended its process; ftl reopened the run to say so
            assert sessions[-1].run_id == sessions[0].run_id and len(sessions) == 2
            assert sessions[-1].summary["ftl.status"] == "stopped early"
            assert "stopped-early" in sessions[-1].tags
        else:
            assert [step for step, _ in sessions[0].history["eval_loss"]] == [6, 12, 18, 24, 30, 36]


def test_cross_validation_prints_mean_and_std_over_disjoint_folds(tmp_path, classification_recipe, capsys):
    trackers = {"trackers": ["wandb"], "wandb": {"mode": "offline"}}
    edit_recipe(
        classification_recipe, train={"epochs": 2}, log={"progress": False, "tensorboard": False, **trackers}
    )
    out = tmp_path / "cv"
    assert main(["cv", str(classification_recipe), "--folds", "3", "--output", str(out)]) == 0
    err = capsys.readouterr().err
    summary = json.loads((out / "cv.json").read_text())
    accuracy = summary["metrics"]["eval_accuracy"]
    assert len(accuracy["per_fold"]) == 3 and summary["completed"] == [0, 1, 2]
    from tests.trackers import wandb_offline_runs

    (cv_run,) = wandb_offline_runs(out)  # W&B: the cv run and a run per fold in its group
    assert cv_run.job_type == "cv" and cv_run.summary["eval_accuracy_mean"] == pytest.approx(accuracy["mean"])
    for index in range(3):
        (fold,) = wandb_offline_runs(out / "trials" / f"fold-{index}")
        assert fold.group == cv_run.group and fold.job_type == "fold" and fold.exit_code == 0
        assert fold.summary["eval_accuracy"] == pytest.approx(accuracy["per_fold"][index])
    assert f"accuracy: {accuracy['mean']:.4f} ± {accuracy['std']:.4f} over 3 of 3 folds" in err
    held_out = []
    for index in range(3):
        rows = (out / "trials" / f"fold-{index}" / "validation.jsonl").read_text().splitlines()
        held_out.extend(json.loads(row)["sentence"] for row in rows)
    train = [
        line.split("\t")[0]
        for line in (classification_recipe.parent / "train.tsv").read_text().splitlines()[1:]
    ]
    assert Counter(held_out) == Counter(train)  # the folds' validation rows are the training data, once each


@pytest.fixture
def postgres():
    """A throw-away PostgreSQL server on 127.0.0.1 (the Debian server binaries), trust auth."""
    import glob
    import os
    import shutil
    import socket
    import tempfile

    initdb = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None)
    if initdb is None:
        pytest.skip("PostgreSQL server binaries (initdb) are not installed")
    pg_ctl = str(Path(initdb).with_name("pg_ctl"))
    home = Path(tempfile.mkdtemp(prefix="ftl-pg-"))  # not under pytest's root-only directory
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # initdb refuses root
    if as_postgres:
        shutil.chown(home, user="postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    subprocess.run(
        [*as_postgres, initdb, "-D", str(home / "data"), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1"
    subprocess.run(
        [
            *as_postgres,
            pg_ctl,
            "-D",
            str(home / "data"),
            "-o",
            options,
            "-l",
            str(home / "log"),
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    subprocess.run(
        [*as_postgres, pg_ctl, "-D", str(home / "data"), "-m", "immediate", "stop"], capture_output=True
    )


def test_two_searches_share_one_optuna_study_in_postgresql(tmp_path, search_recipe, postgres):
    import optuna

    tune = yaml.safe_load(search_recipe.read_text())["tune"]
    tune.update(samples=2, scheduler={"type": "fifo"}, storage=postgres, study_name="shared")
    edit_recipe(search_recipe, train={"epochs": 1}, tune=tune)
    for name in ("first", "second"):  # e.g. two people, or two clusters, adding trials to one study
        assert main(["tune", str(search_recipe), "--output", str(tmp_path / name)]) == 0
    study = optuna.load_study(study_name="shared", storage=postgres)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert not (tmp_path / "first" / "study.db").exists()
    assert (tmp_path / "second" / "plots" / "history.png").exists()


def test_with_tune_cv_each_trials_objective_is_the_mean_over_its_folds(tmp_path, search_recipe):
    tune = yaml.safe_load(search_recipe.read_text())["tune"]
    tune.update(samples=2, metric="accuracy", cv={"folds": 2}, scheduler={})
    edit_recipe(search_recipe, train={"epochs": 1}, tune=tune, log={"trackers": ["mlflow"]})
    out = tmp_path / "folded"
    assert main(["tune", str(search_recipe), "--output", str(out)]) == 0
    trials = _trials(out)
    assert len(trials) == 2 and all(t["status"] == "completed" for t in trials)
    from tests.trackers import mlflow_runs

    runs = mlflow_runs(out / "mlflow.db")  # search -> trial -> fold
    (search,) = runs["search"]
    assert {run.data.tags["mlflow.parentRunId"] for run in runs["trial"]} == {search.info.run_id}
    parents = {run.info.run_id: run for run in runs["trial"]}
    assert len(runs["fold"]) == 4 and all(r.data.tags["mlflow.parentRunId"] in parents for r in runs["fold"])
    for trial_run in runs["trial"]:
        assert trial_run.data.metrics["final/eval_accuracy"] == pytest.approx(
            float(
                next(t for t in trials if Path(t["run_dir"]).name == trial_run.info.run_name)["eval_accuracy"]
            )
        )
    for trial in trials:
        folds = [
            json.loads((Path(trial["run_dir"]) / f"fold-{i}" / "metrics.json").read_text())["eval_accuracy"]
            for i in range(2)
        ]
        assert float(trial["eval_accuracy"]) == pytest.approx(sum(folds) / 2)
        assert float(trial["eval_accuracy_std"]) >= 0


def test_trials_can_each_run_on_several_ray_train_workers(tmp_path, search_recipe):
    tune = yaml.safe_load(search_recipe.read_text())["tune"]
    tune.update(samples=2, scheduler={"type": "fifo"})
    edit_recipe(
        search_recipe,
        train={"epochs": 1},
        distributed={"workers": 2},
        tune=tune,
        log={"trackers": ["mlflow"]},
    )
    out = tmp_path / "workers"
    assert main(["tune", str(search_recipe), "--output", str(out)]) == 0
    trials = _trials(out)
    assert len(trials) == 2 and all(t["status"] == "completed" for t in trials)
    from tests.trackers import mlflow_runs

    runs = mlflow_runs(out / "mlflow.db")  # rank 0 of each trial's two workers logs; rank 1 does not
    assert len(runs["search"]) == 1 and len(runs["trial"]) == 2 and set(runs) == {"search", "trial"}
    for run in runs["trial"]:
        assert run.data.tags["ftl.workers"] == "2" and run.data.metrics["final/eval_loss"] > 0
    for trial in trials:
        assert json.loads((Path(trial["run_dir"]) / "manifest.json").read_text())["workers"] == 2


def test_a_search_over_models_compares_them(tmp_path, classification_recipe, capsys):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    models = []
    for name, layers in (("one-layer", 1), ("two-layers", 2)):
        config = BertConfig(
            **{**TINY_BERT, "num_hidden_layers": layers, "vocab_size": 30522, "num_labels": 2}
        )
        BertForSequenceClassification(config).save_pretrained(tmp_path / name)
        AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(tmp_path / name)
        models.append(str(tmp_path / name))
    edit_recipe(
        classification_recipe,
        model={"config": None, "name_or_path": models[0]},
        train={"epochs": 1},
        log={"progress": False, "tensorboard": False},
        tune={
            "search": "grid",
            "space": {"model.name_or_path": {"grid": models}},
            "scheduler": {"type": "fifo"},
        },
    )
    data = yaml.safe_load(classification_recipe.read_text())
    del data["model"]["config"], data["model"]["tokenizer"]
    classification_recipe.write_text(yaml.safe_dump(data))
    out = tmp_path / "models"
    assert main(["tune", str(classification_recipe), "--output", str(out)]) == 0
    trials = _trials(out)
    assert sorted(t["model.name_or_path"] for t in trials) == sorted(models)  # grid: each model once
    err = capsys.readouterr().err
    assert "by model.name_or_path" in err and "one-layer" in err and "two-layers" in err


def test_population_based_training_exploits_checkpoints(tmp_path, search_recipe):
    edit_recipe(
        search_recipe,
        tune={
            "metric": "loss",
            "samples": 4,
            "seed": 3,
            "space": {"train.lr": {"loguniform": [1e-5, 3e-2]}},
            "scheduler": {"type": "pbt", "perturbation_interval": 2, "quantile_fraction": 0.5},
        },
    )
    out = tmp_path / "pbt"
    assert main(["tune", str(search_recipe), "--output", str(out)]) == 0
    trials = _trials(out)
    assert len(trials) == 4 and all(t["status"] == "completed" for t in trials)
    experiment = out / "ray" / "search"
    assert (experiment / "pbt_global.txt").read_text().strip(), (
        "PBT never copied a better trial into a worse one"
    )
    receivers = [p.stem.removeprefix("pbt_policy_") for p in experiment.glob("pbt_policy_*.txt")]
    logs = [(out / "trials" / f"trial-{trial}" / "train.log").read_text() for trial in receivers]
    assert any("resuming from" in text for text in logs)  # a receiver continued from the donor's checkpoint


# ---- faults: a killed trial worker, a killed driver -------------------------------------------------


def _start(argv: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ftl.launcher.cli", *argv],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env_without_hub(),
    )


def _wait_for(condition, process, timeout_s=300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None, "the search ended before the moment to interrupt it"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_a_killed_trial_worker_is_retried_from_its_checkpoint(tmp_path, search_recipe):
    import psutil

    tune = yaml.safe_load(search_recipe.read_text())["tune"]
    tune.update(samples=2, scheduler={"type": "fifo"})  # no scheduler may stop the trial while it is killed
    edit_recipe(search_recipe, tune=tune)
    out = tmp_path / "search"
    process = _start(["tune", str(search_recipe), "--output", str(out)], tmp_path / "driver.log")
    try:
        complete = "trials/*/checkpoints/checkpoint-*/trainer_state.json"
        _wait_for(lambda: list(out.glob(complete)), process)
        # the trial that has a complete checkpoint (another may have just started, with none yet)
        log_file = next(out.glob(complete)).parents[2] / "train.log"
        victims = [
            p
            for p in psutil.Process(process.pid).children(recursive=True)
            if any(f.path == str(log_file) for f in _open_files(p))
        ]
        assert victims, "no process writes the trial's log"
        for victim in victims:
            victim.kill()
        assert process.wait(timeout=600) == 0, (tmp_path / "driver.log").read_text()
    finally:
        if process.poll() is None:
            kill_process_tree(process)
    trials = _trials(out)
    assert len(trials) == 2 and all(t["status"] in ("completed", "stopped early") for t in trials), trials
    assert "resuming from" in log_file.read_text()  # the retry continued from the checkpoint


def _open_files(process):
    import psutil

    try:
        return process.open_files()
    except psutil.Error:
        return []


def test_a_killed_search_resumes_without_rerunning_finished_trials(tmp_path, search_recipe):
    out = tmp_path / "search"
    argv = ["tune", str(search_recipe), "--output", str(out)]
    process = _start(argv, tmp_path / "first.log")
    try:
        _wait_for(lambda: len(list(out.glob("trials/*/metrics.json"))) >= 2, process)
    finally:
        kill_process_tree(process)
    finished_before = {p.parent.name for p in out.glob("trials/*/metrics.json")}
    resumed = subprocess.run(
        [sys.executable, "-m", "ftl.launcher.cli", *argv, "--resume"],
        capture_output=True,
        text=True,
        env=env_without_hub(),
        timeout=900,
    )
    assert resumed.returncode == 0, resumed.stderr
    trials = _trials(out)
    assert len(trials) == 6
    for name in finished_before:  # trained once: one final line in its log
        assert (out / "trials" / name / "train.log").read_text().count("done:") == 1, name


def test_ctrl_c_keeps_the_search_for_resume(tmp_path, search_recipe):
    import signal

    out = tmp_path / "search"
    process = _start(["tune", str(search_recipe), "--output", str(out)], tmp_path / "driver.log")
    try:
        _wait_for(lambda: list(out.glob("trials/*/checkpoints/checkpoint-*/trainer_state.json")), process)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 130
    finally:
        if process.poll() is None:
            kill_process_tree(process)
    log = (tmp_path / "driver.log").read_text()
    assert "error: search interrupted; its state and the trials' checkpoints are kept" in log
    assert "Traceback" not in log
    assert list(out.glob("trials/*/checkpoints/checkpoint-*")), "the checkpoints were removed"
    assert not (out / "trials.csv").exists()  # no summary of a search that did not end


def test_median_stopping_within_a_time_budget(tmp_path, search_recipe):
    tune = yaml.safe_load(search_recipe.read_text())["tune"]
    tune.update(
        samples=40, time_budget_s=30, scheduler={"type": "median", "grace_period": 1, "min_samples": 2}
    )
    edit_recipe(search_recipe, train={"epochs": 1}, tune=tune)
    out = tmp_path / "budget"
    started = time.monotonic()
    assert main(["tune", str(search_recipe), "--output", str(out)]) == 0
    assert time.monotonic() - started < 30 + 45  # the budget, plus starting Ray and writing the outputs
    trials = _trials(out)
    assert 2 <= len(trials) < 40  # the budget ended the search, not the samples
    # how many trials finish inside the budget depends on the machine's load; none may fail, and the best of
    # those that reported (stopped by the median rule or by the budget) is written as a runnable recipe
    assert all(t["status"] in ("completed", "stopped early") for t in trials), trials
    assert (out / "best.yaml").exists()
