"""Extractive question answering: contexts cut into overlapping windows, answer spans as token positions,
n-best span search over every window of a question, SQuAD exact match and F1, wrong answers on file.

A window is `[CLS] question [SEP] part of the context [SEP]`; consecutive windows share `doc_stride`
tokens. Training targets the tokens where the answer starts and ends, or the CLS token when the answer is
not (wholly) inside the window. Evaluation windows also keep their question's index and each token's
character span in the context, so the predicted token span maps back to the context's own text.
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

from ftl.launcher.data.collate import PaddingCollator
from ftl.launcher.data.sources import RawData
from ftl.launcher.errors import FtlError
from ftl.launcher.files import atomic_write
from ftl.launcher.tasks.base import EVAL_FILE, Predictions, Task
from ftl.launcher.tasks.prediction import PredictionInputs
from ftl.launcher.tasks.qa_answers import Answer, best_answers, score, squad_metrics

QUESTION, CONTEXT, ANSWERS, ID = "question", "context", "answers", "id"  # normalised columns
_WINDOW_COLUMNS = ("example_id", "offsets", "context", "gold", "length")  # bookkeeping, not model inputs


class QuestionAnswering(Task):
    auto_model = "AutoModelForQuestionAnswering"
    peft_task_type = "QUESTION_ANS"

    @property
    def split_method(self) -> str:
        return "random"

    def column_keys(self) -> dict[str, str | None]:
        return {
            "question_column": self.config.question_column,
            "context_column": self.config.context_column,
            "answers_column": self.config.answers_column,
        }  # id_column is optional: rows without it are numbered

    def encode_raw(self, raw: RawData, keep_columns: tuple[str, ...] = ()):
        import datasets

        self.check_columns(raw)
        c = self.config
        rows = raw.dataset
        id_values = rows[c.id_column] if c.id_column in rows.column_names else None
        questions, contexts, answers, ids = [], [], [], []
        for row, (question, context, gold) in enumerate(
            zip(rows[c.question_column], rows[c.context_column], rows[c.answers_column], strict=True)
        ):
            where = raw.row_location(row)
            if not isinstance(question, str) or not question.strip():
                raise FtlError(f"{where}: empty question in column '{c.question_column}'")
            if not isinstance(context, str) or not context.strip():
                raise FtlError(f"{where}: empty context in column '{c.context_column}'")
            texts, starts = _answer_lists(gold, where, c.answers_column)
            for text, start in zip(texts, starts, strict=True):
                if context[start : start + len(text)] != text:
                    raise FtlError(
                        f"{where}: answer {text!r} is not at answer_start {start} of the context; fix the offset"
                    )
            if not texts and not c.allow_unanswerable:
                fix = (
                    "the run was trained without task.allow_unanswerable: drop those rows, or retrain with "
                    "task.allow_unanswerable: true"
                    if raw.what == EVAL_FILE
                    else "set task.allow_unanswerable: true for SQuAD 2.0 data"
                )
                raise FtlError(f"{where}: the question has no answer; {fix}")
            questions.append(question.lstrip())  # leading spaces only waste window tokens
            contexts.append(context)
            answers.append({"text": texts, "answer_start": starts})
            ids.append(str(id_values[row]) if id_values is not None else str(row))
        kept = {col: rows[col] for col in keep_columns if col in rows.column_names}
        return datasets.Dataset.from_dict(
            {**kept, ID: ids, QUESTION: questions, CONTEXT: contexts, ANSWERS: answers}
        )

    def export_rows(self, rows) -> list[dict[str, Any]]:
        c = self.config
        names = {QUESTION: c.question_column, CONTEXT: c.context_column, ANSWERS: c.answers_column}
        names[ID] = c.id_column or ID
        return [{names.get(k, k): v for k, v in row.items()} for row in rows.to_list()]

    # ---- windows --------------------------------------------------------------------------------
    def tokenize(self, dataset, tokenizer, split: str):
        _require_fast(tokenizer)
        indexed = dataset.add_column("_index", list(range(len(dataset))))
        return indexed.map(
            lambda batch: windows(batch, tokenizer, self.config),
            batched=True,
            batch_size=500,
            remove_columns=indexed.column_names,
        )

    def dataset_stats(self, dataset, tokenizer) -> dict[str, Any]:
        return {
            "rows": len(dataset),
            "tokens": int(sum(dataset["length"])),
            "questions": len(set(dataset["example_id"])),
            "windows": len(dataset),
        }

    def collator(self, tokenizer):
        return PaddingCollator(tokenizer, drop=_WINDOW_COLUMNS)

    # ---- answers and metrics --------------------------------------------------------------------
    def answers_for(self, predictions, windows) -> tuple[list[Answer], list[list[str]]]:
        """The best answer per question of `windows` (a tokenised split), and each question's gold answers."""
        import numpy as np

        start_logits, end_logits = (np.asarray(p) for p in predictions[:2])
        example_ids = windows["example_id"]
        contexts: dict[int, str] = {}
        gold: dict[int, list[str]] = {}
        for example, context, answers in zip(example_ids, windows["context"], windows["gold"], strict=True):
            contexts.setdefault(example, context)
            gold.setdefault(example, answers)
        order = sorted(contexts)
        position = {example: i for i, example in enumerate(order)}
        answers = best_answers(
            start_logits,
            end_logits,
            [position[e] for e in example_ids],
            windows["offsets"],
            [contexts[e] for e in order],
            n_best=self.config.n_best,
            max_answer_length=self.config.max_answer_length,
            allow_unanswerable=self.config.allow_unanswerable,
        )
        return answers, [gold[e] for e in order]

    def compute_metrics(self, dataset=None, tokenizer=None):
        if dataset is None:
            return None
        windows = dataset.select_columns(["example_id", "offsets", "context", "gold"])[:]

        def metrics(prediction) -> dict[str, float]:
            answers, gold = self.answers_for(prediction.predictions, windows)
            return squad_metrics(answers, gold)

        return metrics

    def write_predictions(self, trainer, dataset, raw_rows, directory: Path) -> Predictions | None:
        output = trainer.predict(dataset, metric_key_prefix="predict")  # collective: every worker predicts
        if not trainer.is_world_process_zero():
            return None
        windows = dataset.select_columns(["example_id", "offsets", "context", "gold"])[:]
        answers, gold = self.answers_for(output.predictions, windows)
        wrong = []
        for row, (answer, golds) in enumerate(zip(answers, gold, strict=True)):
            em, f1 = score(answer.text, golds)
            if em < 1.0:
                wrong.append(
                    {
                        "row": row,
                        "id": raw_rows[ID][row],
                        "question": raw_rows[QUESTION][row],
                        "gold": golds,
                        "predicted": answer.text,
                        "f1": round(f1, 4),
                        "context": _around(raw_rows[CONTEXT][row], raw_rows[ANSWERS][row], answer),
                    }
                )
        wrong.sort(key=lambda item: item["f1"])
        path = directory / "qa_errors.jsonl"
        atomic_write(path, "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in wrong))
        return Predictions(path)

    # ---- prediction without labels ----------------------------------------------------------------
    def encode_for_prediction(self, raw: RawData, tokenizer) -> PredictionInputs:
        """Question and context columns (answers, when present, are not read), windowed as in evaluation."""
        from ftl.launcher.tasks.prediction import is_blank, require_columns

        _require_fast(tokenizer)
        c = self.config
        require_columns(raw, {"question_column": c.question_column, "context_column": c.context_column})
        questions, contexts = raw.dataset[c.question_column], raw.dataset[c.context_column]
        skipped = {}
        for row, (question, context) in enumerate(zip(questions, contexts, strict=True)):
            if is_blank(question) or is_blank(context):
                skipped[row] = f"empty '{c.question_column if is_blank(question) else c.context_column}'"
        keep = [row for row in range(len(questions)) if row not in skipped]
        batch = {
            QUESTION: [str(questions[row]).lstrip() for row in keep],
            CONTEXT: [str(contexts[row]) for row in keep],
            ANSWERS: [{"text": [], "answer_start": []} for _ in keep],
            "_index": list(range(len(keep))),
        }
        found = windows(batch, tokenizer, c) if keep else {"input_ids": [], "example_id": []}
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in found]
        windowed = sum(1 for n in Counter(found["example_id"]).values() if n > 1)
        return PredictionInputs(
            rows=len(questions),
            features=[{k: list(found[k][i]) for k in keys} for i in range(len(found["input_ids"]))],
            feature_rows=[keep[example] for example in found["example_id"]],
            outputs=("start_logits", "end_logits"),
            per_token=True,
            skipped=skipped,
            notes=[
                f"{windowed} of {len(keep)} contexts are longer than a window (task.max_length={c.max_length}): "
                f"searched in overlapping windows (task.doc_stride={c.doc_stride})"
            ]
            if windowed
            else [],
            state={
                "keep": keep,
                "contexts": batch[CONTEXT],
                "example_id": found["example_id"],
                "offsets": found.get("offsets", []),
            },
        )

    def predictions_to_rows(self, inputs: PredictionInputs, outputs: list, tokenizer) -> list[dict[str, Any]]:
        """answer (text; empty when the question is predicted unanswerable), answer_start and answer_end
        (character offsets into the context), score (the span's probability within its window)."""
        from ftl.launcher.tasks.prediction import softmax

        rows: list[dict[str, Any]] = [
            {"answer": None, "answer_start": None, "answer_end": None, "score": None}
            for _ in range(inputs.rows)
        ]
        if not inputs.features:
            return rows
        state, c = inputs.state, self.config
        answers = best_answers(
            [starts for starts, _ in outputs],
            [ends for _, ends in outputs],
            state["example_id"],
            state["offsets"],
            state["contexts"],
            n_best=c.n_best,
            max_answer_length=c.max_answer_length,
            allow_unanswerable=c.allow_unanswerable,
        )
        for row, answer in zip(state["keep"], answers, strict=True):
            rows[row] = {
                "answer": answer.text,
                "answer_start": answer.start if answer.start >= 0 else None,
                "answer_end": answer.end if answer.start >= 0 else None,
                "score": None,
            }
            if answer.feature >= 0:
                starts, ends = outputs[answer.feature]
                spans = state["offsets"][answer.feature]
                allowed = sorted({0} | {t for t, span in enumerate(spans) if span[0] >= 0})
                where = {token: i for i, token in enumerate(allowed)}  # CLS (no answer) and the context
                probability = (
                    softmax(starts[allowed])[where[answer.start_token]]
                    * softmax(ends[allowed])[where[answer.end_token]]
                )
                rows[row]["score"] = round(float(probability), 6)
        return rows


