"""Examples packing without cross-contamination (data/packing.py, task.packing, model.attn_implementation).

The proof: the per-example losses of a packed batch equal those of the same examples run alone (1e-5, fp32),
with SDPA and eager attention, through the collator the Trainer uses; and the same batch without what keeps
the examples apart (position ids) does not, so the test can fail.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import yaml

from ftl.launcher.data.packing import (
    IGNORE_INDEX,
    PackedCollator,
    first_fit_decreasing,
    pack_examples,
    pack_rows,
)
from ftl.launcher.errors import FtlError
from ftl.launcher.recipe.loader import load_recipe
from tests.conftest import FILLER, POSITIVE, TINY_LLAMA, minilm_dir


def _examples(count: int, seed: int, vocab: int = 200, prompt_masks: bool = True) -> list[dict]:
    """Examples of 3..20 tokens; some have a masked prompt (labels -100 over their first tokens)."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        ids = [rng.randrange(1, vocab) for _ in range(rng.randint(3, 20))]
        labels = list(ids)
        if prompt_masks and i % 2:
            cut = rng.randint(1, len(ids) - 1)
            labels[:cut] = [IGNORE_INDEX] * cut
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def _columns(rows: list[dict]) -> dict[str, list]:
    return {key: [r[key] for r in rows] for key in rows[0]}


def _tiny_llama(attn: str):
    from transformers import AutoModelForCausalLM, LlamaConfig

    settings = {k: v for k, v in TINY_LLAMA.items() if k != "model_type"}
    torch.manual_seed(0)
    config = LlamaConfig(**settings, vocab_size=200)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.float32).eval()


def _loss_alone(model, example: dict) -> tuple[float, int]:
    """(summed loss, counted tokens) of one example in a batch of its own, HF's own shifted loss."""
    labels = torch.tensor([example["labels"]])
    counted = int((labels[0, 1:] != IGNORE_INDEX).sum())
    with torch.no_grad():
        loss = model(input_ids=torch.tensor([example["input_ids"]]), labels=labels).loss
    return float(loss) * counted, counted


def _per_example_losses(logits: torch.Tensor, batch: dict) -> list[float]:
    """Mean loss of each packed example, read from a packed batch's logits (positions restart at 0)."""
    losses = []
    for row in range(logits.shape[0]):
        positions = batch["position_ids"][row].tolist()
        labels = batch["labels"][row]
        starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
        for a, b in zip(starts, starts[1:], strict=False):
            targets = labels[a + 1 : b]
            if (targets != IGNORE_INDEX).sum() == 0:
                continue  # padding, or an example with nothing to learn
            losses.append(
                float(
                    torch.nn.functional.cross_entropy(
                        logits[row, a : b - 1], targets, ignore_index=IGNORE_INDEX
                    )
                )
            )
    return losses


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_losses_equal_the_losses_of_the_examples_alone(attn):
    model = _tiny_llama(attn)
    examples = _examples(24, seed=1)
    packed = pack_rows(_columns(examples), max_length=48)
    rows = [dict(zip(packed, values, strict=True)) for values in zip(*packed.values(), strict=True)]
    assert max(r["examples"] for r in rows) >= 3  # several examples share a row
    batch = PackedCollator(pad_token_id=0)(rows)
    assert "attention_mask" not in batch and batch["use_cache"] is False

    with torch.no_grad():
        output = model(**batch)
    # the order of examples in the packed rows: read it back from the rows' tokens
    order = []
    for row in rows:
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["position_ids"])]
        for a, b in zip(starts, starts[1:], strict=False):
            order.append(next(e for e in examples if e["input_ids"] == row["input_ids"][a:b]))
    alone = [_loss_alone(model, e) for e in order]
    expected = [total / count for total, count in alone if count]
    assert _per_example_losses(output.logits, batch) == pytest.approx(expected, abs=1e-5)
    # the loss the Trainer steps on: every counted token of every example, nothing across a boundary
    total = sum(t for t, _ in alone) / sum(c for _, c in alone)
    assert float(output.loss) == pytest.approx(total, abs=1e-5)

    # the control: the same rows without restarting positions let examples see each other
    mixed = {k: v for k, v in batch.items() if k != "position_ids"}
    with torch.no_grad():
        leaked = _per_example_losses(model(**mixed).logits, batch)
    assert max(abs(a - b) for a, b in zip(leaked, expected, strict=True)) > 1e-3


