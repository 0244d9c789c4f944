"""Odd rows of question-answering and tagging data: refused with one file:line naming the fix, never a traceback
or a run that trains on bad labels (empty answers, null tags, tags no scheme reads, IOB1 in strict mode)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftl.launcher.data.sources import load_file
from ftl.launcher.errors import FtlError

CONTEXT = "The trip number 0 went to paris in the spring."


# ---- question answering ----------------------------------------------------------------------------------
def _qa_task(**settings):
    from ftl.launcher.recipe.tasks import QuestionAnsweringTask
    from ftl.launcher.tasks.question_answering import QuestionAnswering

    return QuestionAnswering(
        QuestionAnsweringTask(type="question_answering", max_length=64, doc_stride=16, **settings)
    )


def _qa_file(tmp_path: Path, answers: list[dict], name: str = "qa.jsonl") -> Path:
    path = tmp_path / name
    rows = [
        {"id": str(i), "context": CONTEXT, "question": "Where did the trip go?", "answers": a}
        for i, a in enumerate(answers)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


PARIS = {"text": ["paris"], "answer_start": [26]}


@pytest.mark.parametrize(
    ("text", "start", "shown"),
    [
        ("", 0, "is empty"),
        (" ", 3, "is blank (' ')"),
        ("\u200b", 3, "is blank ('\\u200b')"),
        ("\t\n", 0, "is blank ('\\t\\n')"),
    ],
)
def test_an_empty_or_blank_answer_is_refused_where_answers_are_read(tmp_path, text, start, shown):
    path = _qa_file(tmp_path, [PARIS, {"text": ["paris", text], "answer_start": [26, start]}])
    with pytest.raises(FtlError) as error:
        _qa_task().encode_raw(load_file(path, "data.train"))
    assert str(error.value).startswith(f"{path}:2: answer 2 in 'answers' {shown}; drop it")
    assert "an unanswerable question has empty lists" in str(error.value)


def test_an_answer_covering_no_token_is_an_error_not_a_stop_iteration():
    from ftl.launcher.tasks.question_answering import _positions

    spans = [[-1, -1], [-1, -1], [0, 3], [4, 8], [16, 18], [-1, -1]]  # "The trip" ... "to", a gap at 9-15
    assert _positions(spans, {"text": ["trip"], "answer_start": [4]}) == (3, 3)
    for start, text in ((10, "x"), (0, "")):  # between tokens; before the first token's end but empty
        with pytest.raises(FtlError, match="covers no token of its context"):
            _positions(spans, {"text": [text], "answer_start": [start]})


def test_an_unanswerable_question_in_ftl_eval_says_what_a_finished_run_can_do(tmp_path):
    path = _qa_file(tmp_path, [PARIS, {"text": [], "answer_start": []}])
    with pytest.raises(FtlError, match=r"set task\.allow_unanswerable: true for SQuAD 2\.0 data"):
        _qa_task().encode_raw(load_file(path, "data.train"))
    with pytest.raises(FtlError) as error:
        _qa_task().encode_raw(load_file(path, "--data"))
    assert f"{path}:2: the question has no answer; the run was trained without" in str(error.value)
    assert "drop those rows, or retrain with task.allow_unanswerable: true" in str(error.value)


# ---- token classification ----------------------------------------------------------------------------------
def _ner_task(**settings):
    from ftl.launcher.recipe.tasks import TokenClassificationTask
    from ftl.launcher.tasks.token_classification import TokenClassification

    return TokenClassification(TokenClassificationTask(type="token_classification", **settings))


def _conll(tmp_path: Path, sentences: list[list[tuple[str, str]]], name: str = "train.conll") -> Path:
    path = tmp_path / name
    path.write_text("\n".join("".join(f"{w}\t{t}\n" for w, t in s) for s in sentences))
    return path


def _fitted(path: Path, **settings):
    task = _ner_task(**settings)
    raw = load_file(path, "data.train")
    task.fit(raw)
    task.encode_raw(raw)
    return task


def test_plain_entity_tags_are_named_with_their_new_names_but_read(tmp_path, capsys):
    path = _conll(
        tmp_path,
        [[("we", "O"), ("went", "O")], [("dave", "PER"), ("went", "O"), ("to", "O"), ("oslo", "LOC")]],
    )
    assert _fitted(path).label_names() == ["O", "LOC", "PER"]  # IO tags, or tags that are not entities at all
    warning = " ".join(capsys.readouterr().err.split())
    assert "data.train: tags 'LOC', 'PER' are not BIO tags" in warning
    assert "rename LOC to B-LOC/I-LOC, PER to B-PER/I-PER" in warning and "tag accuracy is right" in warning


@pytest.mark.parametrize(
    ("tag", "renamed"),
    [("o", "rename o to O"), ("b-per", "rename b-per to B-per"), ("U-per", "U-per to S-per")],
)
def test_lower_case_and_bilou_tags_are_refused(tmp_path, tag, renamed):
    path = _conll(tmp_path, [[("dave", "B-per"), ("went", "O")], [("alice", tag), ("went", "O")]])
    with pytest.raises(FtlError, match=f"{path}:4: tag '{tag}' is not a BIO tag.*{renamed}"):
        _fitted(path)


def test_misnamed_tags_in_task_labels_are_refused(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"tokens": ["dave", "went"], "tags": [1, 0]}) + "\n")
    task = _ner_task(labels=["O", "b-per"])
    with pytest.raises(FtlError, match=r"t\.jsonl:1: tag 'b-per' is not a BIO tag"):
        task.fit(load_file(path, "data.train"))
    task = _ner_task(labels=["O", "B-PER", "U-ORG"])
    with pytest.raises(FtlError, match=r"^task\.labels: tag 'U-ORG' is not a BIO tag"):
        task.fit(load_file(path, "data.train"))
    for labels in (
        ["O", "PER"],
        ["O", "B_PER", "I_PER"],
        ["O", "COMMA", "PERIOD"],
    ):  # read (plain: a warning)
        _ner_task(labels=labels).fit(load_file(path, "data.train"))


def test_bioes_iob1_and_pos_tags_are_read(tmp_path):
    bioes = [[("dave", "S-per"), ("went", "O")], [("new", "B-loc"), ("york", "E-loc")]]
    assert _fitted(_conll(tmp_path, bioes, "bioes.conll"), strict=True).label_names() == [
        "O",
        "B-loc",
        "E-loc",
        "S-per",
    ]
    iob1 = [[("dave", "I-per"), ("went", "O")], [("new", "I-loc"), ("york", "I-loc")]]
    assert _fitted(_conll(tmp_path, iob1, "iob1.conll")).label_names() == ["O", "I-loc", "I-per"]
    pos = [[("dave", "NNP"), ("went", "VBD")], [("to", "IN"), ("york", "NNP")]]
    assert set(_fitted(_conll(tmp_path, pos, "pos.conll")).label_names()) == {"IN", "NNP", "VBD"}


def test_iob1_tags_in_strict_mode_are_refused_but_a_stray_i_tag_is_not(tmp_path):
    iob1 = [[("dave", "I-per"), ("went", "O")], [("to", "O"), ("new", "I-loc"), ("york", "I-loc")]]
    path = _conll(tmp_path, iob1, "iob1.conll")
    with pytest.raises(FtlError) as error:
        _fitted(path, strict=True)
    message = str(error.value)
    assert message.startswith(f"{path}:1: entities start with I- tags ('I-per'"), message
    assert "set task.strict: false or tag the first word of each entity B-" in message
    mostly_iob2 = [
        [("dave", "B-per"), ("went", "O")],
        [("new", "B-loc"), ("york", "I-loc")],
        [("x", "I-per")],
    ]
    _fitted(_conll(tmp_path, mostly_iob2, "iob2.conll"), strict=True)


def test_strict_scores_of_bioes_tags_use_the_bioes_scheme():
    from ftl.launcher.tasks.ner_metrics import entity_scores

    gold = [["S-per", "O", "B-loc", "E-loc"]]
    assert entity_scores(gold, gold, strict=True)["f1"] == 1.0  # was: ValueError from seqeval's IOB2 scheme
    predicted = [["S-per", "O", "B-loc", "I-loc"]]
    assert entity_scores(gold, predicted, strict=True)["f1"] == pytest.approx(2 / 3)


def test_strict_error_analysis_of_bioes_tags(tmp_path):
    from ftl.launcher.tasks.ner_errors import write_error_analysis

    gold, predicted = [["S-per", "O", "B-loc", "E-loc"]], [["S-per", "O", "S-loc", "O"]]
    write_error_analysis(tmp_path, [["dave", "in", "new", "york"]], gold, predicted, strict=True)
    report = json.loads((tmp_path / "entity_report.json").read_text())
    assert report["types"]["per"]["f1"] == 1.0 and report["types"]["loc"]["f1"] == 0.0


@pytest.mark.parametrize(("value", "shown"), [(None, "null"), ("", "empty"), (" ", "empty")])
def test_a_missing_tag_is_refused_in_training_and_validation_files(tmp_path, value, shown):
    path = tmp_path / "t.jsonl"
    good = {"tokens": ["alice", "went", "to", "paris"], "tags": ["B-per", "O", "O", "B-loc"]}
    bad = {"tokens": ["alice", "went", "to", "paris"], "tags": ["B-per", value, "O", "B-loc"]}
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(FtlError, match=rf"^{path}:2: tag 2 is {shown}; every word needs a tag$"):
        _fitted(path)
    task = _ner_task(labels=["O", "B-loc", "B-per"])
    task.fit(load_file(path, "data.train"))
    with pytest.raises(FtlError, match=rf"^{path}:2: tag 2 is {shown}; every word needs a tag$"):
        task.encode_raw(load_file(path, "data.validation"))


def test_an_unknown_tag_in_ftl_eval_says_what_a_finished_run_can_do(tmp_path):
    train = _conll(tmp_path, [[("dave", "B-per"), ("went", "O")], [("oslo", "B-loc")]])
    other = _conll(tmp_path, [[("acme", "B-org"), ("went", "O")]], "other.conll")
    task = _fitted(train)
    with pytest.raises(
        FtlError, match=r"other\.conll:1: unknown tag 'B-org'.*set task\.labels to list them all"
    ):
        task.encode_raw(load_file(other, "data.validation"))
    with pytest.raises(FtlError) as error:
        task.encode_raw(load_file(other, "--data"))
    assert (
        "(the run does not know this tag: drop or fix those rows, or retrain with it in task.labels)"
        in str(error.value)
    )


def test_whole_number_float_offsets_are_offsets_and_others_are_refused():
    from ftl.launcher.tasks.question_answering import _answer_lists

    # one 14.0 in a JSON file makes Arrow read every answer_start as a float
    assert _answer_lists({"text": ["paris"], "answer_start": [26.0]}, "qa.jsonl:1", "answers") == (
        ["paris"],
        [26],
    )
    assert _answer_lists({"text": "paris", "answer_start": 26.0}, "qa.jsonl:1", "answers") == (
        ["paris"],
        [26],
    )
    with pytest.raises(
        FtlError, match=r"qa.jsonl:2: answer_start values in column 'answers' must be character"
    ):
        _answer_lists({"text": ["paris"], "answer_start": [26.5]}, "qa.jsonl:2", "answers")
