"""`ftl runs` and `ftl compare` on run directories made by hand (every state a run can be in), and the
one-line refusals of verbs given something that is not a run."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

from ftl.launcher.cli import main
from ftl.launcher.errors import FtlError
from ftl.launcher.train.checkpoints import seal
from tests.conftest import (
    fails,
    line_colours,
    markdown_rows,
)


# ---- fast: run directories made by hand -------------------------------------------------------------
def _fake_run(
    root: Path,
    name: str,
    *,
    lr: float,
    metrics: dict | None,
    history: list[dict] | None = None,
    checkpoint_step: int | None = None,
    task: dict | None = None,
) -> Path:
    run = root / name
    run.mkdir(parents=True)
    recipe = {
        "name": name,
        "seed": 1,
        "model": {"name_or_path": "org/model"},
        "task": task or {"type": "sequence_classification", "labels": ["a", "b"]},
        "data": {"train": "train.tsv"},
        "train": {"lr": lr, "epochs": 1},
    }
    (run / "recipe.resolved.yaml").write_text(yaml.safe_dump(recipe))
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))
        (run / "manifest.json").write_text(
            json.dumps({"created": "2026-01-02T03:04:05+00:00", "wall_seconds": 65})
        )
        (run / "model").mkdir()
        (run / "model" / "config.json").write_text("{}")
    if history is not None:
        (run / "log_history.json").write_text(json.dumps({"log_history": history}))
    if checkpoint_step is not None:
        checkpoint = run / "checkpoints" / f"checkpoint-{checkpoint_step}"
        checkpoint.mkdir(parents=True)
        state = {"global_step": checkpoint_step, "log_history": history or []}
        (checkpoint / "trainer_state.json").write_text(json.dumps(state))
        seal(checkpoint, checkpoint_step)  # complete, as ftl's Trainer leaves it
    return run


def _history(losses: list[float], accuracies: list[float]) -> list[dict]:
    entries = [{"loss": loss, "learning_rate": 1e-3, "step": 10 * (i + 1)} for i, loss in enumerate(losses)]
    entries += [
        {"eval_accuracy": acc, "eval_loss": 1 - acc, "eval_runtime": 0.5, "step": 10 * (i + 1)}
        for i, acc in enumerate(accuracies)
    ]
    return sorted(entries, key=lambda e: e["step"])


@pytest.fixture
def run_folder(tmp_path) -> Path:
    """A folder of runs in every state: finished, interrupted, never checkpointed, and a search's trials."""
    root = tmp_path / "runs"
    _fake_run(
        root,
        "alpha",
        lr=1e-3,
        metrics={"eval_accuracy": 0.81, "eval_loss": 0.4, "train_steps": 30},
        history=_history([0.7, 0.5, 0.3], [0.7, 0.78, 0.81]),
    )
    _fake_run(
        root,
        "beta",
        lr=3e-3,
        metrics={"eval_accuracy": 0.86, "eval_loss": 0.5, "train_steps": 30},
        history=_history([0.6, 0.4, 0.2], [0.75, 0.8, 0.86]),
    )
    _fake_run(root, "gamma", lr=1e-2, metrics=None, history=_history([0.9], [0.55]), checkpoint_step=10)
    _fake_run(root, "delta", lr=1e-2, metrics=None)
    search = root / "tune-x"
    failed = _fake_run(search / "trials", "trial-1", lr=1e-4, metrics=None, checkpoint_step=10)
    stopped = _fake_run(search / "trials", "trial-2", lr=1e-5, metrics=None)
    won = _fake_run(
        search / "trials",
        "trial-3",
        lr=1e-3,
        metrics={"eval_accuracy": 0.9, "train_steps": 20},
        task={"type": "causal_lm"},
    )
    with (search / "trials.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["trial", "status", "eval_accuracy", "seconds", "run_dir", "error"])
        writer.writerow(["1", "error", "", "3.0", str(failed), "CUDA out of memory"])
        writer.writerow(["2", "stopped early", "0.5", "12.5", str(stopped), ""])
        writer.writerow(["3", "completed", "0.9", "30.0", str(won), ""])
    return root


def test_runs_reads_every_state_from_the_run_directories(run_folder):
    from ftl.launcher.use.runs import describe_runs

    runs = {run.name: run for run in describe_runs(run_folder)}
    assert set(runs) == {
        "alpha",
        "beta",
        "gamma",
        "delta",
        "tune-x/trials/trial-1",
        "tune-x/trials/trial-2",
        "tune-x/trials/trial-3",
    }
    assert runs["alpha"].status == "finished" and runs["alpha"].metrics["accuracy"] == 0.81
    assert runs["alpha"].steps == 30 and runs["alpha"].seconds == 65
    assert (
        runs["alpha"].started.isoformat() == "2026-01-02T03:03:00+00:00"
    )  # written at the end, minus wall time
    assert runs["gamma"].status == "running or interrupted"
    assert runs["gamma"].steps == 10 and runs["gamma"].metrics["accuracy"] == 0.55  # its last checkpoint's
    assert runs["delta"].status == "incomplete"
    assert runs["tune-x/trials/trial-1"].status == "failed"
    assert runs["tune-x/trials/trial-1"].error == "CUDA out of memory"
    assert runs["tune-x/trials/trial-2"].status == "stopped early"
    # a finished search removes its trials' checkpoints: their last evaluation is in trials.csv
    assert runs["tune-x/trials/trial-2"].metrics == {"accuracy": 0.5}
    assert runs["tune-x/trials/trial-2"].seconds == 12.5
    assert runs["tune-x/trials/trial-3"].task == "causal_lm" and runs["alpha"].model == "org/model"


def test_runs_sorts_by_a_metric_best_first_and_names_unknown_ones(run_folder, capsys):
    from ftl.launcher.use.runs import describe_runs, sort_runs

    runs = describe_runs(run_folder)
    by_accuracy = [run.name for run in sort_runs(runs, "accuracy")]
    assert by_accuracy[:4] == ["tune-x/trials/trial-3", "beta", "alpha", "gamma"]  # max is best
    assert [run.name for run in sort_runs(runs, "eval_loss")][:3] == ["alpha", "gamma", "beta"]  # min is best
    with pytest.raises(FtlError, match=r"no run here has a metric 'acuracy' \(did you mean 'accuracy'\?\)"):
        sort_runs(runs, "acuracy")

    capsys.readouterr()
    assert main(["runs", str(run_folder), "--json", "--sort", "accuracy"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in listed][:2] == ["tune-x/trials/trial-3", "beta"]
    assert main(["runs", str(run_folder)]) == 0
    table = capsys.readouterr().out
    for name in ("alpha", "beta", "gamma", "trial-1", "running or interrupted", "stopped early", "0.8600"):
        assert name in table
    message = fails(capsys, ["runs", str(run_folder), "--sort", "acuracy"])
    assert "did you mean 'accuracy'" in message


def test_compare_writes_differences_metrics_and_both_runs_curves(run_folder, tmp_path, capsys):
    from matplotlib import style

    capsys.readouterr()
    out = tmp_path / "report"
    with style.context("ggplot"):  # what optuna's plots leave in a process: compare.png keeps its own style
        assert main(["compare", str(run_folder / "alpha"), str(run_folder / "beta"), "-o", str(out)]) == 0
    assert capsys.readouterr().out.split() == [str(out / f"compare.{ext}") for ext in ("png", "md", "json")]
    report = json.loads((out / "compare.json").read_text())
    assert report["differences"] == {"name": ["alpha", "beta"], "train.lr": [0.001, 0.003]}
    assert [run["curves_from"] for run in report["runs"]] == ["log_history.json"] * 2
    assert report["metrics"]["accuracy"] == [0.81, 0.86]
    curves = report["curves"]
    assert list(curves) == ["train/loss", "eval/loss", "eval/accuracy"]  # from log_history.json (no events)
    assert curves["train/loss"] == {
        "alpha": [[10, 0.7], [20, 0.5], [30, 0.3]],
        "beta": [[10, 0.6], [20, 0.4], [30, 0.2]],
    }
    assert set(curves["eval/accuracy"]) == {"alpha", "beta"}
    png = (out / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000  # three charts were drawn
    assert line_colours(out / "compare.png") == {0, 1}  # a line for each run
    markdown = (out / "compare.md").read_text()
    rows = markdown_rows(markdown)
    assert ["train.lr", "0.001", "0.003"] in rows and ["accuracy", "0.8100", "**0.8600**"] in rows

    assert main(["compare", str(run_folder / "alpha"), str(run_folder / "beta"), "--output", str(out)]) == 0
    assert f"replacing {out / 'compare.png'}" in capsys.readouterr().err  # never overwritten silently


def test_compare_reads_tensorboard_events_and_keeps_the_last_value_of_a_step(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from ftl.launcher.use.curves import read_curves

    run = tmp_path / "run"
    writer = SummaryWriter(log_dir=str(run / "tensorboard"))
    for step, loss in ((10, 0.9), (20, 0.7), (30, 0.6)):
        writer.add_scalar("train/loss", loss, step)
    writer.add_scalar("eval/accuracy", 0.5, 20)
    writer.add_scalar("eval/runtime", 3.0, 20)  # timing, not a curve
    writer.close()
    writer = SummaryWriter(log_dir=str(run / "tensorboard"))  # resumed from step 20: step 30 is logged again
    writer.add_scalar("train/loss", 0.55, 30)
    writer.add_scalar("train/loss", 0.4, 40)
    writer.close()
    curves = read_curves(run)
    assert curves.source == "tensorboard"
    steps, values = zip(*curves.series["train/loss"], strict=True)
    assert steps == (10, 20, 30, 40) and values == pytest.approx([0.9, 0.7, 0.55, 0.4])
    assert "eval/runtime" not in curves.series and curves.series["eval/accuracy"] == [(20, 0.5)]


def test_recipe_differences_are_dotted_leaf_keys():
    from ftl.launcher.use.compare import differences, flatten

    a = flatten({"train": {"lr": 1e-3, "epochs": 1}, "lora": None, "tags": [1, 2]})
    b = flatten({"train": {"lr": 1e-3, "epochs": 2}, "lora": {"r": 8, "alpha": 16}, "tags": [1, 2]})
    assert differences([a, b]) == {"train.epochs": [1, 2], "lora.r": [None, 8], "lora.alpha": [None, 16]}


def test_runs_lists_what_it_cannot_read_and_bench_cells_and_compare_refuses_them(run_folder, capsys):
    from ftl.launcher.use.runs import describe_runs

    old = run_folder / "old"
    shutil.copytree(run_folder / "alpha", old)
    recipe = yaml.safe_load((old / "recipe.resolved.yaml").read_text())
    recipe["train"]["lerning_rate"] = 1e-3  # a key this ftl does not know (e.g. a recipe of another version)
    (old / "recipe.resolved.yaml").write_text(yaml.safe_dump(recipe))
    cell = run_folder / "bench-x" / "cells" / "c1" / "run"
    shutil.copytree(run_folder / "beta", cell)
    shutil.rmtree(cell / "model")  # ftl bench trains its cells without saving a model
    runs = {run.name: run for run in describe_runs(run_folder)}
    assert runs["old"].status == "finished" and runs["old"].task == "?" and runs["old"].metrics["accuracy"]
    assert "unknown key 'lerning_rate'" in runs["old"].error
    assert runs["bench-x/cells/c1/run"].status == "trained, no model"
    assert runs["bench-x/cells/c1/run"].task == "sequence_classification"
    message = fails(capsys, ["compare", str(run_folder / "alpha"), str(old)])
    assert "recipe.resolved.yaml:" in message and "unknown key 'lerning_rate'" in message


def test_compare_and_predict_refuse_what_is_not_a_run(run_folder, tmp_path, capsys):
    message = fails(capsys, ["compare", str(run_folder / "alpha"), str(tmp_path / "nowhere")])
    assert "nowhere: no such directory" in message
    message = fails(capsys, ["compare", str(run_folder / "alpha")])
    assert "at least two run directories" in message
    message = fails(capsys, ["predict", str(run_folder / "tune-x"), "--data", str(tmp_path / "x.tsv")])
    assert "not a run directory but a folder of" in message and "ftl runs" in message
    (tmp_path / "empty").mkdir()
    message = fails(capsys, ["predict", str(tmp_path / "empty"), "--data", str(tmp_path / "x.tsv")])
    assert "not a run directory (no recipe.resolved.yaml)" in message
    message = fails(capsys, ["generate", str(run_folder / "delta"), "--prompt", "hi"])
    assert "the run has no final model yet" in message
    (tmp_path / "x.tsv").write_text("sentence\nfine\n")
    message = fails(capsys, ["predict", str(run_folder / "alpha"), "--data", str(tmp_path / "x.tsv")])
    # the file the folder lacks is named (the hand-made run has no task state and no tokenizer)
    assert "alpha/model/ftl_task.json is missing" in message and "incomplete" in message


def test_tasks_that_cannot_predict_say_which_can():
    from ftl.launcher.recipe.tasks import MaskedLMTask
    from ftl.launcher.tasks.masked_lm import MaskedLM

    task = MaskedLM(MaskedLMTask(type="masked_lm"))
    with pytest.raises(FtlError) as predicted:
        task.encode_for_prediction(None, None)
    assert "a masked_lm run cannot be used with ftl predict" in str(predicted.value)
    assert "sequence_classification, token_classification, question_answering, seq2seq, causal_lm" in str(
        predicted.value
    )
    with pytest.raises(
        FtlError, match=r"ftl generate \(it supports seq2seq, causal_lm, chat, preference runs\)"
    ):
        task.generation_prompt("hi")
