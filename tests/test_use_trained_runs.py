"""Using what was trained: tiny runs trained once per module (classification, a LoRA classifier, NER, QA,
instruction tuning, seq2seq, multitask), used the way a user would: `ftl predict`, `ftl generate`, `ftl eval`,
`ftl runs`, `ftl compare`, with predictions checked against `ftl eval` on the same labelled files."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from ftl.launcher.cli import main
from tests.conftest import (
    SHARED_DATA,
    TINY_BERT,
    TINY_LLAMA,
    TINY_T5,
    fails,
    line_colours,
    minilm_dir,
    ner_conll,
    read_jsonl,
    sentiment_rows,
    summaries_jsonl,
    write_recipe,
)


# ---- slow: tiny trained runs ------------------------------------------------------------------------
def _train(recipe: Path, out: Path, *overrides: str) -> Path:
    assert main(["run", str(recipe), *overrides, "--output", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Tiny runs of every task ftl predict and ftl generate serve (each trains in seconds)."""
    root = tmp_path_factory.mktemp("use")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FTL_CACHE", str(root / "cache"))
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_DATASETS_OFFLINE", "1")
        yield _build_runs(root)


def _build_runs(root: Path) -> dict[str, Path]:
    data = root / "data"
    data.mkdir()
    with (data / "train.tsv").open("w") as handle:
        handle.write("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in sentiment_rows(240, seed=1)))
    with (data / "val.tsv").open("w") as handle:  # an extra column, kept in the predictions
        handle.write(
            "id\tsentence\tlabel\n"
            + "".join(f"r{i}\t{t}\t{y}\n" for i, (t, y) in enumerate(sentiment_rows(80, seed=9)))
        )
    (data / "train.conll").write_text(ner_conll(300, seed=1))
    (data / "dev.conll").write_text(ner_conll(60, seed=2))
    summaries_jsonl(data / "s-train.jsonl", 120, seed=1)
    summaries_jsonl(data / "s-dev.jsonl", 12, seed=2)
    tiny = {"config": TINY_BERT, "tokenizer": minilm_dir()}
    quiet = {"progress": False, "tensorboard": True}
    cls = write_recipe(
        data / "cls.yaml",
        {
            "name": "cls",
            "seed": 7,
            "model": tiny,
            "task": {
                "type": "sequence_classification",
                "text_column": "sentence",
                "labels": ["negative", "positive"],
                "max_length": 32,
            },
            "data": {"train": "train.tsv", "validation": "val.tsv"},
            "train": {"max_steps": 6, "batch_size": 16, "lr": 5e-3},
            "eval": {"every_steps": 3},
            "log": quiet,
        },
    )
    runs = {"cls": _train(cls, root / "runs" / "cls")}
    runs["lora"] = _train(
        cls, root / "runs" / "cls-lora", "lora={r: 4, target_modules: [query, value]}", "train.lr=3e-2"
    )
    ner = write_recipe(
        data / "ner.yaml",
        {
            "name": "ner",
            "seed": 1,
            "model": tiny,
            "task": {"type": "token_classification", "max_length": 32},
            "data": {"train": "train.conll", "validation": "dev.conll"},
            "train": {"max_steps": 40, "batch_size": 16, "lr": 1e-2},
            "eval": {"every_steps": 20},
            "log": quiet,
        },
    )
    runs["ner"] = _train(ner, root / "runs" / "ner")
    qa = write_recipe(
        data / "qa.yaml",
        {
            "name": "qa",
            "seed": 1,
            "model": {**tiny, "config": {**TINY_BERT, "max_position_embeddings": 256}},
            "task": {"type": "question_answering", "max_length": 128, "doc_stride": 32},
            "data": {
                "train": str(SHARED_DATA / "squad" / "validation.json"),
                "max_train_rows": 160,
                "max_eval_rows": 30,
            },
            "train": {"max_steps": 8, "batch_size": 16, "lr": 3e-3},
            "eval": {"every_steps": 8},
            "log": quiet,
        },
    )
    runs["qa"] = _train(qa, root / "runs" / "qa")
    sft = write_recipe(
        data / "sft.yaml",
        {
            "name": "sft",
            "seed": 1,
            "model": {"config": TINY_LLAMA, "tokenizer": minilm_dir()},
            "task": {
                "type": "causal_lm",
                "prompt_template": "Summarise: {document}\nTL;DR:",
                "response_column": "summary",
                "max_length": 64,
                "generate_rows": 0,
                "generation": {"max_new_tokens": 8},
            },
            "data": {"train": "s-train.jsonl", "validation": "s-dev.jsonl"},
            "train": {"max_steps": 8, "batch_size": 8, "lr": 3e-3},
            "eval": {"every_steps": 8},
            "log": quiet,
        },
    )
    runs["sft"] = _train(sft, root / "runs" / "sft")
    s2s = write_recipe(
        data / "s2s.yaml",
        {
            "name": "s2s",
            "seed": 1,
            "model": {
                "config": TINY_T5,
                "tokenizer": minilm_dir(),
            },
            "task": {
                "type": "seq2seq",
                "source_prefix": "summarize: ",
                "max_source_length": 32,
                "max_target_length": 8,
                "generation": {"max_new_tokens": 6},
            },
            "data": {"train": "s-train.jsonl", "validation": "s-dev.jsonl"},
            "train": {"max_steps": 8, "batch_size": 16, "lr": 1e-2},
            "eval": {"every_steps": 8},
            "log": quiet,
        },
    )
    runs["s2s"] = _train(s2s, root / "runs" / "s2s")
    multi = write_recipe(
        data / "multi.yaml",
        {
            "name": "multi",
            "seed": 2,
            "model": tiny,
            "task": {
                "type": "multitask",
                "tasks": {
                    "sentiment": {
                        "task": {
                            "type": "sequence_classification",
                            "text_column": "sentence",
                            "labels": ["negative", "positive"],
                            "max_length": 32,
                        },
                        "data": {"train": "train.tsv", "validation": "val.tsv"},
                    },
                    "ner": {
                        "task": {"type": "token_classification", "max_length": 32},
                        "data": {"train": "train.conll", "validation": "dev.conll"},
                    },
                },
            },
            "train": {"max_steps": 10, "batch_size": 16, "lr": 1e-2},
            "eval": {"every_steps": 10},
            "log": quiet,
        },
    )
    runs["multi"] = _train(multi, root / "runs" / "multi")
    runs["data"] = data
    return runs


def _eval(capsys, run: Path, data: Path, *extra: str) -> dict:
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(data), *extra]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_predict_on_a_classifier_reproduces_eval_accuracy_from_its_own_file(trained, tmp_path, capsys):
    val = trained["data"] / "val.tsv"
    out = tmp_path / "preds.jsonl"
    assert (
        main(["predict", str(trained["cls"]), "--data", str(val), "--output", str(out), "--batch-size", "7"])
        == 0
    )
    rows = read_jsonl(out)
    with val.open() as handle:
        given = list(csv.DictReader(handle, delimiter="\t"))
    assert [(r["id"], r["sentence"], str(r["label"])) for r in rows] == [
        (g["id"], g["sentence"], g["label"]) for g in given
    ]
    accuracy = np.mean([row["predicted_id"] == row["label"] for row in rows])
    evaluated = _eval(capsys, trained["cls"], val)
    assert accuracy == pytest.approx(evaluated["eval_accuracy"], abs=1e-12)
    assert 0.5 < accuracy < 1.0, accuracy  # a half-trained model: the order of rows matters
    for row in rows:
        assert row["predicted"] == ["negative", "positive"][row["predicted_id"]]
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert row["score"] == max(row["probabilities"].values())
    for suffix in (".csv", ".json", ".jsonl"):  # the same rows in the other formats: the same predictions
        other = tmp_path / f"val{suffix}"
        if suffix == ".csv":
            with other.open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(given[0]))
                writer.writeheader()
                writer.writerows(given)
        elif suffix == ".json":
            other.write_text(json.dumps(given))
        else:
            other.write_text("".join(json.dumps(g) + "\n" for g in given))
        again = tmp_path / f"preds{suffix}.jsonl"
        assert main(["predict", str(trained["cls"]), "--data", str(other), "-o", str(again)]) == 0
        assert [r["predicted"] for r in read_jsonl(again)] == [r["predicted"] for r in rows], suffix
    capsys.readouterr()
    assert main(["predict", str(trained["cls"]), "--data", str(val)]) == 0  # JSONL on stdout, batch 64
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["predicted"] for r in printed] == [r["predicted"] for r in rows]
    assert [r["score"] for r in printed] == pytest.approx([r["score"] for r in rows], abs=1e-5)