def test_a_kv_cache_would_let_examples_attend_to_each_other():
    """Why the collator says use_cache=False: with a cache transformers does not look for packed sequences."""
    model = _tiny_llama("sdpa")
    packed = pack_rows(_columns(_examples(6, seed=2)), max_length=64)
    rows = [dict(zip(packed, values, strict=True)) for values in zip(*packed.values(), strict=True)]
    batch = PackedCollator(pad_token_id=0)(rows)
    with torch.no_grad():
        safe = model(**batch).logits
        cached = model(**{**batch, "use_cache": True}).logits
    assert not torch.allclose(safe, cached, atol=1e-4)


def test_labels_never_cross_an_example_boundary():
    examples = _examples(50, seed=3)
    packed = pack_rows(_columns(examples), max_length=40)
    for ids, labels, positions in zip(
        packed["input_ids"], packed["labels"], packed["position_ids"], strict=True
    ):
        assert len(ids) == len(labels) == len(positions)
        for t, p in enumerate(positions):
            if (
                p == 0
            ):  # an example's first token is never a target (of the token before it, another example's)
                assert labels[t] == IGNORE_INDEX
            else:
                assert labels[t] in (ids[t], IGNORE_INDEX)


def test_the_packer_never_splits_an_example_nor_exceeds_max_length():
    examples = _examples(300, seed=4, prompt_masks=False)
    packed = pack_rows(_columns(examples), max_length=32)
    assert max(packed["length"]) <= 32
    pieces = []
    for ids, positions in zip(packed["input_ids"], packed["position_ids"], strict=True):
        starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
        pieces += [tuple(ids[a:b]) for a, b in zip(starts, starts[1:], strict=False)]
    assert sorted(pieces) == sorted(tuple(e["input_ids"]) for e in examples)  # each whole, each once
    assert sum(packed["examples"]) == len(examples)
    # first-fit decreasing fills rows: at most one row is less than half full
    assert sum(n <= 16 for n in packed["length"]) <= 1
    assert first_fit_decreasing([5, 3, 4, 2, 6], 8) == [[4, 3], [0, 1], [2]]  # 6+2, 5+3, 4


def test_the_packer_refuses_an_example_longer_than_a_row_and_padded_examples():
    with pytest.raises(ValueError, match="does not fit"):
        first_fit_decreasing([3, 9], 8)
    with pytest.raises(ValueError, match="padded"):
        pack_rows({"input_ids": [[1, 2, 0]], "labels": [[1, 2, -100]], "attention_mask": [[1, 1, 0]]}, 8)


def test_pack_examples_works_on_any_tokenised_dataset():
    """A task's own rows (input_ids, labels, attention_mask, length, anything else) pack the same way."""
    from datasets import Dataset

    rows = _examples(10, seed=5)
    rows = [
        {**r, "attention_mask": [1] * len(r["input_ids"]), "length": len(r["input_ids"]), "id": i}
        for i, r in enumerate(rows)
    ]
    packed = pack_examples(Dataset.from_list(rows), max_length=30)
    assert set(packed.column_names) == {"input_ids", "labels", "position_ids", "length", "examples"}
    assert sum(packed["examples"]) == 10


def test_padding_of_a_packed_batch_is_a_block_of_its_own():
    rows = pack_rows(
        {
            "input_ids": [[5, 6, 7], [8, 9], [1, 2, 3, 4, 5, 6]],
            "labels": [[5, 6, 7], [8, 9], [1, 2, 3, 4, 5, 6]],
        },
        6,
    )
    batch = PackedCollator(pad_token_id=0)(
        [dict(zip(rows, v, strict=True)) for v in zip(*rows.values(), strict=True)]
    )
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 0, 1, 0]]
    assert batch["labels"].tolist()[1] == [-100, 6, 7, -100, 9, -100]
    assert batch["cu_seq_lens_q"].tolist() == [0, 6, 9, 11, 12] and batch["max_length_q"] == 6


# --- the recipe -----------------------------------------------------------------------------------