def _require_fast(tokenizer) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise FtlError(
            "task: question answering needs a fast tokenizer (offset mapping); set model.tokenizer"
        )


def windows(batch: dict[str, list], tokenizer, config) -> dict[str, list]:
    """The windows of a batch of questions (columns question, context, answers, _index): model inputs, answer
    positions, and per window its question's _index, each token's character span in the context (-1, -1
    outside it), the context and the gold answer texts."""
    question_first = tokenizer.padding_side == "right"
    first, second = (QUESTION, CONTEXT) if question_first else (CONTEXT, QUESTION)
    encoded = tokenizer(
        batch[first],
        batch[second],
        truncation="only_second" if question_first else "only_first",
        max_length=config.max_length,
        stride=config.doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    origin = encoded.pop("overflow_to_sample_mapping")
    offsets_of = encoded.pop("offset_mapping")
    context_side = 1 if question_first else 0
    out: dict[str, list] = {"start_positions": [], "end_positions": [], **{k: [] for k in _WINDOW_COLUMNS}}
    for i, offsets in enumerate(offsets_of):
        example = origin[i]
        sequence_ids = encoded.sequence_ids(i)
        spans = [
            list(o) if s == context_side else [-1, -1] for o, s in zip(offsets, sequence_ids, strict=True)
        ]
        start, end = _positions(spans, batch[ANSWERS][example])
        out["start_positions"].append(start)
        out["end_positions"].append(end)
        out["example_id"].append(batch["_index"][example])
        out["offsets"].append(spans)
        out["context"].append(batch[CONTEXT][example])
        out["gold"].append(batch[ANSWERS][example]["text"])
        out["length"].append(len(offsets))
    return {**encoded, **out}


def _answer_lists(gold: Any, where: str, column: str) -> tuple[list[str], list[int]]:
    """{'text': [...], 'answer_start': [...]} (SQuAD/hub layout) or a list of {'text', 'answer_start'}."""
    if isinstance(gold, dict) and "text" in gold and "answer_start" in gold:
        texts, starts = gold["text"], gold["answer_start"]
        if isinstance(texts, str) and isinstance(
            starts, (int, float)
        ):  # one answer, not in lists: read as one
            texts, starts = [texts], [starts]
        if not isinstance(texts, list) or not isinstance(starts, list):
            raise FtlError(
                f"{where}: column '{column}' must hold {{text: [...], answer_start: [...]}} (lists, one entry per "
                f"answer), got text {type(texts).__name__} and answer_start {type(starts).__name__}"
            )
    elif isinstance(gold, list) and all(isinstance(g, dict) for g in gold):
        texts = [g.get("text") for g in gold]
        starts = [g.get("answer_start") for g in gold]
    else:
        raise FtlError(
            f"{where}: column '{column}' must hold {{text: [...], answer_start: [...]}}, got {type(gold).__name__}"
        )
    # whole-number floats are offsets: one 14.0 in a JSON file makes Arrow read the whole column as floats
    starts = [int(s) if isinstance(s, float) and s.is_integer() else s for s in starts]
    if len(texts) != len(starts) or not all(isinstance(t, str) for t in texts):
        raise FtlError(f"{where}: column '{column}' needs one answer_start per answer text")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in starts):
        raise FtlError(f"{where}: answer_start values in column '{column}' must be character offsets (>= 0)")
    for number, text in enumerate(texts, 1):
        if not _visible(text):
            shown = "empty" if not text else f"blank ({text!r})"
            raise FtlError(
                f"{where}: answer {number} in '{column}' is {shown}; drop it "
                "(an unanswerable question has empty lists)"
            )
    return texts, starts