@pytest.mark.slow
def test_predict_on_a_staged_run_uses_its_last_stage(trained, tmp_path, capsys):
    """A staged run's folder holds the recipe with its stages and a run folder per stage (here the classifier
    as its last stage, copied): ftl predict uses the last stage's model."""
    staged = tmp_path / "staged"
    shutil.copytree(trained["cls"], staged / "classify")
    recipe = yaml.safe_load((trained["cls"] / "recipe.resolved.yaml").read_text())
    task = recipe.pop("task")
    recipe["stages"] = [{"name": "first", "task": task}, {"name": "classify", "task": task}]
    (staged / "recipe.resolved.yaml").write_text(yaml.safe_dump(recipe))
    val = trained["data"] / "val.tsv"
    capsys.readouterr()
    assert main(["predict", str(staged), "--data", str(val)]) == 0
    captured = capsys.readouterr()
    assert "a staged run; using the model of its last stage" in captured.err
    assert main(["predict", str(trained["cls"]), "--data", str(val)]) == 0
    assert captured.out == capsys.readouterr().out
    shutil.rmtree(staged / "classify" / "model")
    message = fails(capsys, ["predict", str(staged), "--data", str(val)])
    assert "a staged run whose last stage 'classify' has not finished" in message


@pytest.mark.slow
def test_predict_from_a_lora_adapter_matches_its_eval(trained, tmp_path, capsys):
    out = tmp_path / "lora.jsonl"
    val = trained["data"] / "val.tsv"
    assert (trained["lora"] / "model" / "adapter_config.json").exists()
    assert main(["predict", str(trained["lora"]), "--data", str(val), "--output", str(out)]) == 0
    rows = read_jsonl(out)
    accuracy = np.mean([row["predicted_id"] == row["label"] for row in rows])
    assert accuracy == pytest.approx(_eval(capsys, trained["lora"], val)["eval_accuracy"], abs=1e-12)