def _recipe(tmp_path: Path, task: dict, model: dict | None = None, **sections) -> Path:
    rng = random.Random(7)
    docs = [" ".join(rng.choice(FILLER + POSITIVE) for _ in range(rng.randint(4, 30))) for _ in range(160)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    recipe = {
        "name": "packed",
        "seed": 3,
        "model": model or {"config": TINY_LLAMA, "tokenizer": minilm_dir()},
        "task": {"type": "causal_lm", "max_length": 64, **task},
        "data": {"train": "docs.jsonl", "validation_split": {"fraction": 0.1, "method": "tail"}},
        "train": {"max_steps": 6, "batch_size": 4, "lr": 3e-3},
        "eval": {"before_training": True},
        "log": {"progress": False, "tensorboard": False},
        **sections,
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("packing", "mode"),
    [(None, "examples"), (True, "examples"), ("examples", "examples"), ("stream", "stream"), (False, None)],
)
def test_packing_setting_and_its_safe_default(tmp_path, packing, mode):
    task = {} if packing is None else {"packing": packing}
    assert load_recipe(_recipe(tmp_path, task)).recipe.task.packing_mode == mode


def test_examples_packing_is_the_default_and_keeps_documents_whole(tmp_path):
    from ftl.launcher.data.prepare import prepare_data
    from ftl.launcher.model.load import load_tokenizer
    from ftl.launcher.tasks.registry import task_for

    loaded = load_recipe(_recipe(tmp_path, {}))
    task = task_for(loaded.recipe.task)
    tokenizer = load_tokenizer(loaded.recipe.model, loaded.search_dirs)
    data = prepare_data(loaded.recipe.data, task, dirs=loaded.search_dirs, tokenizer=tokenizer)
    assert sum(data.train["examples"]) + sum(data.validation["examples"]) == 160  # every document, whole
    assert max(data.train["length"]) <= 64 and len(data.train) < 144 / 2
    for ids, positions in zip(data.train["input_ids"], data.train["position_ids"], strict=True):
        ends = [i - 1 for i, p in enumerate(positions) if p == 0][1:] + [len(ids) - 1]
        # add_eos: each document ends with eos (this BERT tokenizer has none: its [SEP] closes each document)
        assert all(ids[i] in (tokenizer.eos_token_id, tokenizer.sep_token_id) for i in ends)


def test_stream_packing_with_a_prompt_template_is_refused(tmp_path):
    with pytest.raises(FtlError, match="stream cuts prompts"):
        load_recipe(
            _recipe(
                tmp_path, {"packing": "stream", "prompt_template": "Q: {text}", "response_column": "text"}
            )
        )


def test_a_model_that_ignores_position_ids_is_refused_before_training(tmp_path):
    bloom = {
        "config": {"model_type": "bloom", "hidden_size": 32, "n_layer": 2, "n_head": 2},
        "tokenizer": minilm_dir(),
    }
    with pytest.raises(FtlError, match="ignore restarting position ids"):
        load_recipe(_recipe(tmp_path, {"packing": "examples"}, model=bloom))
    assert load_recipe(_recipe(tmp_path, {"packing": False}, model=bloom))


LEAKY = {  # transformers 5.25 models that let packed examples attend to each other
    "bloom": {"hidden_size": 32, "n_layer": 2, "n_head": 2},  # ALiBi: no position ids
    "opt": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "ffn_dim": 64,
        "word_embed_proj_dim": 32,
    },
}
HONEST = {
    "gpt2": {"n_embd": 32, "n_layer": 2, "n_head": 2},
    "qwen2": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "intermediate_size": 64,
    },
}


@pytest.mark.parametrize("model_type", [*LEAKY, *HONEST, "llama"])
def test_the_model_probe_catches_an_attention_that_mixes_packed_examples(model_type):
    from transformers import AutoConfig, AutoModelForCausalLM

    from ftl.launcher.model.attention import require_packed_attention

    if model_type == "llama":
        model = _tiny_llama("eager")
    else:
        torch.manual_seed(0)
        config = AutoConfig.for_model(model_type, vocab_size=200, **{**LEAKY, **HONEST}[model_type])
        model = AutoModelForCausalLM.from_config(config)
    if model_type in LEAKY:
        with pytest.raises(FtlError, match="task.packing: .*attend to each other"):
            require_packed_attention(model, "task.packing")
    else:
        require_packed_attention(model, "task.packing")  # honours the restarting positions: no error


