"""End-to-end runs on tiny models: the run directory, `ftl eval`, and exact resume after SIGKILL."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ftl.launcher.cli import main
from tests.conftest import (
    REPO,
    TINY_BERT,
    edit_recipe,
    env_without_hub,
    minilm_dir,
    sentiment_rows,
    write_tsv,
)

pytestmark = pytest.mark.slow


def _run(argv: list[str]) -> None:
    assert main(argv) == 0


def test_classification_run_writes_a_complete_run_directory(tmp_path, classification_recipe, capsys):
    write_tsv(tmp_path / "val.tsv", sentiment_rows(60, seed=9))
    edit_recipe(classification_recipe, data={"train": "train.tsv", "validation": "val.tsv"})
    out = tmp_path / "run"
    _run(["run", str(classification_recipe), "train.keep_checkpoints=1", "--output", str(out)])
    for name in (
        "recipe.resolved.yaml",
        "manifest.json",
        "metrics.json",
        "misclassified.jsonl",
        "model/config.json",
        "model/tokenizer.json",
        "model/ftl_task.json",
    ):
        assert (out / name).exists(), name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_accuracy"] >= 0.9, metrics  # the synthetic task is learnable
    assert {"eval_f1_macro", "eval_loss", "train_steps"} <= set(metrics)
    manifest = json.loads((out / "manifest.json").read_text())
    assert (
        manifest["session"]["train_loss"] > 0
        and manifest["seed"] == 7
        and manifest["data_fingerprint"]
        and "transformers" in manifest["versions"]
    )
    assert manifest["command"][0] and manifest["host"]
    checkpoints = sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*"))
    assert 1 <= len(checkpoints) <= 2  # the newest plus (when different) the best
    validation = [json.loads(line) for line in (out / "validation.jsonl").read_text().splitlines()]
    wrong = [json.loads(line) for line in (out / "misclassified.jsonl").read_text().splitlines()]
    assert len(wrong) == round((1 - metrics["eval_accuracy"]) * len(validation))
    for row in wrong:  # each prediction belongs to the row it names (evaluation reads rows in order)
        assert row["label"] != row["predicted"]
        assert (row["text"], row["label"]) == (
            validation[row["row"]]["sentence"],
            validation[row["row"]]["label"],
        )

    capsys.readouterr()
    _run(["eval", str(out), "--data", str(tmp_path / "val.tsv")])
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["eval_accuracy"] == pytest.approx(metrics["eval_accuracy"], abs=1e-9)
    assert evaluated["examples"] == 60


def test_causal_lm_reports_perplexity_before_and_after(tmp_path, lm_recipe, capsys):
    out = tmp_path / "lm"
    _run(["run", str(lm_recipe), "--output", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_perplexity"] < metrics["before"]["eval_perplexity"]
    assert metrics["perplexity_relative_change"] < 0
    assert metrics["eval_perplexity"] == pytest.approx(2.718281828 ** metrics["eval_token_nll"], rel=1e-6)
    capsys.readouterr()
    _run(["eval", str(out), "--data", str(out / "validation.jsonl")])  # the held-out tail, re-evaluated
    assert json.loads(capsys.readouterr().out)["eval_perplexity"] == pytest.approx(
        metrics["eval_perplexity"], rel=1e-5
    )


def test_carved_validation_is_saved_and_re_evaluates_to_the_same_accuracy(
    tmp_path, classification_recipe, capsys
):
    out = tmp_path / "run"
    _run(["run", str(classification_recipe), "train.epochs=1", "--output", str(out)])
    rows = [json.loads(line) for line in (out / "validation.jsonl").read_text().splitlines()]
    assert len(rows) == 48 and {r["label"] for r in rows} == {"negative", "positive"}
    capsys.readouterr()
    _run(["eval", str(out), "--data", str(out / "validation.jsonl")])
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["eval_accuracy"] == json.loads((out / "metrics.json").read_text())["eval_accuracy"]


def test_early_stopping_ends_training_before_the_last_epoch(tmp_path, classification_recipe):
    out = tmp_path / "early"
    _run(
        [
            "run",
            str(classification_recipe),
            "train.epochs=20",
            "eval.every_steps=2",
            "eval.metric=loss",
            "train.early_stopping={patience: 1, min_delta: 100}",
            "--output",
            str(out),
        ]
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_steps"] == 4  # first evaluation sets the best, the second fails to improve by 100


@pytest.mark.parametrize("class_weights, tolerance", [(None, 1e-4), ("balanced", 0.15)])
def test_gradient_accumulation_equals_the_larger_batch(
    tmp_path, classification_recipe, class_weights, tolerance
):
    """2 micro-batches of 8 are one batch of 16: the same losses and gradient norms (HF on its own would add up
    the two micro-batches' mean losses for BERT, and for any custom loss such as class weights: 2x). With class
    weights each micro-batch's loss is its own weighted mean, so the two agree only approximately."""
    no_dropout = {**TINY_BERT, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    task = yaml.safe_load(classification_recipe.read_text())["task"]
    edit_recipe(
        classification_recipe,
        model={"config": no_dropout, "tokenizer": minilm_dir()},
        task={**task, "class_weights": class_weights} if class_weights else task,
        train={
            "max_steps": 4,
            "log_every_steps": 1,
            "lr": 1e-3,
            "warmup_ratio": 0.0,
            "group_by_length": False,
        },
        eval={"every_steps": 4},
    )
    histories = []
    for name, settings in (
        ("one", ["train.batch_size=16"]),
        ("two", ["train.batch_size=8", "train.grad_accum_steps=2"]),
    ):
        _run(["run", str(classification_recipe), *settings, "--output", str(tmp_path / name)])
        history = json.loads((tmp_path / name / "log_history.json").read_text())["log_history"]
        histories.append([v for e in history if "loss" in e for v in (e["loss"], e["grad_norm"])])
    assert len(histories[0]) == 8  # 4 steps: loss and gradient norm
    assert histories[1] == pytest.approx(histories[0], rel=tolerance)


def test_bf16_trains_on_cpu(tmp_path, classification_recipe):
    out = tmp_path / "bf16"
    _run(
        ["run", str(classification_recipe), "train.precision=bf16", "train.max_steps=4", "--output", str(out)]
    )
    assert json.loads((out / "manifest.json").read_text())["device"].endswith("bf16")


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, classification_recipe):
    write_tsv(tmp_path / "train.tsv", sentiment_rows(400, seed=2))
    settings = [
        "train.max_steps=40",
        "train.batch_size=8",
        "train.checkpoint_every_steps=4",
        "eval.every_steps=4",
        "train.keep_checkpoints=2",
    ]
    command = [sys.executable, "-m", "ftl.launcher.cli", "run", str(classification_recipe), *settings]
    env = env_without_hub()
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(
        [*command, "--output", str(whole)], check=True, env=env, cwd=REPO, timeout=600, capture_output=True
    )

    process = subprocess.Popen(
        [*command, "--output", str(killed)],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while (
        time.time() < deadline
        and not (killed / "checkpoints" / "checkpoint-12" / "trainer_state.json").exists()
    ):
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "metrics.json").exists(), "the run finished before it could be killed"
    subprocess.run(
        [*command, "--output", str(killed), "--resume"],
        check=True,
        env=env,
        cwd=REPO,
        timeout=600,
        capture_output=True,
    )

    manifest = json.loads((killed / "manifest.json").read_text())
    assert manifest["resumed_from"] is not None
    assert json.loads((killed / "metrics.json").read_text()) == json.loads(
        (whole / "metrics.json").read_text()
    )
    a, b = _weights(whole), _weights(killed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