@pytest.mark.slow
def test_predict_tags_conll_words_and_plain_text(trained, tmp_path, capsys):
    from ftl.launcher.tasks.ner_metrics import entity_scores

    dev = trained["data"] / "dev.conll"
    out = tmp_path / "ner.jsonl"
    assert main(["predict", str(trained["ner"]), "--data", str(dev), "--output", str(out)]) == 0
    rows = read_jsonl(out)
    assert len(rows) == 60 and all(len(r["predicted_tags"]) == len(r["tokens"]) for r in rows)
    f1 = entity_scores([r["tags"] for r in rows], [r["predicted_tags"] for r in rows], strict=False)["f1"]
    assert f1 == pytest.approx(_eval(capsys, trained["ner"], dev)["eval_f1"], abs=1e-9)
    assert any(r["entities"] for r in rows)
    for row in rows:
        for entity in row["entities"]:
            assert entity["text"] == " ".join(row["tokens"][entity["start"] : entity["end"]])
            assert row["predicted_tags"][entity["start"]].endswith(entity["type"])

    long_text = " ".join(["we went to see alice and then met bob in new paris today"] * 8)  # > 32 tokens
    (tmp_path / "text.jsonl").write_text(
        json.dumps({"text": "we met  carol in new oslo"}) + "\n" + json.dumps({"text": long_text}) + "\n"
    )
    capsys.readouterr()
    assert main(["predict", str(trained["ner"]), "--data", str(tmp_path / "text.jsonl")]) == 0
    captured = capsys.readouterr()
    short, long = (json.loads(line) for line in captured.out.splitlines())
    assert short["words"] == ["we", "met", "carol", "in", "new", "oslo"]
    for entity in short["entities"] + long["entities"]:
        source = short["text"] if entity in short["entities"] else long["text"]
        assert source[entity["char_start"] : entity["char_end"]] == entity["text"]
    assert len(long["predicted_tags"]) == len(long_text.split()) and None not in long["predicted_tags"]
    assert "1 of 2 rows are longer than task.max_length=32 tokens" in captured.err