def test_attn_implementation_is_validated_and_reaches_the_model(tmp_path):
    path = _recipe(
        tmp_path,
        {},
        model={"config": TINY_LLAMA, "tokenizer": minilm_dir(), "attn_implementation": "flash_attention_2"},
        train={"device": "cpu", "max_steps": 1},
    )
    with pytest.raises(FtlError, match="flash_attention_2 runs on a CUDA GPU only"):
        load_recipe(path)
    with pytest.raises(FtlError, match="attn_implementation"):
        load_recipe(
            _recipe(
                tmp_path,
                {},
                model={"config": TINY_LLAMA, "tokenizer": minilm_dir(), "attn_implementation": "flash"},
            )
        )

    from ftl.launcher.model.attention import attention_kwargs

    loaded = load_recipe(
        _recipe(
            tmp_path,
            {},
            model={"config": TINY_LLAMA, "tokenizer": minilm_dir(), "attn_implementation": "eager"},
        )
    )
    assert attention_kwargs(loaded.recipe.model) == {"attn_implementation": "eager"}
    assert attention_kwargs(loaded.recipe.model, meta=True) == {}


@pytest.mark.slow
@pytest.mark.parametrize(("attn", "lora"), [("sdpa", False), ("eager", False), ("sdpa", True)])
def test_a_packed_run_trains_and_evaluates(tmp_path, attn, lora, capsys):
    from ftl.launcher.cli import main

    model = {"config": TINY_LLAMA, "tokenizer": minilm_dir(), "attn_implementation": attn}
    extra = {"lora": {"r": 4}} if lora else {}  # the probe and the packed batches go through peft's wrapper
    out = tmp_path / "run"
    recipe = _recipe(tmp_path, {"packing": "examples"}, model=model, **extra)
    assert main(["run", str(recipe), "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_perplexity"] < metrics["before"]["eval_perplexity"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert "examples" in json.dumps(manifest)
    capsys.readouterr()
    assert main(["eval", str(out), "--data", str(out / "validation.jsonl")]) == 0  # packed the same way again
    assert json.loads(capsys.readouterr().out)["eval_perplexity"] == pytest.approx(
        metrics["eval_perplexity"], rel=1e-5
    )


def test_the_step_timer_counts_the_examples_of_packed_rows_not_their_padding(tmp_path):
    from ftl.launcher.bench.timer import _packed_example_lengths

    rows = pack_rows(
        {
            "input_ids": [[5, 6, 7], [8, 9], [1, 2, 3, 4, 5, 6]],
            "labels": [[5, 6, 7], [8, 9], [1, 2, 3, 4, 5, 6]],
        },
        6,
    )
    batch = PackedCollator(pad_token_id=0)(
        [dict(zip(rows, v, strict=True)) for v in zip(*rows.values(), strict=True)]
    )
    lengths = _packed_example_lengths(batch["input_ids"], batch["position_ids"], batch["labels"])
    assert sorted(lengths.tolist()) == [2, 3, 6]  # the padding block of the second row is left out


def test_instruction_rows_pack_as_whole_examples_by_default(tmp_path):
    from ftl.launcher.data.prepare import prepare_data
    from ftl.launcher.model.load import load_tokenizer
    from ftl.launcher.tasks.registry import task_for

    rows = [{"q": f"question {i} " + "word " * (i % 7), "a": f"answer {i}"} for i in range(60)]
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = _recipe(tmp_path, {"prompt_template": "Q: {q}\nA:", "response_column": "a"})
    recipe = yaml.safe_load(path.read_text())
    recipe["data"]["train"] = "sft.jsonl"
    path.write_text(yaml.safe_dump(recipe))
    loaded = load_recipe(path)
    assert loaded.recipe.task.packing_mode == "examples"
    task = task_for(loaded.recipe.task)
    tokenizer = load_tokenizer(loaded.recipe.model, loaded.search_dirs)
    data = prepare_data(loaded.recipe.data, task, dirs=loaded.search_dirs, tokenizer=tokenizer)
    assert sum(data.train["examples"]) + sum(data.validation["examples"]) == 60
    answer = tokenizer("answer", add_special_tokens=False)["input_ids"][0]
    for ids, labels, positions in zip(
        data.train["input_ids"], data.train["labels"], data.train["position_ids"], strict=True
    ):
        trained = [ids[t] for t in range(len(ids)) if labels[t] != IGNORE_INDEX]
        assert trained.count(answer) == positions.count(
            0
        )  # each example's answer is trained, its prompt is not
