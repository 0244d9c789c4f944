"""Each task end to end on a tiny model: train, evaluate, error files, and `ftl eval` agreeing with the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftl.launcher.cli import main
from tests.conftest import (
    SHARED_DATA,
    TINY_BERT,
    TINY_LLAMA,
    TINY_T5,
    minilm_dir,
    ner_conll,
    summaries_jsonl,
    write_recipe,
)

pytestmark = pytest.mark.slow


def _run(argv: list[str]) -> None:
    assert main(argv) == 0


def _eval(capsys, run: Path, data: Path) -> dict:
    capsys.readouterr()
    _run(["eval", str(run), "--data", str(data)])
    return json.loads(capsys.readouterr().out)


def test_ner_learns_entities_and_writes_its_error_analysis(tmp_path, capsys):
    (tmp_path / "train.conll").write_text(ner_conll(300, seed=1))
    (tmp_path / "dev.conll").write_text(ner_conll(60, seed=2))
    recipe = write_recipe(
        tmp_path / "ner.yaml",
        {
            "name": "tiny-ner",
            "seed": 1,
            "model": {"config": TINY_BERT, "tokenizer": minilm_dir()},
            "task": {"type": "token_classification", "max_length": 32},
            "data": {"train": "train.conll", "validation": "dev.conll"},
            "train": {"epochs": 4, "batch_size": 16, "lr": 1e-2, "warmup_ratio": 0.1},
            "eval": {"every_steps": 20},
            "log": {"progress": False, "tensorboard": False},
        },
    )
    out = tmp_path / "run"
    _run(["run", str(recipe), "--output", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_f1"] >= 0.8, metrics  # only a correct word/subword alignment learns this
    assert {"eval_precision", "eval_recall", "eval_f1_per", "eval_f1_loc"} <= set(metrics)
    report = json.loads((out / "entity_report.json").read_text())
    assert set(report["types"]) == {"per", "loc"}
    assert set(report["types"]["loc"]["errors"]) == {"wrong_type", "wrong_span", "missed", "spurious"}
    validation = [json.loads(line) for line in (out / "validation.jsonl").read_text().splitlines()]
    for line in (out / "ner_errors.jsonl").read_text().splitlines():
        error = json.loads(line)
        assert error["text"] == " ".join(validation[error["row"]]["tokens"])  # errors name their own sentence
        assert error["errors"]
    evaluated = _eval(capsys, out, out / "validation.jsonl")
    assert evaluated["eval_f1"] == pytest.approx(metrics["eval_f1"], abs=1e-9)


def test_question_answering_on_held_out_articles(tmp_path, capsys):
    recipe = write_recipe(
        tmp_path / "qa.yaml",
        {
            "name": "tiny-qa",
            "seed": 1,
            "model": {"config": {**TINY_BERT, "max_position_embeddings": 256}, "tokenizer": minilm_dir()},
            "task": {"type": "question_answering", "max_length": 128, "doc_stride": 32},
            "data": {
                "train": str(SHARED_DATA / "squad" / "validation.json"),
                "validation_split": {"fraction": 0.2, "group_column": "title"},
                "max_train_rows": 300,
                "max_eval_rows": 60,
            },
            "train": {"max_steps": 12, "batch_size": 16, "lr": 3e-3},
            "eval": {"every_steps": 6},
            "log": {"progress": False, "tensorboard": False},
        },
    )
    out = tmp_path / "run"
    _run(["run", str(recipe), "--output", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["eval_exact_match"] <= metrics["eval_f1"] <= 1.0
    manifest = json.loads((out / "manifest.json").read_text())
    stats = manifest["data_stats"]["validation"]
    assert stats["questions"] == 60 and stats["windows"] > 60  # long contexts became several windows
    errors = [json.loads(line) for line in (out / "qa_errors.jsonl").read_text().splitlines()]
    validation = [json.loads(line) for line in (out / "validation.jsonl").read_text().splitlines()]
    assert len(errors) == round((1 - metrics["eval_exact_match"]) * 60)
    for error in errors:
        assert error["question"] == validation[error["row"]]["question"]
        assert error["gold"] == validation[error["row"]]["answers"]["text"]
    titles = {row["title"] for row in validation}
    assert len(titles) >= 1
    evaluated = _eval(capsys, out, out / "validation.jsonl")
    assert evaluated["eval_f1"] == pytest.approx(metrics["eval_f1"], abs=1e-9)


def test_seq2seq_generates_and_scores_rouge_at_every_evaluation(tmp_path, capsys):
    summaries_jsonl(tmp_path / "train.jsonl", 200, seed=1, references=True)
    summaries_jsonl(tmp_path / "dev.jsonl", 24, seed=2, references=True)
    recipe = write_recipe(
        tmp_path / "s2s.yaml",
        {
            "name": "tiny-s2s",
            "seed": 1,
            "model": {"config": TINY_T5, "tokenizer": minilm_dir()},
            "task": {
                "type": "seq2seq",
                "references_column": "references",
                "max_source_length": 32,
                "max_target_length": 8,
                "generation": {"max_new_tokens": 6},
            },
            "data": {"train": "train.jsonl", "validation": "dev.jsonl"},
            "train": {"max_steps": 40, "batch_size": 16, "lr": 1e-2},
            "eval": {"every_steps": 20},
            "log": {"progress": False, "tensorboard": False},
        },
    )
    out = tmp_path / "run"
    _run(["run", str(recipe), "--output", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    history = json.loads((out / "log_history.json").read_text())["log_history"]
    assert sum("eval_rougeL" in entry for entry in history) >= 2  # generated at each evaluation
    assert metrics["eval_rouge1"] > 0.3, metrics  # "a trip to" is learnt
    generations = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(generations) == 24 and all(g["generated"] is not None for g in generations)
    assert [g["rougeL"] for g in generations] == sorted(g["rougeL"] for g in generations)  # worst first
    evaluated = _eval(capsys, out, tmp_path / "dev.jsonl")
    assert evaluated["eval_rougeL"] == pytest.approx(metrics["eval_rougeL"], abs=1e-9)


def test_instruction_tuning_generates_responses_and_reports_rouge(tmp_path):
    summaries_jsonl(tmp_path / "train.jsonl", 80, seed=1, references=True)
    summaries_jsonl(tmp_path / "dev.jsonl", 12, seed=2, references=True)
    recipe = write_recipe(
        tmp_path / "sft.yaml",
        {
            "name": "tiny-sft",
            "seed": 1,
            "model": {"config": TINY_LLAMA, "tokenizer": minilm_dir()},
            "task": {
                "type": "causal_lm",
                "prompt_template": "Summarise: {document}\nTL;DR:",
                "response_column": "summary",
                "references_column": "references",
                "max_length": 64,
                "generate_rows": 8,
                "generation": {"max_new_tokens": 6},
            },
            "data": {"train": "train.jsonl", "validation": "dev.jsonl"},
            "train": {"max_steps": 8, "batch_size": 8, "lr": 3e-3},
            "eval": {"every_steps": 4},
            "log": {"progress": False, "tensorboard": False},
        },
    )
    out = tmp_path / "run"
    _run(["run", str(recipe), "--output", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"eval_perplexity", "eval_rouge1", "eval_rouge2", "eval_rougeL", "eval_rougeLsum"} <= set(metrics)
    generations = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(generations) == 8 and all(g["source"].endswith("TL;DR:") for g in generations)
