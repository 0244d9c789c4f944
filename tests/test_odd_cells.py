"""Odd cells in data rows: every row dropped or coerced is counted, a cell of the wrong kind is one line naming its
file:line, and nothing is trained on silently wrong values (seq2seq texts, classification labels and text pairs,
prediction files where no row has text)."""

from __future__ import annotations

import pytest

from ftl.launcher.data.sources import load_file
from ftl.launcher.errors import FtlError
from tests.conftest import jsonl_rows, minilm_dir

TEXTS = [
    "good film",
    "bad film",
    "fine plot",
    "awful plot",
    "great cast",
    "poor cast",
    "lovely story",
    "dull story",
]


def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())


def classification(**settings):
    from ftl.launcher.recipe.tasks import SequenceClassificationTask
    from ftl.launcher.tasks.classification import SequenceClassification

    return SequenceClassification(
        SequenceClassificationTask(type="sequence_classification", text_column="sentence", **settings)
    )


def seq2seq(**settings):
    from ftl.launcher.recipe.tasks import Seq2SeqTask
    from ftl.launcher.tasks.seq2seq import Seq2Seq

    return Seq2Seq(Seq2SeqTask(type="seq2seq", **settings))


def raw_of(tmp_path, rows, name="t.jsonl"):
    return load_file(jsonl_rows(tmp_path / name, rows), "data.train")


def trip(i: int, summary=..., document=...) -> dict:
    return {
        "document": f"we went to city {i} today" if document is ... else document,
        "summary": f"a trip to {i}" if summary is ... else summary,
        "output": f"trip {i}",  # an instruction-tuning response
    }


# ---- prediction: a file where no row has text ------------------------------------------------------------------
@pytest.mark.parametrize("cells", [["   "], [None, ""]])
def test_prediction_skips_every_row_when_no_row_has_text(tmp_path, cells):
    task = classification(labels=["negative", "positive"])
    raw = raw_of(tmp_path, [{"sentence": cell} for cell in cells])
    inputs = task.encode_for_prediction(raw, tokenizer())
    assert inputs.features == [] and inputs.feature_rows == []
    assert inputs.skipped == {i: "empty 'sentence'" for i in range(len(cells))}
    rows = task.predictions_to_rows(inputs, [], tokenizer())
    assert [row["predicted"] for row in rows] == [None] * len(cells)


def test_encode_features_takes_no_rows():
    from ftl.launcher.tasks.prediction import encode_features, longer_than

    assert encode_features(tokenizer(), [], None, truncation=True, max_length=8) == []
    assert encode_features(tokenizer(), [], [], truncation=True, max_length=8) == []
    assert longer_than(tokenizer(), 8, []) == 0


# ---- seq2seq: empty, null and number cells; lists and objects ---------------------------------------------------
def test_seq2seq_rows_without_a_target_are_counted(tmp_path):
    rows = [trip(i) for i in range(10)]
    rows[1]["summary"], rows[4]["summary"], rows[6]["document"] = None, "  ", ""
    raw = raw_of(tmp_path, rows)
    encoded = seq2seq().encode_raw(raw)
    assert len(encoded) == 7
    assert raw.row_report() == [
        f"data.train: dropped 3 of 10 rows: no 'summary' (1, first {tmp_path / 't.jsonl'}:2); "
        f"empty 'summary' (1, first {tmp_path / 't.jsonl'}:5); "
        f"empty 'document' (1, first {tmp_path / 't.jsonl'}:7)"
    ]


def test_seq2seq_number_targets_are_read_as_text_and_counted(tmp_path):
    rows = [trip(i) for i in range(4)]
    rows[0]["summary"], rows[2]["summary"] = 0, 7.5
    raw = raw_of(tmp_path, rows)
    encoded = seq2seq().encode_raw(raw)
    assert encoded["target"] == ["0", "a trip to 1", "7.5", "a trip to 3"]
    assert encoded["references"][0] == ["0"]
    assert raw.row_report() == [
        f"data.train: coerced 2 of 4 rows: a number in 'summary' read as text (2, first {tmp_path / 't.jsonl'}:1)"
    ]


