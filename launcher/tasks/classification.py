"""Sequence classification: label names <-> ids, dynamic padding, accuracy / macro-F1, misclassified rows."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from typing import Any

from ftl.launcher.console import log
from ftl.launcher.data.cells import checked_text, is_missing, usable_text, wrong_type
from ftl.launcher.data.collate import PaddingCollator
from ftl.launcher.data.sources import RawData
from ftl.launcher.errors import FtlError, did_you_mean, one_of
from ftl.launcher.tasks.base import EVAL_FILE, LabelledTask, Predictions
from ftl.launcher.tasks.prediction import PredictionInputs


def _integer(value: Any) -> int | None:
    """An integer label (5, True, '5', ' 07 ', 5.0) as an int; None for anything else (a name, 5.5, '5.0')."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def _name(value: Any) -> str:
    """A label's name: its text, a whole-number float as its integer (1.0 is the label 1, as 1 and '1' are)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _look_alike(names: list[str]) -> tuple[str, str] | None:
    """Two label names that read the same (Positive / positive, or with a zero-width space), if any."""
    seen: dict[str, str] = {}
    for name in names:
        key = "".join(ch for ch in name if unicodedata.category(ch) != "Cf").strip().casefold()
        if key in seen:
            return seen[key], name
        seen[key] = name
    return None


def _empty_label(value: Any) -> bool:
    return is_missing(value) or value == ""


def _check_label_cells(raw: RawData, column: str) -> None:
    """A label is one name or number per row: a list or an object would become a class named by its printed
    form."""
    for row, value in enumerate(raw.dataset[column]):
        if isinstance(value, (list, dict)):
            raise wrong_type(
                raw,
                row,
                column,
                "task.label_column",
                value,
                expected="a label",
                fix="ftl would make its printed form a class: put one label name (or id) per row in the column",
            )


class SequenceClassification(LabelledTask):
    auto_model = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._int_labels_are_ids = bool(config.labels)

    @property
    def split_method(self) -> str:
        return "stratified"

    def stratify_column(self) -> str | None:
        return "labels"

    def column_keys(self) -> dict[str, str | None]:
        return {
            "text_column": self.config.text_column,
            "text_pair_column": self.config.text_pair_column,
            "label_column": self.config.label_column,
        }

    # ---- labels ---------------------------------------------------------------------------------
    def fit(self, train: RawData) -> None:
        self.check_columns(train)
        if self._names is not None:
            return
        _check_label_cells(train, self.config.label_column)
        values = train.dataset[self.config.label_column]
        missing = next((i for i, v in enumerate(values) if _empty_label(v)), None)
        if missing is not None:
            raise FtlError(
                f"{train.row_location(missing)}: empty label in column '{self.config.label_column}'"
            )
        if all(_integer(v) is not None for v in values):  # 0/1 or '5'/'7': sorted as numbers
            distinct = sorted({_integer(v) for v in values})
            self._int_labels_are_ids = distinct == list(range(len(distinct)))
            self._names = [str(v) for v in distinct]
        else:
            self._names = sorted({_name(v) for v in values})
        if len(self._names) < 2:
            raise FtlError(
                f"{train.what} ({train.description}): column '{self.config.label_column}' has a single label "
                f"({self._names[0]}); classification needs at least two"
            )
        twins = _look_alike(self._names)
        if twins:
            log(
                f"[yellow]{train.what}: labels {' and '.join(repr(n) for n in twins)} differ only in case or "
                "invisible characters, and are two classes; if they are one, fix the file (or list the names "
                "in task.labels)[/]"
            )

    def state(self) -> dict[str, Any]:
        return {**super().state(), "int_labels_are_ids": self._int_labels_are_ids}

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        self._int_labels_are_ids = state["int_labels_are_ids"]

    def encode_raw(self, raw: RawData, keep_columns: tuple[str, ...] = ()):
        self.check_columns(raw)
        assert self._names is not None, "fit() before encode_raw()"
        dataset = raw.dataset
        index = {name: i for i, name in enumerate(self._names)}
        _check_label_cells(raw, self.config.label_column)
        ids: list[int] = []
        for row, value in enumerate(dataset[self.config.label_column]):
            label_id = self._label_id(value, index)
            if label_id is None:
                shown = "an empty label" if _empty_label(value) else f"unknown label '{value}'"
                raise FtlError(
                    f"{raw.row_location(row)}: {shown} in column '{self.config.label_column}'"
                    f"{did_you_mean(str(value), self._names)}; known labels: {one_of(self._names)} "
                    + (
                        "(the run does not know this label: drop or fix those rows, or retrain with it in "
                        "task.labels)"
                        if raw.what == EVAL_FILE
                        else "(set task.labels to list them all)"
                    )
                )
            ids.append(label_id)
        keep = [self.config.text_column] + (
            [self.config.text_pair_column] if self.config.text_pair_column else []
        )
        keep += [c for c in keep_columns if c not in keep and c != "labels"]
        dataset = dataset.select_columns(keep).add_column("labels", ids)
        if self.config.text_pair_column:
            checked_text(raw, self.config.text_pair_column, "task.text_pair_column")
        texts = dataset[self.config.text_column]
        usable = usable_text(raw, self.config.text_column, "task.text_column", texts)
        if not usable:
            raise FtlError(
                f"{raw.what} ({raw.description}): every row has an empty '{self.config.text_column}'"
            )
        return dataset.select(usable) if len(usable) != len(texts) else dataset

    def _label_id(self, value: Any, index: dict[str, int]) -> int | None:
        """A label's id: its name, or an integer. Integers name labels whose names are integers ('5' is the
        name '5', whatever its position); otherwise (names like negative, positive) they are ids."""
        if _empty_label(value):
            return None
        for text in (
            _name(value),
            str(value).strip(),
        ):  # ('1.0' names a class of a run fitted before 1.0 was 1)
            if text in index:
                return index[text]
        number = _integer(value)
        if number is None:
            return None
        names_are_integers = all(_integer(name) is not None for name in self._names)
        if names_are_integers:
            return index.get(str(number))
        if self._int_labels_are_ids:
            return number if 0 <= number < len(self._names) else None
        return None

    def export_rows(self, rows) -> list[dict[str, Any]]:
        names = self._names or []
        exported = []
        for row in rows.to_list():
            label = row.pop("labels")
            exported.append({**row, self.config.label_column: names[label]})
        return exported

    # ---- tokens ---------------------------------------------------------------------------------
    def tokenize(self, dataset, tokenizer, split: str):
        text, pair = self.config.text_column, self.config.text_pair_column
        max_length = self.config.max_length

        def encode(batch: dict[str, list]) -> dict[str, list]:
            first = [str(t) for t in batch[text]]
            second = ["" if is_missing(t) else str(t) for t in batch[pair]] if pair else None
            encoded = tokenizer(first, second, truncation=True, max_length=max_length)
            encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
            return encoded

        return dataset.map(
            encode,
            batched=True,
            batch_size=2000,
            remove_columns=[c for c in dataset.column_names if c != "labels"],
        )

    def collator(self, tokenizer):
        return PaddingCollator(tokenizer)

    # ---- metrics --------------------------------------------------------------------------------
    def compute_metrics(self, dataset=None, tokenizer=None):
        def metrics(prediction) -> dict[str, float]:
            import numpy as np
            from sklearn.metrics import accuracy_score, f1_score

            logits = (
                prediction.predictions[0]
                if isinstance(prediction.predictions, tuple)
                else prediction.predictions
            )
            predicted = np.asarray(logits).argmax(-1)
            labels = np.asarray(prediction.label_ids)
            return {
                "accuracy": float(accuracy_score(labels, predicted)),
                "f1_macro": float(
                    f1_score(
                        labels, predicted, average="macro", labels=range(len(self._names)), zero_division=0
                    )
                ),
            }

        return metrics

    def write_predictions(self, trainer, dataset, raw_rows, directory: Path) -> Predictions | None:
        import numpy as np

        output = trainer.predict(dataset, metric_key_prefix="predict")  # collective: every worker predicts
        if not trainer.is_world_process_zero():
            return None
        logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
        logits = np.asarray(logits, dtype=np.float64)
        shifted = np.exp(logits - logits.max(-1, keepdims=True))
        probabilities = shifted / shifted.sum(-1, keepdims=True)
        predicted = probabilities.argmax(-1)
        path = directory / "misclassified.jsonl"
        texts = raw_rows[self.config.text_column]
        pairs = raw_rows[self.config.text_pair_column] if self.config.text_pair_column else None
        labels = raw_rows["labels"]
        wrong = [i for i in range(len(labels)) if predicted[i] != labels[i]]
        wrong.sort(key=lambda i: -probabilities[i, predicted[i]])
        with path.open("w", encoding="utf-8") as handle:
            for i in wrong:
                row = {"row": i, "text": texts[i]}
                if pairs is not None:
                    row["text_pair"] = pairs[i]
                row.update(
                    label=self._names[labels[i]],
                    predicted=self._names[int(predicted[i])],
                    confidence=round(float(probabilities[i, predicted[i]]), 4),
                )
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        return Predictions(path)

    # ---- prediction without labels ----------------------------------------------------------------
    def plain_text_column(self) -> str | None:
        return None if self.config.text_pair_column else self.config.text_column

    def encode_for_prediction(self, raw: RawData, tokenizer) -> PredictionInputs:
        """Rows of text (and text pairs) tokenised as in training; rows with an empty text get no prediction."""
        from ftl.launcher.tasks.prediction import (
            cut_note,
            encode_features,
            is_blank,
            longer_than,
            require_columns,
        )

        c = self.config
        require_columns(raw, {"text_column": c.text_column, "text_pair_column": c.text_pair_column})
        texts = raw.dataset[c.text_column]
        pairs = raw.dataset[c.text_pair_column] if c.text_pair_column else None
        keep = [i for i, text in enumerate(texts) if not is_blank(text)]
        first = [str(texts[i]) for i in keep]
        second = (
            [("" if is_missing(pairs[i]) else str(pairs[i])) for i in keep] if pairs is not None else None
        )
        features = encode_features(tokenizer, first, second, truncation=True, max_length=c.max_length)
        long_rows = longer_than(tokenizer, c.max_length, first, second) if first else 0
        return PredictionInputs(
            rows=len(texts),
            features=features,
            feature_rows=keep,
            skipped={i: f"empty '{c.text_column}'" for i in set(range(len(texts))) - set(keep)},
            notes=cut_note(long_rows, len(first), c.max_length),
        )

    def predictions_to_rows(self, inputs: PredictionInputs, outputs: list, tokenizer) -> list[dict[str, Any]]:
        """predicted (label name), predicted_id, score (its probability), probabilities (per label)."""
        from ftl.launcher.tasks.prediction import softmax

        names = self._names or []
        rows: list[dict[str, Any]] = [
            {"predicted": None, "predicted_id": None, "score": None, "probabilities": None}
            for _ in range(inputs.rows)
        ]
        for row, (logits,) in zip(inputs.feature_rows, outputs, strict=True):
            probabilities = softmax(logits)
            best = int(probabilities.argmax())
            rows[row] = {
                "predicted": names[best],
                "predicted_id": best,
                "score": round(float(probabilities[best]), 6),
                "probabilities": {
                    name: round(float(p), 6) for name, p in zip(names, probabilities, strict=True)
                },
            }
        return rows
