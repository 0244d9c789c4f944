"""Staged recipes (task-adaptive pretraining: masked LM, then the classifier from its weights), masked-LM
evaluation masks, class weights and oversampling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ftl.launcher.cli import main
from ftl.launcher.errors import FtlError
from ftl.launcher.recipe import load_recipe
from tests.conftest import TINY_BERT, minilm_dir, sentiment_rows, write_tsv


def _staged(tmp_path: Path, **changes) -> Path:
    write_tsv(tmp_path / "train.tsv", sentiment_rows(200, seed=4))
    recipe = {
        "name": "tapt",
        "seed": 5,
        "model": {"config": TINY_BERT, "tokenizer": minilm_dir()},
        "data": {"train": "train.tsv", "validation_split": {"fraction": 0.2}},
        "log": {"progress": False, "tensorboard": False},
        "stages": [
            {
                "name": "mlm",
                "task": {"type": "masked_lm", "text_column": "sentence", "max_length": 16},
                "train": {"max_steps": 6, "batch_size": 8, "lr": 1e-3},
                "eval": {"every_steps": 6},
            },
            {
                "name": "classify",
                "task": {
                    "type": "sequence_classification",
                    "text_column": "sentence",
                    "labels": ["negative", "positive"],
                    "max_length": 16,
                },
                "freeze": {"head_only": True},
                "train": {"max_steps": 6, "batch_size": 8, "lr": 1e-2},
                "eval": {"every_steps": 6},
            },
        ],
        **changes,
    }
    path = tmp_path / "tapt.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.mark.slow
def test_the_classifier_stage_starts_from_the_masked_lm_stage_encoder(tmp_path, capsys):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    assert main(["run", str(_staged(tmp_path)), "--output", str(out)]) == 0
    mlm = load_file(str(out / "mlm" / "model" / "model.safetensors"))
    classifier = load_file(str(out / "classify" / "model" / "model.safetensors"))
    encoder = [
        name for name in classifier if name.startswith("bert.encoder.") or name.startswith("bert.embeddings.")
    ]
    assert len(encoder) > 10
    for name in encoder:  # the classifier trained only its head: its encoder is stage one's, exactly
        assert classifier[name].equal(mlm[name]), name
    stage_recipe = yaml.safe_load((out / "classify" / "recipe.resolved.yaml").read_text())
    assert stage_recipe["model"]["name_or_path"] == str((out / "mlm" / "model").resolve())
    assert (
        stage_recipe["name"] == "tapt-classify" and stage_recipe["task"]["type"] == "sequence_classification"
    )
    stages = json.loads((out / "stages.json").read_text())["stages"]
    assert [s["stage"] for s in stages] == ["mlm", "classify"]
    assert "eval_perplexity" in stages[0]["metrics"] and "eval_accuracy" in stages[1]["metrics"]
    assert json.loads((out / "metrics.json").read_text()) == stages[1]["metrics"]
    finished = (out / "mlm" / "metrics.json").stat().st_mtime_ns
    assert main(["run", str(_staged(tmp_path)), "--output", str(out), "--resume"]) == 0
    assert (out / "mlm" / "metrics.json").stat().st_mtime_ns == finished  # finished stages are kept
    changed = yaml.safe_load(_staged(tmp_path).read_text())
    changed["stages"][0]["train"]["lr"] = 0.5  # a finished stage's recipe changed: not kept as if it had not
    (tmp_path / "tapt.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    capsys.readouterr()
    assert main(["run", str(tmp_path / "tapt.yaml"), "--output", str(out), "--resume"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--resume: the recipe differs from" in err and "recipe.resolved.yaml at train.lr" in err
    assert (out / "mlm" / "metrics.json").stat().st_mtime_ns == finished


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"trian": {"lr": 1}}, r"unknown key 'trian' in stages\[0\] \(did you mean 'train'\?\)"),
        (
            {"init_from": "mlmm"},
            r"stages\[1\].init_from: 'mlmm' is not previous, base or an earlier stage \(did you mean 'mlm'\?\)",
        ),
        ({"name": "mlm"}, r"stages\[1\].name: 'mlm' is already a stage"),
        (
            {"task": {"type": "sequence_classification", "text_column": "sentence", "labls": []}},
            r"unknown key 'labls' in task",
        ),
        (
            {"train": {"lr": -1}},
            r"tapt.yaml:\d+: stages\[1\] \(classify\): train.lr: Input should be greater than 0",
        ),
        (
            {"model": {"tokenizer": "other"}},
            r"tapt.yaml:\d+: stages\[1\].model.tokenizer: this stage starts from stage 'mlm''s model "
            r"\(init_from: previous\), so it would be ignored; set stages\[1\].init_from: base",
        ),
        (
            {"init_from": "mlm", "model": {"config": {"model_type": "bert", "hidden_size": 64}}},
            r"stages\[1\].model.config: this stage starts from stage 'mlm''s model \(init_from: mlm\)",
        ),
    ],
)
def test_stage_mistakes_are_one_line_naming_the_stage_key(tmp_path, change, message):
    path = _staged(tmp_path)
    recipe = yaml.safe_load(path.read_text())
    index = 0 if "trian" in change else 1
    recipe["stages"][index].update(change)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    with pytest.raises(FtlError, match=message):
        load_recipe(path)


def test_a_stage_cannot_start_from_a_stage_that_trains_lora_adapters(tmp_path):
    path = _staged(tmp_path)
    recipe = yaml.safe_load(path.read_text())
    recipe["stages"][0]["lora"] = {"r": 4, "target_modules": ["query", "value"]}
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    with pytest.raises(
        FtlError, match=r"stages\[1\].init_from: stage 'mlm' trains LoRA adapters, not a whole"
    ):
        load_recipe(path)  # ftl check says it, not the run after training the first stage
    recipe["stages"][1]["init_from"] = "base"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    assert len(load_recipe(path).stages) == 2


def test_a_stage_without_a_task_needs_the_recipe_task(tmp_path):
    path = _staged(tmp_path)
    recipe = yaml.safe_load(path.read_text())
    del recipe["stages"][0]["task"]
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    with pytest.raises(FtlError, match=r"missing required key 'task'"):
        load_recipe(path)


@pytest.mark.parametrize("whole_words", [False, True])
def test_masked_lm_evaluation_masks_the_same_positions_every_time(whole_words):
    import datasets
    from transformers import AutoTokenizer

    from ftl.launcher.recipe.tasks import MaskedLMTask
    from ftl.launcher.tasks.masked_lm import MaskedLM

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    rows = datasets.Dataset.from_dict({"text": [text for text, _ in sentiment_rows(200, seed=2)]})
    task = MaskedLM(MaskedLMTask(type="masked_lm", max_length=32, whole_word_masking=whole_words))
    first = task.tokenize(rows, tokenizer, "validation")
    again = task.tokenize(rows, tokenizer, "validation")
    assert first["labels"] == again["labels"] and first["input_ids"] == again["input_ids"]
    masked = sum(label != -100 for row in first["labels"] for label in row)
    total = sum(len(row) for row in first["labels"])
    assert 0.08 < masked / total < 0.25, masked / total
    train = task.tokenize(rows, tokenizer, "train")
    assert "labels" not in train.column_names  # training rows are masked afresh in every batch


def test_balanced_class_weights_and_oversampling_by_hand():
    import datasets

    from ftl.launcher.data.splits import oversample
    from ftl.launcher.train.losses import class_weights

    labels = [0] * 6 + [1] * 2 + [2] * 4
    assert class_weights("balanced", labels, ["a", "b", "c"]) == pytest.approx([12 / 18, 12 / 6, 12 / 12])
    assert class_weights([1, 2, 3], labels, ["a", "b", "c"]) == [1.0, 2.0, 3.0]
    with pytest.raises(FtlError, match="2 weight"):
        class_weights([1, 2], labels, ["a", "b", "c"])
    rows = datasets.Dataset.from_dict({"labels": labels, "i": list(range(12))})
    balanced = oversample(rows, column="labels", seed=0)
    assert sorted(balanced["labels"]).count(1) == 6 and sorted(balanced["labels"]).count(2) == 6
    assert balanced["i"][:12] == list(range(12))  # every original row stays


def test_weighted_loss_matches_a_hand_computation():
    import torch

    from ftl.launcher.train.losses import weighted_cross_entropy

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, -100])
    loss = weighted_cross_entropy([1.0, 3.0])({"logits": logits}, labels)
    nll = -torch.log_softmax(logits, -1)
    expected = (1.0 * nll[0, 0] + 3.0 * nll[1, 1]) / (1.0 + 3.0)
    assert loss.item() == pytest.approx(expected.item())


def test_a_stale_build_lock_is_removed_and_a_fresh_one_kept(tmp_path, monkeypatch):
    import os
    import time

    from ftl.launcher.distributed.extensions import STALE_AFTER_S, remove_stale_locks

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    old, fresh = tmp_path / "op_a", tmp_path / "op_b"
    for folder in (old, fresh):
        folder.mkdir()
        (folder / "lock").touch()
        (folder / "build.ninja").touch()
    past = time.time() - STALE_AFTER_S - 60
    for path in old.iterdir():
        os.utime(path, (past, past))
    assert remove_stale_locks(log=lambda message: None) == [old / "lock"]
    assert (fresh / "lock").exists()
