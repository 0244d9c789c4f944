"""Using what was trained: `ftl predict`, `ftl generate`, `ftl runs`, `ftl compare`.

Fast tests work on hand-made run directories, a real tokenizer and made-up logits; the slow ones train tiny
runs once per module (classification, a LoRA classifier, NER, QA, instruction tuning, seq2seq, multitask) and
use them the way a user would, checking predictions against `ftl eval` on the same labelled files.
"""

from __future__ import annotations

import csv
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from ftl.launcher.cli import main
from ftl.launcher.errors import FtlError
from ftl.launcher.train.checkpoints import seal
from tests.conftest import (
    CITIES,
    SHARED_DATA,
    TINY_BERT,
    TINY_LLAMA,
    TINY_T5,
    WORDS,
    fails,
    minilm_dir,
    ner_conll,
    sentiment_rows,
    summaries_jsonl,
    write_recipe,
)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())


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
    assert _line_colours(out / "compare.png") == {0, 1}  # a line for each run
    markdown = (out / "compare.md").read_text()
    assert "| train.lr | 0.001 | 0.003 |" in markdown and "| accuracy | 0.8100 | **0.8600** |" in markdown

    assert main(["compare", str(run_folder / "alpha"), str(run_folder / "beta"), "--output", str(out)]) == 0
    assert f"replacing {out / 'compare.png'}" in capsys.readouterr().err  # never overwritten silently


def _line_colours(png: Path) -> set[int]:
    """Which runs (by position) the image draws a line for: pixels of the run's colour, at least 200."""
    from matplotlib import colors
    from matplotlib.image import imread

    from ftl.launcher.use.compare import RUN_COLOURS

    pixels = imread(png)[..., :3].reshape(-1, 3)
    return {
        run
        for run, colour in enumerate(RUN_COLOURS[:4])
        if (np.abs(pixels - np.array(colors.to_rgb(colour))).max(axis=1) < 0.02).sum() >= 200
    }


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
    assert "alpha/model: cannot load the run's tokenizer" in message and "incomplete or damaged" in message


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
    with pytest.raises(FtlError, match=r"ftl generate \(it supports seq2seq, causal_lm runs\)"):
        task.generation_prompt("hi")


# ---- fast: prompts and decoding ---------------------------------------------------------------------
def test_prompts_fill_the_template_by_field():
    from ftl.launcher.recipe.tasks import CausalLMTask
    from ftl.launcher.tasks.causal_lm import CausalLM

    one = CausalLM(
        CausalLMTask(type="causal_lm", prompt_template="Q: {question}\nA:", response_column="answer")
    )
    assert one.generation_prompt("why?") == "Q: why?\nA:"
    assert one.generation_prompt({"question": "how?"}) == "Q: how?\nA:"
    assert one.generation_prompt("plain", raw=True) == "plain"
    two = CausalLM(
        CausalLMTask(type="causal_lm", prompt_template="{title}\n{body}\nTL;DR:", response_column="summary")
    )
    with pytest.raises(FtlError, match=r"has the fields title, body: give each prompt as a JSON object"):
        two.generation_prompt("text")
    with pytest.raises(FtlError, match=r"no field 'body' of the run's prompt template"):
        two.generation_prompt({"title": "t"})
    plain = CausalLM(CausalLMTask(type="causal_lm"))
    assert plain.generation_prompt("The Count said") == "The Count said"
    assert plain.generation_defaults().keep_end and not one.generation_defaults().keep_end


def test_decoding_options_turn_sampling_on_and_off():
    from ftl.launcher.recipe.tasks import GenerationSettings
    from ftl.launcher.use.generate import Decoding, decoding_settings

    greedy = GenerationSettings()
    assert not decoding_settings(greedy, Decoding()).do_sample
    sampled = decoding_settings(greedy, Decoding(temperature=0.8, max_new_tokens=7))
    assert sampled.do_sample and sampled.temperature == 0.8 and sampled.max_new_tokens == 7
    assert decoding_settings(greedy, Decoding(top_p=0.9)).do_sample
    assert not decoding_settings(GenerationSettings(do_sample=True), Decoding(temperature=0)).do_sample
    with pytest.raises(FtlError, match="--temperature 0 means greedy"):
        decoding_settings(greedy, Decoding(temperature=0, top_k=5))


