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


def test_lora_classification_evaluates_from_the_adapter(tmp_path, classification_recipe, capsys):
    out = tmp_path / "lora"
    assert (
        main(
            [
                "run",
                str(classification_recipe),
                "lora={r: 4, target_modules: [query, value]}",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(out), "--data", str(out / "validation.jsonl")]) == 0
    assert json.loads(capsys.readouterr().out)["eval_accuracy"] == pytest.approx(metrics["eval_accuracy"])
