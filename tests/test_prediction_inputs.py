"""What `ftl predict` and `ftl generate` make of their inputs, without a trained model: prompts filling a
template, decoding options, prompt files, and NER windows over long texts (a real tokenizer, made-up logits)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from ftl.launcher.errors import FtlError
from tests.conftest import (
    CITIES,
    WORDS,
    minilm_dir,
)


def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())


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
