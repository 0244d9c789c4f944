"""Task building blocks: CoNLL/SQuAD readers, group splits, subword alignment, span search, scores, prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftl.launcher.data.readers import read_conll, read_squad
from ftl.launcher.data.splits import carve_validation
from ftl.launcher.errors import FtlError
from tests.conftest import minilm_dir


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())


def test_conll_rows_are_sentences_with_their_first_line(tmp_path):
    path = tmp_path / "a.conll"
    path.write_text("-DOCSTART- O\n\nEU\tB-ORG\nrejects\tO\n\t\nGerman NNP B-NP B-MISC\ncall O O O\n\n\n")
    found = read_conll([path], "data.train")
    assert found.columns == {
        "tokens": [["EU", "rejects"], ["German", "call"]],
        "tags": [["B-ORG", "O"], ["B-MISC", "O"]],
    }
    assert found.starts == [(path, 3), (path, 6)]


def test_conll_ragged_line_names_its_file_and_line(tmp_path):
    path = tmp_path / "a.conll"
    path.write_text("EU\tB-ORG\nrejects\n")
    with pytest.raises(FtlError, match=r"a\.conll:2: expected 'token<TAB>tag'"):
        read_conll([path], "data.train")


def test_conll_with_one_column_holds_tokens_only(tmp_path):
    path = tmp_path / "a.conll"
    path.write_text("Paris\nis\n\nnice\n")
    assert read_conll([path], "data.train").columns == {"tokens": [["Paris", "is"], ["nice"]]}


def _squad(tmp_path: Path, start: int = 0) -> Path:
    document = {
        "data": [
            {
                "title": "Paris",
                "paragraphs": [
                    {
                        "context": "Paris is the capital of France.",
                        "qas": [
                            {
                                "id": "q1",
                                "question": "What is Paris?",
                                "answers": [{"text": "the capital", "answer_start": 9 + start}],
                            },
                            {
                                "id": "q2",
                                "question": "Of what?",
                                "answers": [{"text": "France", "answer_start": 24}],
                            },
                        ],
                    }
                ],
            }
        ]
    }
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(document))
    return path


def test_squad_json_flattens_to_one_row_per_question(tmp_path):
    found = read_squad([_squad(tmp_path)], "data.train").columns
    assert found["id"] == ["q1", "q2"] and found["title"] == ["Paris", "Paris"]
    assert found["answers"][0] == {"text": ["the capital"], "answer_start": [9]}


def test_squad_answer_at_the_wrong_offset_is_an_error(tmp_path):
    with pytest.raises(FtlError, match=r"answer 'the capital' is not at answer_start 10"):
        read_squad([_squad(tmp_path, start=1)], "data.train")


def test_group_split_keeps_every_group_on_one_side():
    import datasets

    titles = [f"article-{i % 12}" for i in range(600)]
    rows = datasets.Dataset.from_dict({"title": titles, "x": list(range(600))})
    train, validation = carve_validation(
        rows, method="group", fraction=0.2, seed=3, stratify_column=None, what="split", group_column="title"
    )
    assert not set(train["title"]) & set(validation["title"])
    assert len(train) + len(validation) == 600 and 100 <= len(validation) <= 150


def _ner_task(**settings):
    from ftl.launcher.recipe.tasks import TokenClassificationTask
    from ftl.launcher.tasks.token_classification import TokenClassification

    labels = ["O", "B-loc", "I-loc", "B-per", "I-per"]
    return TokenClassification(
        TokenClassificationTask(type="token_classification", labels=labels, **settings)
    )


def _word_rows(words, tags):
    import datasets

    return datasets.Dataset.from_dict({"words": [words], "word_tags": [tags]})


def test_first_subword_alignment_labels_each_word_once(tokenizer):
    task = _ner_task()
    words, tags = ["Tokenization", "in", "Reykjavik"], [0, 0, 1]
    features = task.tokenize(_word_rows(words, tags), tokenizer, "train")[0]
    word_ids = tokenizer(words, is_split_into_words=True).word_ids()
    assert len(set(w for w in word_ids if w is not None)) == 3 and len(word_ids) > 5  # words were split
    expected, previous = [], None
    for word in word_ids:
        expected.append(-100 if word is None or word == previous else tags[word])
        previous = word
    assert features["labels"] == expected


def test_all_subword_alignment_continues_b_tags_as_i_tags_in_training_only(tokenizer):
    task = _ner_task(label_all_subwords=True)
    words, tags = ["Keflavíkurflugvöllur"], [1]
    train = task.tokenize(_word_rows(words, tags), tokenizer, "train")[0]["labels"]
    evaluation = task.tokenize(_word_rows(words, tags), tokenizer, "validation")[0]["labels"]
    pieces = len(train) - 2  # [CLS] ... [SEP]
    assert pieces > 1
    assert train == [-100, 1] + [2] * (pieces - 1) + [-100]  # B-loc, then I-loc on the continuations
    assert evaluation == [-100, 1] + [-100] * (pieces - 1) + [-100]


def test_entity_scores_and_error_kinds_by_hand():
    from ftl.launcher.tasks.ner_errors import sentence_errors
    from ftl.launcher.tasks.ner_metrics import entities, entity_scores

    gold = [["B-per", "I-per", "O", "B-loc", "O", "B-org"]]
    predicted = [["B-per", "I-per", "O", "B-per", "B-misc", "O"]]
    scores = entity_scores(gold, predicted, strict=False)
    # gold: per(0-1) loc(3) org(5); predicted: per(0-1) per(3) misc(4): 1 of 3 right each way
    assert scores["precision"] == pytest.approx(1 / 3) and scores["recall"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx(1 / 3) and scores["accuracy"] == pytest.approx(3 / 6)
    kinds = sorted(e["kind"] for e in sentence_errors(entities(gold[0]), entities(predicted[0])))
    assert kinds == ["missed", "spurious", "wrong_type"]


def test_squad_normalisation_and_scores():
    from ftl.launcher.tasks.qa_answers import exact_match, score, token_f1

    assert exact_match("The Eiffel Tower!", "eiffel tower") == 1.0
    assert token_f1("the big red barn", "red barn door") == pytest.approx(2 * (2 / 3) * (2 / 3) / (4 / 3))
    assert score("Denver Broncos", ["Denver Broncos", "Broncos"]) == (1.0, 1.0)
    assert score("", []) == (1.0, 1.0)  # an unanswerable question answered with nothing


def test_answer_positions_and_the_best_span_over_windows():
    import numpy as np

    from ftl.launcher.tasks.qa_answers import best_answers
    from ftl.launcher.tasks.question_answering import _positions

    context = "Paris is the capital of France."
    # window tokens: [CLS] q [SEP] Paris is the capital of France . [SEP]
    spans = [
        [-1, -1],
        [-1, -1],
        [-1, -1],
        [0, 5],
        [6, 8],
        [9, 12],
        [13, 20],
        [21, 23],
        [24, 30],
        [30, 31],
        [-1, -1],
    ]
    assert _positions(spans, {"text": ["the capital"], "answer_start": [9]}) == (5, 6)
    assert _positions(spans[:6] + [[-1, -1]], {"text": ["France"], "answer_start": [24]}) == (0, 0)  # outside
    start, end = np.zeros((2, 11)), np.zeros((2, 11))
    start[0, 5], end[0, 6] = 5.0, 5.0  # window 0: "the capital" (10)
    start[1, 8], end[1, 8] = 6.0, 6.0  # window 1 of the same question: "France" (12) wins
    start[1, 1], end[1, 1] = 9.0, 9.0  # the question's own token is never an answer
    answers = best_answers(
        start,
        end,
        [0, 0],
        [spans, spans],
        [context],
        n_best=5,
        max_answer_length=10,
        allow_unanswerable=False,
    )
    assert answers[0].text == "France" and (answers[0].start, answers[0].end) == (24, 30)


def test_instruction_labels_mask_exactly_the_prompt(tokenizer):
    from ftl.launcher.tasks.instruction import encode
    from ftl.launcher.token_labels import IGNORE_INDEX

    prompt, response = "Summarise this abstract please:\nwords words\nTL;DR:", "a short summary"
    ids, labels = encode(tokenizer, prompt, response, max_length=64)
    prompt_ids = tokenizer(prompt)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.sep_token_id]
    assert ids == prompt_ids + response_ids
    assert labels == [IGNORE_INDEX] * len(prompt_ids) + response_ids


def test_a_long_prompt_loses_its_middle_not_its_cue_or_the_response(tokenizer):
    from ftl.launcher.tasks.instruction import encode
    from ftl.launcher.token_labels import IGNORE_INDEX

    cue = "TL;DR:"
    prompt = "Instruction first. " + "filler " * 200 + cue
    ids, labels = encode(tokenizer, prompt, "short answer", max_length=48)
    assert len(ids) == 48
    response = [t for t in labels if t != IGNORE_INDEX]
    assert response == tokenizer("short answer", add_special_tokens=False)["input_ids"] + [
        tokenizer.sep_token_id
    ]
    kept_prompt = tokenizer.decode(ids[: len(ids) - len(response)])
    assert kept_prompt.startswith("[CLS] instruction first") and kept_prompt.rstrip(" [SEP]").endswith(
        "tl ; dr :"
    )


def test_rouge_takes_the_best_reference():
    from ftl.launcher.tasks.generation import rouge

    scores = rouge(["the cat sat on the mat"], [["a dog barked", "the cat sat on the mat"]])
    assert scores["rouge1"] == pytest.approx(1.0) and scores["rougeLsum"] == pytest.approx(1.0)
    assert rouge(["unrelated words"], [["the cat sat"]])["rouge2"] == 0.0


def test_rename_applies_where_the_old_column_exists(tmp_path):
    from ftl.launcher.data.sources import load_source
    from ftl.launcher.recipe.data import DataSource

    (tmp_path / "a.jsonl").write_text('{"tokens": ["a"], "ner_tags": ["O"]}\n')
    (tmp_path / "b.jsonl").write_text('{"tokens": ["a"], "tags": ["O"]}\n')
    for name in ("a.jsonl", "b.jsonl"):
        source = DataSource(path=name, rename={"ner_tags": "tags"})
        assert load_source(source, [tmp_path], "data.train").dataset.column_names == ["tokens", "tags"]
    bad = DataSource(path="a.jsonl", rename={"ner_tag": "tags"})
    with pytest.raises(
        FtlError, match=r"data.train.rename: no column 'ner_tag' \(did you mean 'ner_tags'\?\)"
    ):
        _ = load_source(bad, [tmp_path], "data.train").dataset


@pytest.mark.parametrize("verb", ["ftl predict", "ftl generate"])
def test_the_task_types_said_to_serve_a_verb_are_those_that_implement_it(verb):
    from ftl.launcher.recipe.tasks import TRAINED_MODEL_VERBS
    from ftl.launcher.tasks.prediction import VERB_HOOKS
    from ftl.launcher.tasks.registry import task_types_with

    assert list(TRAINED_MODEL_VERBS[verb]) == task_types_with(VERB_HOOKS[verb])


def test_an_encoder_as_a_causal_lm_is_built_as_a_decoder_and_does_not_see_ahead(lm_recipe, capsys):
    """BERT for causal_lm: each position's logits depend only on the tokens before it (was: bidirectional, so it
    copied the next token and its perplexity meant nothing)."""
    import torch

    from ftl.launcher.model import load
    from ftl.launcher.model.load import ModelSpec, load_model, load_tokenizer
    from ftl.launcher.recipe import load_recipe
    from ftl.launcher.tasks.registry import task_for
    from tests.conftest import TINY_BERT

    load._SAID_DECODER.clear()  # said once per process
    loaded = load_recipe(lm_recipe, [f"model.config={TINY_BERT}".replace("'", "")])
    tokenizer = load_tokenizer(loaded.recipe.model, loaded.search_dirs)
    model = load_model(
        ModelSpec.of(loaded.recipe, loaded.search_dirs), task_for(loaded.recipe.task), tokenizer
    ).model
    assert model.config.is_decoder
    assert "bert is an encoder; built as a decoder" in " ".join(capsys.readouterr().err.split())
    model.eval()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    changed = ids.clone()
    changed[0, 4] = 10
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, model(input_ids=changed).logits
    assert torch.allclose(a[0, :4], b[0, :4]) and not torch.allclose(a[0, 4], b[0, 4])