def _visible(text: str) -> bool:
    """Whether the text has a character a tokenizer keeps: not only whitespace, control or format characters
    (zero-width spaces, a BOM, soft hyphens) or lone combining marks."""
    return any(not ch.isspace() and unicodedata.category(ch) not in ("Cc", "Cf", "Mn") for ch in text)


def _positions(spans: list[list[int]], answers: dict[str, list]) -> tuple[int, int]:
    """Token positions of the first gold answer inside this window, else (0, 0): the CLS token."""
    if not answers["text"]:
        return 0, 0
    start_char = answers["answer_start"][0]
    end_char = start_char + len(answers["text"][0])
    context = [i for i, (s, _) in enumerate(spans) if s >= 0]
    if not context or spans[context[0]][0] > start_char or spans[context[-1]][1] < end_char:
        return 0, 0
    start = next((i for i in context if spans[i][1] > start_char), None)
    end = next((i for i in reversed(context) if spans[i][0] < end_char), None)
    if start is None or end is None or start > end:  # no token of the context is inside the answer
        raise FtlError(
            f"answer {answers['text'][0]!r} at answer_start {start_char} covers no token of its context (the "
            "tokenizer drops its characters); fix or drop that answer"
        )
    return start, end


def _around(context: str, answers: dict[str, list], predicted: Answer, margin: int = 120) -> str:
    """The part of the context around the gold answer (and the prediction), for reading the error."""
    points = [s for s in answers["answer_start"]] + ([predicted.start] if predicted.start >= 0 else [])
    if not points:
        return context[: 2 * margin]
    low, high = max(0, min(points) - margin), min(len(context), max(points) + margin)
    return ("..." if low else "") + context[low:high] + ("..." if high < len(context) else "")
