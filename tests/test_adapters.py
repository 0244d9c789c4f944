"""LoRA and QLoRA (bitsandbytes 4-bit on CPU) on tiny models, and the merged export."""

from __future__ import annotations

import json

import pytest

from ftl.launcher.cli import main

pytestmark = pytest.mark.slow


def _losses(run):
    history = json.loads((run / "log_history.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def test_qlora_4bit_tiny_llama_trains_and_the_merged_export_generates(tmp_path, lm_recipe):
    out = tmp_path / "qlora"
    llama = (
        "model.config={model_type: llama, hidden_size: 128, num_hidden_layers: 2, num_attention_heads: 4, "
        "num_key_value_heads: 4, intermediate_size: 256, max_position_embeddings: 256, tie_word_embeddings: true}"
    )
    assert (
        main(
            [
                "run",
                str(lm_recipe),
                llama,
                "quantization={bits: 4, quant_type: nf4, compute_dtype: fp32}",
                "lora={r: 8, alpha: 16, target_modules: [q_proj, v_proj, up_proj, down_proj]}",
                "train.max_steps=30",
                "train.log_every_steps=5",
                "train.lr=1e-2",
                "eval.before_training=false",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    losses = _losses(out)
    assert losses[-1] < losses[0], losses
    assert (out / "model" / "adapter_config.json").exists() and (out / "base_model" / "config.json").exists()

    merged = tmp_path / "merged"
    assert main(["export", str(out), "--merge-lora", "--output", str(merged)]) == 0
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(merged))
    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    assert not any("lora" in name for name, _ in model.named_parameters())
    ids = tokenizer("the film was", return_tensors="pt")["input_ids"]
    half = tmp_path / "merged-bf16"
    assert main(["export", str(out), "--merge-lora", "--dtype", "bf16", "--output", str(half)]) == 0
    import torch

    assert (
        next(AutoModelForCausalLM.from_pretrained(str(half), dtype="auto").parameters()).dtype
        == torch.bfloat16
    )
    assert main(["export", str(out), "--merge-lora", "--output", str(half)]) == 2  # never written over
    generated = model.generate(input_ids=ids, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > 3


def test_lora_classification_evaluates_from_the_adapter(tmp_path, classification_recipe, capsys, monkeypatch):
    """The base model built from model.config is saved in the run; the run reads it from any folder, and after a
    move (the run's output given relative to the working folder, as users do)."""
    import shutil

    monkeypatch.chdir(tmp_path)
    command = ["run", str(classification_recipe), "lora={r: 4, target_modules: [query, value]}"]
    assert main([*command, "--output", "lora"]) == 0
    out = tmp_path / "lora"
    metrics = json.loads((out / "metrics.json").read_text())
    (tmp_path / "elsewhere").mkdir()
    moved = tmp_path / "elsewhere" / "moved"
    shutil.copytree(out, moved)
    monkeypatch.chdir(tmp_path / "elsewhere")
    for run in (out, moved):
        capsys.readouterr()
        assert main(["eval", str(run), "--data", str(out / "validation.jsonl")]) == 0
        assert json.loads(capsys.readouterr().out)["eval_accuracy"] == pytest.approx(metrics["eval_accuracy"])


@pytest.mark.usefixtures("ray_after_module")
def test_qlora_under_zero3_shards_the_4bit_storage_over_two_workers(tmp_path, lm_recipe):
    """bitsandbytes stores the packed 4-bit weights in bf16 (bnb_4bit_quant_storage), so DeepSpeed ZeRO-3
    partitions them like any bf16 tensor: each of two workers keeps half of the storage, and training works.
    (On CPU; on a GPU the same storage is what each rank keeps on its GPU.)"""
    out = tmp_path / "sharded"
    llama = (
        "model.config={model_type: llama, hidden_size: 128, num_hidden_layers: 2, num_attention_heads: 4, "
        "num_key_value_heads: 4, intermediate_size: 256, max_position_embeddings: 256, tie_word_embeddings: true}"
    )
    assert (
        main(
            [
                "run",
                str(lm_recipe),
                llama,
                "quantization={bits: 4, compute_dtype: bf16}",
                "lora={r: 8, target_modules: [q_proj, v_proj]}",
                "train.precision=bf16",
                "distributed.zero_stage=3",
                "distributed.workers=2",
                "train.batch_size=4",
                "train.max_steps=10",
                "train.log_every_steps=5",
                "train.lr=1e-2",
                "eval.before_training=false",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    loaded, trained = manifest["after_loading"], manifest["after_training"]
    assert loaded["storage_elements"] < loaded["parameters"]  # 4 bits per weight, packed into bf16 elements
    assert loaded["held_by_this_process"] == loaded["storage_elements"]  # quantized models load whole ...
    assert 0.45 < trained["held_by_this_process"] / trained["storage_elements"] < 0.55  # ... ZeRO-3 halves it
    assert all(loss == loss for loss in _losses(out))  # finite: no NaN
