"""FLOP and MFU arithmetic against hand-computed values; the GPU peak table; ftl plan uses the same counting."""

from __future__ import annotations

import pytest

from ftl.launcher.bench.peak import gpu_peak, matmul_dtype
from ftl.launcher.flops import FlopCounts, flop_counts, mfu, model_flops, trainable_flops, uniform_sequences
from ftl.launcher.model.load import ModelSpec, load_tokenizer
from ftl.launcher.model.meta import meta_model
from ftl.launcher.recipe import load_recipe
from ftl.launcher.tasks.registry import task_for

# Tiny BERT of conftest (hidden 32, 2 layers, 2 heads, intermediate 64) for sequence classification, by hand:
#   per layer: query, key, value, attention output 4 x (32*32 + 32) = 4224, two LayerNorms 2 x 64 = 128,
#              intermediate 32*64 + 64 = 2112, output 64*32 + 32 = 2080                      -> 8544
#   embeddings LayerNorm 64 (the word, position and token-type tables are lookups: no FLOPs)
#   pooler 32*32 + 32 = 1056, classifier 32*2 + 2 = 66
BERT_LAYER = 4 * (32 * 32 + 32) + 2 * 64 + (32 * 64 + 64) + (64 * 32 + 32)
BERT_N = 2 * BERT_LAYER + 64 + 1056 + 66
# Tiny Llama of conftest (hidden 32, 2 layers, 2 heads of 16, SwiGLU 64, vocab 30522 from the MiniLM tokenizer),
# embeddings tied to the LM head: the tied matrix counts once, as the output projection.
#   per layer: q, k, v, o 4 x 32*32 = 4096, gate, up, down 3 x 32*64 = 6144, two RMSNorms 2 x 32 = 64 -> 10304
LLAMA_LAYER = 4 * 32 * 32 + 3 * 32 * 64 + 2 * 32
LLAMA_HEAD = 30522 * 32
LLAMA_N = 2 * LLAMA_LAYER + 32 + LLAMA_HEAD


def _counts(recipe_path, *overrides) -> FlopCounts:
    loaded = load_recipe(recipe_path, list(overrides))
    task = task_for(loaded.recipe.task)
    return flop_counts(
        meta_model(
            ModelSpec.of(loaded.recipe, loaded.search_dirs),
            loaded.recipe.freeze,
            task,
            load_tokenizer(loaded.recipe.model, loaded.search_dirs),
        ).model
    )


def test_hand_counted_bert_parameters_and_flops(classification_recipe):
    assert (BERT_LAYER, BERT_N) == (8544, 18274)
    full = _counts(classification_recipe)
    assert full == FlopCounts(
        dense=18274,
        dense_trainable=18274,
        dense_backward=18274,
        layers=2,
        backward_layers=2,
        attention_width=32,
    )
    # one sequence of 10 real tokens: 6N per token + 12*L*H*Q per token per context token
    tokens, squares = 10, 10 * 10
    assert model_flops(full, tokens, squares) == 6 * 18274 * 10 + 12 * 2 * 32 * 100 == 1_173_240
    # everything trainable: the trainable-aware count is the 6N count
    assert trainable_flops(full, tokens, squares) == 1_173_240

    frozen = _counts(classification_recipe, "freeze.bottom_layers=1", "freeze.embeddings=true")
    # trainable: layer 1, pooler, classifier; backpropagation reaches layer 1 and what is above it
    assert frozen == FlopCounts(
        dense=18274,
        dense_trainable=9666,
        dense_backward=9666,
        layers=2,
        backward_layers=1,
        attention_width=32,
    )
    # 2N forward + 2*N_bw activation gradients + 2*N_t weight gradients; attention 4*L forward + 8*L_bw backward
    assert (
        trainable_flops(frozen, tokens, squares)
        == (2 * 18274 + 2 * 9666 + 2 * 9666) * 10 + (4 * 2 + 8 * 1) * 32 * 100
    )
    assert trainable_flops(frozen, tokens, squares) == 803_320
    assert model_flops(frozen, tokens, squares) == 1_173_240  # the 6N convention ignores freezing

    head_only = _counts(classification_recipe, "freeze.head_only=true")
    assert head_only.backward_layers == 0 and head_only.dense_trainable < 1200
    assert trainable_flops(head_only, 1, 1) < 2.2 * head_only.dense


