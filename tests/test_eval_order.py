"""Evaluation reads rows longest first but reports every result at its row's place; a run's final metrics are
the logged evaluation of its final weights (no second pass); model.config_overrides reach the model."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from ftl.launcher.cli import main
from ftl.launcher.train.eval_order import LongestFirstSampler, in_row_order
from tests.conftest import TINY_BERT, edit_recipe, minilm_dir


def test_results_go_back_to_their_rows():
    lengths = [3, 9, 1, 9, 5]
    sampler = LongestFirstSampler(lengths)
    assert list(sampler) == [1, 3, 4, 0, 2]  # longest first, ties in row order
    rows = np.arange(5) * 10
    read = rows[sampler.order]  # what the loop produces, in reading order
    nested = in_row_order((read, [read + 1]), sampler.order)
    assert nested[0].tolist() == rows.tolist() and nested[1][0].tolist() == (rows + 1).tolist()


def test_trainer_predictions_and_metrics_follow_the_dataset_order(tmp_path):
    import datasets
    from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

    from ftl.launcher.data.collate import PaddingCollator
    from ftl.launcher.train.trainer import FtlTrainer

    torch.manual_seed(0)
    model = BertForSequenceClassification(
        BertConfig(**{k: v for k, v in TINY_BERT.items() if k != "model_type"})
    )
    model.eval()
    rng = random.Random(0)
    rows = [[101] + [rng.randrange(1000, 2000) for _ in range(rng.randint(1, 40))] + [102] for _ in range(37)]
    labels = [rng.randrange(2) for _ in rows]
    dataset = datasets.Dataset.from_dict(
        {"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows], "labels": labels}
    )
    seen = {}

    def metrics(prediction):
        seen["predictions"] = prediction.predictions
        seen["labels"] = prediction.label_ids
        return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_eval_batch_size=8, use_cpu=True, report_to="none"
    )
    trainer = FtlTrainer(
        model=model,
        args=args,
        data_collator=PaddingCollator(tokenizer),
        compute_metrics=metrics,
        processing_class=tokenizer,
    )
    sampler = trainer._get_eval_sampler(dataset)
    assert isinstance(sampler, LongestFirstSampler) and list(sampler)[0] == int(
        np.argmax([len(r) for r in rows])
    )
    output = trainer.predict(dataset)
    with torch.no_grad():
        one_by_one = np.stack([model(input_ids=torch.tensor([r])).logits[0].numpy() for r in rows])
    assert output.predictions == pytest.approx(one_by_one, abs=1e-5)
    assert output.label_ids.tolist() == labels
    assert seen["labels"].tolist() == labels  # compute_metrics saw rows in dataset order
    expected = float((one_by_one.argmax(-1) == np.asarray(labels)).mean())
    assert output.metrics["test_accuracy"] == pytest.approx(expected)
    assert next(iter(output.metrics)) == "test_loss"  # HF's order: what run summaries print first


@pytest.mark.slow
def test_final_metrics_are_the_last_evaluation_and_config_overrides_apply(
    classification_recipe, tmp_path, capsys
):
    edit_recipe(
        classification_recipe,
        model={
            "config": TINY_BERT,
            "tokenizer": minilm_dir(),
            "config_overrides": {"attention_probs_dropout_prob": 0.0},
        },
        train={"max_steps": 8, "lr": 1e-2},
        eval={"every_steps": 4, "select_best": True},
    )
    out = tmp_path / "run"
    assert main(["run", str(classification_recipe), "--output", str(out)]) == 0
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["attention_probs_dropout_prob"] == 0.0
    metrics = json.loads((out / "metrics.json").read_text())
    history = json.loads((out / "log_history.json").read_text())["log_history"]
    evaluations = [entry for entry in history if "eval_loss" in entry]
    assert [entry["step"] for entry in evaluations] == [4, 8]  # no second evaluation after training
    best = min(
        evaluations, key=lambda entry: (-entry["eval_accuracy"], entry["step"])
    )  # HF keeps the first best
    assert metrics["eval_accuracy"] == best["eval_accuracy"] and metrics["eval_loss"] == best["eval_loss"]
    capsys.readouterr()
    assert main(["eval", str(out), "--data", str(out / "validation.jsonl")]) == 0
    evaluated = json.loads(capsys.readouterr().out)  # the saved model is the one those metrics describe
    assert evaluated["eval_accuracy"] == metrics["eval_accuracy"]
    assert evaluated["eval_loss"] == pytest.approx(metrics["eval_loss"], abs=1e-6)