def test_seq2seq_refuses_a_source_that_is_mostly_without_targets(tmp_path):
    rows = [trip(i, summary="" if i % 4 else ...) for i in range(8)]
    with pytest.raises(FtlError) as error:
        seq2seq().encode_raw(raw_of(tmp_path, rows))
    assert str(error.value) == (
        f"{tmp_path / 't.jsonl'}:2: 6 of 8 rows of {tmp_path / 't.jsonl'} have no text in 'summary' "
        "(task.target_column; this row is the first); fix the file, or point task.target_column at the column "
        "that holds the text"
    )


@pytest.mark.parametrize(
    ("cell", "column", "expected"),
    [
        (["we", "went"], "document", "column 'document' (task.source_column) holds a list (['we', 'went'])"),
        (
            {"text": "a trip"},
            "summary",
            "column 'summary' (task.target_column) holds an object ({'text': 'a trip'})",
        ),
    ],
)
def test_seq2seq_refuses_lists_and_objects_naming_the_column(tmp_path, cell, column, expected):
    rows = [{**trip(i), column: cell} for i in range(4)]
    with pytest.raises(FtlError) as error:
        seq2seq().encode_raw(raw_of(tmp_path, rows))
    assert str(error.value).startswith(f"{tmp_path / 't.jsonl'}:1: {expected} where text is expected")


# ---- classification: null second texts, labels of several types, lists and objects as labels --------------------
def test_a_null_second_text_is_an_empty_text_in_training_and_prediction(tmp_path):
    rows = [
        {"sentence": text, "b": None if i % 3 == 0 else "x", "label": ["negative", "positive"][i % 2]}
        for i, text in enumerate(TEXTS)
    ]
    task = classification(text_pair_column="b")
    raw = raw_of(tmp_path, rows)
    task.fit(raw)
    encoded = task.tokenize(task.encode_raw(raw), tokenizer(), "train")
    none_ids = tokenizer()(["good film"], ["None"])["input_ids"][0]
    empty_ids = tokenizer()(["good film"], [""])["input_ids"][0]
    assert encoded[0]["input_ids"] == empty_ids != none_ids
    assert task.encode_for_prediction(raw, tokenizer()).features[0]["input_ids"] == empty_ids
    assert raw.row_report() == [
        f"data.train: coerced 3 of 8 rows: no 'b' read as an empty text (3, first {tmp_path / 't.jsonl'}:1)"
    ]


@pytest.mark.parametrize(
    "labels",
    [[0.0, 1.0] * 4, [1, "1", 1.0, 0, "0", 0.0, 1, 0]],
    ids=["whole-number-floats", "numbers-strings-and-floats"],
)
def test_whole_number_labels_are_one_class_whatever_their_type(tmp_path, labels):
    task = classification()
    raw = raw_of(tmp_path, [{"sentence": t, "label": y} for t, y in zip(TEXTS, labels, strict=True)])
    task.fit(raw)
    assert task.label_names() == ["0", "1"]
    assert task.encode_raw(raw)["labels"] == [1 if float(y) == 1 else 0 for y in labels]


def test_a_whole_number_float_label_indexes_the_given_names(tmp_path):
    task = classification(labels=["negative", "positive"])
    raw = raw_of(tmp_path, [{"sentence": t, "label": float(i % 2)} for i, t in enumerate(TEXTS)])
    task.fit(raw)
    assert task.encode_raw(raw)["labels"] == [i % 2 for i in range(8)]


@pytest.mark.parametrize(
    ("cell", "kind"),
    [(["a", "b"], "a list (['a', 'b'])"), ({"name": "positive"}, "an object ({'name': 'positive'})")],
)
@pytest.mark.parametrize("given", [None, ["negative", "positive"]])
def test_lists_and_objects_as_labels_are_refused(tmp_path, cell, kind, given):
    rows = [{"sentence": t, "label": "negative"} for t in TEXTS]
    rows[2]["label"] = cell
    task = classification(labels=given)
    raw = raw_of(tmp_path, rows)
    with pytest.raises(FtlError) as error:
        task.fit(raw)
        task.encode_raw(raw)
    assert str(error.value) == (
        f"{tmp_path / 't.jsonl'}:3: column 'label' (task.label_column) holds {kind} where a label is expected; "
        "ftl would make its printed form a class: put one label name (or id) per row in the column"
    )