def test_tied_embeddings_count_once_as_the_output_projection(lm_recipe):
    full = _counts(lm_recipe)
    assert full.dense == LLAMA_N == 997_344
    assert (full.layers, full.attention_width) == (2, 2 * 16)
    frozen = _counts(lm_recipe, "freeze.bottom_layers=1", "freeze.embeddings=true")
    # trainable: layer 1 and the final norm; the frozen tied head is still backpropagated through
    assert frozen.dense_trainable == LLAMA_LAYER + 32 == 10_336
    assert frozen.dense_backward == LLAMA_LAYER + 32 + LLAMA_HEAD == 987_040
    assert frozen.trainable_dense_per_token == 2 * 997_344 + 2 * 987_040 + 2 * 10_336 == 3_989_440


def test_lora_is_about_four_n_and_the_untouched_head_copy_is_not_counted(classification_recipe):
    lora = _counts(classification_recipe, "lora={r: 2, target_modules: [query, value]}")
    adapters = 2 * 2 * 2 * (32 + 32)  # layers x modules x r x (in + out)
    assert lora.dense == BERT_N + adapters  # peft's original_module copy of the classifier is left out
    assert lora.backward_layers == 2
    assert 4 * lora.dense <= lora.trainable_dense_per_token <= 4.1 * lora.dense


def test_mfu_by_hand():
    counts = FlopCounts(
        dense=10**9,
        dense_trainable=10**9,
        dense_backward=10**9,
        layers=0,
        backward_layers=0,
        attention_width=0,
    )
    flops = model_flops(counts, 1_000_000, 0)  # 6e15 FLOPs in 30 s = 2e14 FLOP/s
    a100 = gpu_peak("NVIDIA A100-SXM4-80GB", "bf16").flops
    assert mfu(flops, 30.0, a100, 8) == pytest.approx(2e14 / (312e12 * 8))  # 0.0801
    assert mfu(flops, 30.0, None, 8) is None
    assert uniform_sequences(4, 128) == (512, 4 * 128 * 128)


@pytest.mark.parametrize(
    ("name", "dtype", "tflops"),
    [
        ("NVIDIA A100-SXM4-80GB", "bf16", 312.0),
        ("NVIDIA A100-PCIE-40GB", "fp32", 19.5),
        ("NVIDIA H100 80GB HBM3", "bf16", 989.5),
        ("NVIDIA H100 PCIe", "bf16", 756.5),
        ("NVIDIA H100 NVL", "tf32", 417.5),
        ("NVIDIA H200", "bf16", 989.5),
        ("NVIDIA L4", "bf16", 121.0),
        ("NVIDIA L40S", "bf16", 362.05),
        ("NVIDIA L40", "fp32", 90.5),
        ("NVIDIA A10G", "bf16", 125.0),
        ("Tesla T4", "fp16", 65.0),
        ("Tesla V100-SXM2-16GB", "fp16", 125.0),
        ("NVIDIA GeForce RTX 4090", "bf16", 165.2),
        ("Tesla T4", "bf16", None),
        ("Some Future GPU", "bf16", None),
    ],
)
def test_gpu_peak_table(name, dtype, tflops):
    assert gpu_peak(name, dtype).tflops == tflops


def test_fp32_uses_the_tf32_peak_only_when_pytorch_may_use_tf32():
    assert matmul_dtype("fp32", "cuda", allow_tf32=False) == "fp32"
    assert matmul_dtype("fp32", "cuda", allow_tf32=True) == "tf32"
    assert matmul_dtype("bf16", "cuda", allow_tf32=True) == "bf16"
    assert matmul_dtype("fp32", "cpu", allow_tf32=True) == "fp32"


def test_plan_flops_per_step_use_the_same_counting(lm_recipe):
    from ftl.launcher.plan import plan_memory, shape_of

    overrides = ["train.grad_accum_steps=2", "distributed.workers=2", "freeze.bottom_layers=1"]
    loaded = load_recipe(lm_recipe, overrides)
    model = meta_model(
        ModelSpec.of(loaded.recipe, loaded.search_dirs),
        loaded.recipe.freeze,
        task_for(loaded.recipe.task),
        load_tokenizer(loaded.recipe.model, loaded.search_dirs),
    ).model
    plan = plan_memory(shape_of(model, loaded.recipe), loaded.recipe)
    sequences, length = 8 * 2 * 2, 32  # batch x accumulation x workers, task.max_length
    counts = flop_counts(model)
    assert plan.tokens_per_step == sequences * length
    assert plan.flops_per_step == model_flops(counts, sequences * length, sequences * length * length)
    assert plan.flops_per_step_trainable == trainable_flops(counts, sequences * length, sequences * length**2)