@pytest.mark.slow
def test_predict_answers_questions_with_spans_and_reproduces_eval_f1(trained, tmp_path, capsys):
    from ftl.launcher.tasks.qa_answers import squad_metrics

    validation = trained["qa"] / "validation.jsonl"
    out = tmp_path / "qa.jsonl"
    assert main(["predict", str(trained["qa"]), "--data", str(validation), "--output", str(out)]) == 0
    rows = read_jsonl(out)
    assert len(rows) == 30
    for row in rows:
        assert row["context"][row["answer_start"] : row["answer_end"]] == row["answer"]
        assert 0.0 <= row["score"] <= 1.0
    from ftl.launcher.tasks.qa_answers import Answer

    scores = squad_metrics(
        [Answer(r["answer"], 0, 0, 0.0) for r in rows], [r["answers"]["text"] for r in rows]
    )
    evaluated = _eval(capsys, trained["qa"], validation)
    assert scores["f1"] == pytest.approx(evaluated["eval_f1"], abs=1e-9)
    assert scores["exact_match"] == pytest.approx(evaluated["eval_exact_match"], abs=1e-9)

    (tmp_path / "no-context.jsonl").write_text(
        json.dumps({"question": "who?", "passage": "alice did"}) + "\n"
    )
    message = fails(capsys, ["predict", str(trained["qa"]), "--data", str(tmp_path / "no-context.jsonl")])
    assert (
        "no column 'context' (the run's task.context_column)" in message
        and "its columns are: question, passage" in message
    )


@pytest.mark.slow
def test_generate_with_a_seed_is_reproducible(trained, tmp_path, capsys):
    def sample(*extra: str) -> str:
        capsys.readouterr()
        argv = [
            "generate",
            str(trained["sft"]),
            "--prompt",
            "we went to paris",
            "--temperature",
            "1.5",
            "--top-k",
            "0",
            "--max-new-tokens",
            "16",
            *extra,
        ]
        assert main(argv) == 0
        return capsys.readouterr().out

    first, again = sample("--seed", "11"), sample("--seed", "11")
    assert first == again and first.strip()
    assert sample("--seed", "12") != first  # 16 tokens sampled at 1.5 from a near-uniform model
    capsys.readouterr()
    assert main(["generate", str(trained["sft"]), "--prompt", "x", "--temperature", "1.0"]) == 0
    assert "sampling with seed" in capsys.readouterr().err  # drawn, and printed so it can be repeated

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('"a trip"\n{"document": "we met in rome"}\n')
    out = tmp_path / "gen.jsonl"
    assert main(["generate", str(trained["sft"]), "--prompts", str(prompts), "--output", str(out)]) == 0
    rows = read_jsonl(out)
    assert [r["input"] for r in rows] == ["Summarise: a trip\nTL;DR:", "Summarise: we met in rome\nTL;DR:"]
    greedy = [r["generated"] for r in rows]
    assert main(["generate", str(trained["sft"]), "--prompts", str(prompts), "--output", str(out)]) == 0
    assert [r["generated"] for r in read_jsonl(out)] == greedy  # greedy: the same without any seed