def test_an_unknown_label_says_what_fits_training_or_a_finished_run(tmp_path):
    rows = [{"sentence": t, "label": ["negative", "positive"][i % 2]} for i, t in enumerate(TEXTS)]
    task = classification()
    task.fit(raw_of(tmp_path, rows))
    odd = [*rows[:2], {"sentence": "so so", "label": "neutral"}]
    with pytest.raises(FtlError, match=r"unknown label 'neutral'.*\(set task.labels to list them all\)$"):
        task.encode_raw(raw_of(tmp_path, odd, "odd.jsonl"))
    scored = load_file(jsonl_rows(tmp_path / "eval.jsonl", odd), "--data")  # as ftl eval reads its file
    with pytest.raises(
        FtlError, match=r"unknown label 'neutral'.*the run does not know this label: drop or fix"
    ):
        task.encode_raw(scored)


# ---- instruction tuning: the columns a prompt template reads ----------------------------------------------------
TEMPLATE = "Summarise: {document}\nTL;DR:"


def check_prompt_fields(raw, template):
    """The columns the prompt reads, checked as instruction tuning reads a source (CausalLM.encode_raw)."""
    from ftl.launcher.recipe.tasks import CausalLMTask
    from ftl.launcher.tasks.causal_lm import CausalLM

    settings = CausalLMTask(type="causal_lm", prompt_template=template, response_column="output")
    CausalLM(settings).encode_raw(raw)


def test_prompt_fields_that_are_lists_or_objects_are_refused(tmp_path):
    rows = [trip(i) for i in range(4)]
    rows[1]["document"] = ["we", "went"]
    with pytest.raises(FtlError) as error:
        check_prompt_fields(raw_of(tmp_path, rows), TEMPLATE)
    assert str(error.value) == (
        f"{tmp_path / 't.jsonl'}:2: column 'document' (task.prompt_template {{document}}) holds a list "
        "(['we', 'went']) where text is expected; ftl would put its printed form in the prompt: put the text "
        "itself in the column"
    )


def test_null_prompt_fields_are_counted_and_a_source_mostly_without_them_refused(tmp_path):
    rows = [trip(i, document=None if i in (2, 5) else ...) for i in range(8)]
    raw = raw_of(tmp_path, rows)
    check_prompt_fields(raw, TEMPLATE)
    assert raw.row_report() == [
        f"data.train: coerced 2 of 8 rows: no 'document' read as an empty text (2, first {tmp_path / 't.jsonl'}:3)"
    ]
    mostly = raw_of(tmp_path, [trip(i, document=None if i else ...) for i in range(8)], "m.jsonl")
    with pytest.raises(FtlError, match=r"m.jsonl:2: 7 of 8 rows of .* have no text in 'document'"):
        check_prompt_fields(mostly, TEMPLATE)


def test_a_prompt_field_empty_in_most_rows_is_fine_when_another_field_has_text(tmp_path):
    rows = [{"instruction": f"do {i}", "input": "" if i else "x", "output": "y"} for i in range(6)]
    raw = raw_of(tmp_path, rows)
    check_prompt_fields(raw, "{instruction}\n{input}\n")
    assert raw.row_report() == []


def test_labels_that_differ_only_in_case_or_invisible_characters_are_named(tmp_path, capsys):
    rows = [
        {"sentence": t, "label": ["positive", "Positive", "negative\u200b", "negative"][i % 4]}
        for i, t in enumerate(TEXTS)
    ]
    task = classification()
    task.fit(raw_of(tmp_path, rows))
    assert task.label_names() == [
        "Positive",
        "negative",
        "negative\u200b",
        "positive",
    ]  # four classes, as given
    warning = " ".join(capsys.readouterr().err.split())
    assert "labels 'negative' and 'negative\\u200b' differ only in case or invisible characters" in warning