def test_prompt_files(tmp_path):
    from ftl.launcher.use.generate import read_prompts

    (tmp_path / "p.txt").write_text("first prompt\n\nsecond prompt\n")
    assert read_prompts(tmp_path / "p.txt") == ["first prompt", "second prompt"]
    (tmp_path / "p.jsonl").write_text('"a text"\n{"document": "fields"}\n')
    assert read_prompts(tmp_path / "p.jsonl") == ["a text", {"document": "fields"}]
    (tmp_path / "p.tsv").write_text("document\tother\nx y\t1\n")
    assert read_prompts(tmp_path / "p.tsv") == [{"document": "x y", "other": 1}]
    (tmp_path / "bad.jsonl").write_text('"ok"\n{broken\n')
    with pytest.raises(FtlError, match=r"bad.jsonl:2: not valid JSON"):
        read_prompts(tmp_path / "bad.jsonl")


# ---- fast: token classification windows -------------------------------------------------------------
def test_word_windows_cover_every_word_and_overlap():
    from ftl.launcher.tasks.ner_prediction import word_windows

    counts = [1, 2, 1, 3, 1, 1, 2, 1, 1, 1, 4, 1]
    windows = word_windows(counts, budget=6, overlap=2)
    assert windows[0][0] == 0 and windows[-1][1] == len(counts)
    for (a, b), (c, d) in zip(windows, windows[1:], strict=False):
        assert a < c <= b <= d  # each window moves on, sharing words with the one before where they fit
    assert sum(c < b for (_, b), (c, _) in zip(windows, windows[1:], strict=False)) >= 2
    for a, b in windows:
        assert sum(counts[a:b]) <= 6 or b - a == 1
    assert word_windows([9], budget=4, overlap=1) == [(0, 1)]  # a word longer than a window is still a window


def test_long_text_is_tagged_in_windows_without_losing_a_word(tmp_path):
    """Made-up logits that say each word's index: every word of a text 4x longer than max_length is tagged,
    from the window where it has the most context, and entities keep their character offsets."""
    from ftl.launcher.data.sources import load_file
    from ftl.launcher.recipe.tasks import TokenClassificationTask
    from ftl.launcher.tasks.token_classification import TokenClassification

    names = ["O", "B-per", "I-per"]
    task = TokenClassification(
        TokenClassificationTask(type="token_classification", labels=names, max_length=16)
    )
    rng = random.Random(0)
    words = [rng.choice(WORDS + CITIES) for _ in range(60)]
    text = "  ".join(words)  # double spaces: offsets are the text's own
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": text}) + "\n" + json.dumps({"text": " "}) + "\n")
    raw = load_file(tmp_path / "in.jsonl", "--data")
    inputs = task.encode_for_prediction(raw, tokenizer())
    assert (
        len(inputs.features) > 4
        and set(inputs.feature_rows) == {0}
        and inputs.skipped == {1: "no words in 'text'"}
    )
    assert inputs.notes and "overlapping windows" in inputs.notes[0]
    expected = ["B-per" if i % 5 == 0 else ("I-per" if i % 5 == 1 else "O") for i in range(len(words))]
    outputs = []
    for feature, positions in zip(inputs.features, inputs.state["firsts"], strict=True):
        logits = np.zeros((len(feature["input_ids"]), 3))
        for position, word in positions:
            logits[position, names.index(expected[word])] = 5.0
        outputs.append((logits,))
    rows = task.predictions_to_rows(inputs, outputs, None)
    assert rows[0]["predicted_tags"] == expected and rows[0]["words"] == words
    entities = rows[0]["entities"]
    assert len(entities) == 12 and all(e["type"] == "per" for e in entities)
    for entity in entities:
        assert entity["text"] == text[entity["char_start"] : entity["char_end"]]
        assert entity["text"].split() == words[entity["start"] : entity["end"]]
    assert rows[1]["predicted_tags"] is None


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
    assert _line_colours(out / "compare.png") == {0, 1}
