"""Multi-task: one encoder with a sentiment head and a tagging head; both learn, each reports its metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from ftl.launcher.cli import main
from ftl.launcher.errors import FtlError
from ftl.launcher.recipe import load_recipe
from tests.conftest import TINY_BERT, minilm_dir, ner_conll, sentiment_rows, write_tsv


def _recipe(tmp_path: Path, **changes) -> Path:
    write_tsv(tmp_path / "sentiment.tsv", sentiment_rows(320, seed=3))
    (tmp_path / "train.conll").write_text(ner_conll(320, seed=1))
    (tmp_path / "dev.conll").write_text(ner_conll(60, seed=2))
    recipe = {
        "name": "tiny-multitask",
        "seed": 2,
        "model": {"config": TINY_BERT, "tokenizer": minilm_dir()},
        "task": {
            "type": "multitask",
            "sampling": "temperature",
            "tasks": {
                "sentiment": {
                    "task": {
                        "type": "sequence_classification",
                        "text_column": "sentence",
                        "labels": ["negative", "positive"],
                        "max_length": 32,
                    },
                    "data": {"train": "sentiment.tsv", "validation_split": {"fraction": 0.2}},
                },
                "ner": {
                    "task": {"type": "token_classification", "max_length": 32},
                    "data": {"train": "train.conll", "validation": "dev.conll"},
                },
            },
        },
        "train": {"epochs": 4, "batch_size": 16, "lr": 1e-2, "warmup_ratio": 0.1},
        "eval": {"every_steps": 20, "before_training": True},
        "log": {"progress": False, "tensorboard": False},
        **changes,
    }
    path = tmp_path / "multitask.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.mark.slow
def test_both_heads_learn_and_each_task_reports_its_metrics(tmp_path):
    out = tmp_path / "run"
    assert main(["run", str(_recipe(tmp_path)), "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    before = metrics["before"]
    assert before["eval_sentiment_accuracy"] < 0.7 and before["eval_ner_f1"] < 0.3  # an untrained start
    assert metrics["eval_sentiment_accuracy"] >= 0.9, metrics
    assert metrics["eval_ner_f1"] >= 0.8, metrics
    assert metrics["eval_score"] == pytest.approx(
        np.mean([metrics["eval_sentiment_accuracy"], metrics["eval_ner_f1"]])
    )
    for name in (
        "validation-sentiment.jsonl",
        "validation-ner.jsonl",
        "sentiment/misclassified.jsonl",
        "ner/entity_report.json",
        "ner/ner_errors.jsonl",
        "model/config.json",
    ):
        assert (out / name).exists(), name
    history = json.loads((out / "log_history.json").read_text())["log_history"]
    assert sum("eval_score" in entry for entry in history) >= 3


def test_task_batch_sampler_draws_tasks_by_temperature_and_keeps_workers_in_step():
    from ftl.launcher.data.multitask import TaskBatchSampler, task_probabilities

    sizes = [900, 100]
    assert task_probabilities(sizes, "proportional", 2.0) == pytest.approx([0.9, 0.1])
    assert task_probabilities(sizes, "temperature", 2.0) == pytest.approx([30 / 40, 10 / 40])
    assert task_probabilities(sizes, "uniform", 2.0) == pytest.approx([0.5, 0.5])
    probabilities = task_probabilities(sizes, "temperature", 2.0)
    workers = [list(TaskBatchSampler(sizes, 8, probabilities, seed=1, rank=r, world_size=2)) for r in (0, 1)]
    assert len(workers[0]) == len(workers[1]) == 63  # 1000 rows / (8 x 2)
    for batch_0, batch_1 in zip(*workers, strict=True):
        task_0, task_1 = ({0 if i < 900 else 1 for i in batch} for batch in (batch_0, batch_1))
        assert task_0 == task_1 and len(task_0) == 1  # every step, both workers run the same single task
        assert not set(batch_0) & set(batch_1)  # and different rows of it
    small = sum(1 for batch in workers[0] if batch[0] >= 900) / len(workers[0])
    assert 0.12 < small < 0.4  # ~25 % of the steps for the small task (proportional would give 10 %)


def test_multitask_recipe_mistakes(tmp_path):
    path = _recipe(tmp_path, data={"train": "sentiment.tsv"})
    with pytest.raises(FtlError, match=r"gives data per task"):
        load_recipe(path)
    path = _recipe(tmp_path)
    recipe = yaml.safe_load(path.read_text())
    recipe["task"]["tasks"]["ner"]["data"]["oversample"] = True
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(FtlError, match=r"task.tasks.ner.data.oversample: oversampling repeats rows"):
        load_recipe(path)
    recipe["task"]["tasks"]["ner"]["data"]["oversample"] = False
    recipe["eval"] = {"metric": "ner_f2"}
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(FtlError, match=r"does not produce 'ner_f2' \(did you mean 'ner_f1'\?\)"):
        load_recipe(path)


def _first_losses(run: Path, n: int) -> list[float]:
    history = json.loads((run / "log_history.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry][:n]


@pytest.mark.slow
@pytest.mark.usefixtures("ray_after_module")
def test_two_zero3_workers_train_both_heads_as_one_zero3_worker_does(tmp_path):
    """Under DeepSpeed every worker runs the same head at each step (the unused head gets no gradient) and
    takes its slice of the task's global batch: 2 ZeRO-3 workers x 4 rows (parameters, gradients and optimizer
    state partitioned) give one worker's losses at 8 rows. ZeRO-3 is the strictest stage; stages 0-3 on a
    single-task model are compared the same way in test_distributed.py.

    The reference is one ZeRO-3 worker, not ZeRO-0 or a plain run: the flat optimizer partitions of ZeRO 1-3
    see the idle head's gradient as zeros, so Adam's momentum (and weight decay) keep moving that head, where
    torch.optim skips a parameter whose .grad is None. Against ZeRO-0 the losses drift by 0.4 % in 6 steps."""
    no_dropout = {**TINY_BERT, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    recipe = _recipe(
        tmp_path,
        model={"config": no_dropout, "tokenizer": minilm_dir()},
        train={"max_steps": 6, "log_every_steps": 1, "lr": 1e-3, "warmup_ratio": 0.0},
        eval={"every_steps": 6},
    )
    edited = yaml.safe_load(recipe.read_text())
    edited["task"]["dropout"] = 0.0
    recipe.write_text(yaml.safe_dump(edited, sort_keys=False))
    single, double = tmp_path / "one", tmp_path / "two"
    common = ["train.group_by_length=false"]
    assert (
        main(
            ["run", str(recipe), *common, "distributed.zero_stage=3", "train.batch_size=8", "-o", str(single)]
        )
        == 0
    )
    assert (
        main(
            [
                "run",
                str(recipe),
                *common,
                "distributed.zero_stage=3",
                "distributed.workers=2",
                "train.batch_size=4",
                "--output",
                str(double),
            ]
        )
        == 0
    )
    reference = _first_losses(single, 6)
    assert len(reference) == 6
    assert _first_losses(double, 6) == pytest.approx(reference, rel=1e-3)
    metrics = json.loads((double / "metrics.json").read_text())
    assert {"eval_sentiment_accuracy", "eval_ner_f1", "eval_score"} <= set(metrics)
    manifest = json.loads((double / "manifest.json").read_text())
    assert manifest["workers"] == 2 and manifest["deepspeed"]["zero_optimization"]["stage"] == 3