@pytest.mark.slow
def test_seq2seq_and_instruction_runs_generate_and_predict(trained, tmp_path, capsys):
    capsys.readouterr()
    assert main(["generate", str(trained["s2s"]), "--prompt", "we went to rome today", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["input"] == "summarize: we went to rome today" and isinstance(row["generated"], str)
    out = tmp_path / "s2s.jsonl"
    dev = trained["data"] / "s-dev.jsonl"
    assert main(["predict", str(trained["s2s"]), "--data", str(dev), "--output", str(out)]) == 0
    rows = read_jsonl(out)
    assert len(rows) == 12 and all(
        isinstance(r["generated"], str) and r["id"] == i for i, r in enumerate(rows)
    )
    assert main(["predict", str(trained["sft"]), "--data", str(dev), "--output", str(out)]) == 0
    assert all("generated" in r and "summary" in r for r in read_jsonl(out))


@pytest.mark.slow
def test_multitask_predicts_with_the_head_of_the_task_named(trained, tmp_path, capsys):
    val, dev = trained["data"] / "val.tsv", trained["data"] / "dev.conll"
    message = fails(capsys, ["predict", str(trained["multi"]), "--data", str(val)])
    assert "--task: this multitask run has the tasks sentiment, ner" in message
    message = fails(capsys, ["predict", str(trained["multi"]), "--data", str(val), "--task", "sentimnet"])
    assert "did you mean 'sentiment'" in message
    out = tmp_path / "multi.jsonl"
    assert (
        main(["predict", str(trained["multi"]), "--data", str(val), "--task", "sentiment", "-o", str(out)])
        == 0
    )
    rows = read_jsonl(out)
    assert len(rows) == 80 and {r["predicted"] for r in rows} <= {"negative", "positive"}
    metrics = json.loads((trained["multi"] / "metrics.json").read_text())
    accuracy = np.mean([r["predicted_id"] == r["label"] for r in rows])
    assert accuracy == pytest.approx(metrics["eval_sentiment_accuracy"], abs=1e-12)
    assert main(["predict", str(trained["multi"]), "--data", str(dev), "--task", "ner", "-o", str(out)]) == 0
    assert all(len(r["predicted_tags"]) == len(r["tokens"]) for r in read_jsonl(out))


@pytest.mark.slow
def test_multitask_eval_scores_the_named_task_as_the_run_did(trained, capsys):
    run, val, dev = trained["multi"], trained["data"] / "val.tsv", trained["data"] / "dev.conll"
    message = fails(capsys, ["eval", str(run), "--data", str(val)])
    assert "--task: this multitask run has the tasks sentiment, ner" in message
    message = fails(capsys, ["eval", str(run), "--data", str(val), "--task", "nre"])
    assert "did you mean 'ner'" in message
    message = fails(capsys, ["eval", str(trained["cls"]), "--data", str(val), "--task", "sentiment"])
    assert "only multitask runs have several tasks" in message
    metrics = json.loads((run / "metrics.json").read_text())
    sentiment = _eval(capsys, run, val, "--task", "sentiment")
    assert sentiment["task"] == "sentiment" and sentiment["examples"] == 80
    assert sentiment["eval_sentiment_accuracy"] == pytest.approx(
        metrics["eval_sentiment_accuracy"], abs=1e-12
    )
    ner = _eval(capsys, run, dev, "--task", "ner")
    for key in ("eval_ner_f1", "eval_ner_precision", "eval_ner_recall", "eval_ner_loss"):
        assert ner[key] == pytest.approx(metrics[key], abs=1e-6), key


@pytest.mark.slow
def test_verbs_refuse_runs_and_files_they_cannot_use(trained, tmp_path, capsys):
    message = fails(capsys, ["generate", str(trained["cls"]), "--prompt", "hello"])
    assert "a sequence_classification run cannot be used with ftl generate" in message
    assert "use ftl predict for this run" in message
    (tmp_path / "other.tsv").write_text("text\tlabel\ngood film\t1\n")
    message = fails(capsys, ["predict", str(trained["cls"]), "--data", str(tmp_path / "other.tsv")])
    assert (
        "no column 'sentence' (the run's task.text_column)" in message
        and "its columns are: text, label" in message
    )
    message = fails(capsys, ["generate", str(trained["sft"]), "--prompt", '{"title": "x"}'])
    assert "no field 'document' of the run's prompt template" in message


@pytest.mark.slow
def test_runs_and_compare_on_trained_runs(trained, tmp_path, capsys):
    from ftl.launcher.use.runs import describe_runs

    runs = {run.name: run for run in describe_runs(trained["cls"].parent)}
    assert set(runs) == {"cls", "cls-lora", "ner", "qa", "sft", "s2s", "multi"}
    assert all(run.status == "finished" for run in runs.values())
    assert runs["cls-lora"].model.endswith("+ LoRA") and runs["ner"].metrics["f1"] >= 0

    capsys.readouterr()
    out = tmp_path / "cmp"
    assert main(["compare", str(trained["cls"]), str(trained["lora"]), "-o", str(out)]) == 0
    report = json.loads((out / "compare.json").read_text())
    assert report["differences"]["train.lr"] == [0.005, 0.03] and report["differences"]["lora.r"] == [None, 4]
    assert [run["curves_from"] for run in report["runs"]] == ["tensorboard"] * 2  # the runs' event files
    history = {
        name: json.loads((trained[key] / "log_history.json").read_text())["log_history"]
        for name, key in (("cls", "cls"), ("cls-lora", "lora"))
    }
    for quantity in ("train/loss", "eval/loss", "eval/accuracy"):
        assert set(report["curves"][quantity]) == {"cls", "cls-lora"}  # both runs on every chart
    for name, entries in history.items():  # the events hold what the trainer logged
        logged = {e["step"]: e["eval_accuracy"] for e in entries if "eval_accuracy" in e}
        plotted = dict(map(tuple, report["curves"]["eval/accuracy"][name]))
        assert set(plotted) == set(logged)
        assert [plotted[s] for s in sorted(logged)] == pytest.approx(
            [logged[s] for s in sorted(logged)], rel=1e-6
        )
    assert len((out / "compare.png").read_bytes()) > 20_000
    assert line_colours(out / "compare.png") == {0, 1}
