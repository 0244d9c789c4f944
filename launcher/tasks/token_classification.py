"""Token classification (NER, POS): word tags aligned to subwords, entity-level seqeval metrics, error files.

Alignment: a word's tag goes on its first subword and the other subwords get -100 (ignored by the loss), or
with `label_all_subwords` every subword is trained (continuations of B-X get I-X). Evaluation data always
uses first-subword labels, so every metric counts each word exactly once, and predictions are read back at
the same positions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftl.launcher.console import log
from ftl.launcher.data.collate import PaddingCollator
from ftl.launcher.data.sources import RawData
from ftl.launcher.errors import FtlError, did_you_mean, one_of
from ftl.launcher.tasks.base import EVAL_FILE, LabelledTask, Predictions
from ftl.launcher.tasks.ner_errors import write_error_analysis
from ftl.launcher.tasks.ner_metrics import entity_scores
from ftl.launcher.tasks.ner_prediction import encode_words, tag_words
from ftl.launcher.tasks.prediction import PredictionInputs
from ftl.launcher.token_labels import IGNORE_INDEX

WORDS, WORD_TAGS = "words", "word_tags"  # normalised columns: the words and their tag ids
TEXT_COLUMN = "text"  # ftl predict: plain text to split on whitespace, when the tokens column is absent
_PREFIXES = ("B-", "I-", "E-", "S-")  # what seqeval reads: IOB1, IOB2 (BIO) and BIOES tags, and O
_READ_PREFIXES = (*_PREFIXES, "B_", "I_", "E_", "S_")  # seqeval's default mode also reads B_PER (type '_PER')


class TokenClassification(LabelledTask):
    auto_model = "AutoModelForTokenClassification"
    peft_task_type = "TOKEN_CLS"

    @property
    def split_method(self) -> str:
        return "random"

    def column_keys(self) -> dict[str, str | None]:
        return {"tokens_column": self.config.tokens_column, "tags_column": self.config.tags_column}

    # ---- tags -----------------------------------------------------------------------------------
    def fit(self, train: RawData) -> None:
        self.check_columns(train)
        if self._names is None:
            class_names = _class_label_names(train.dataset, self.config.tags_column)
            self._names = class_names if class_names is not None else self._tags_in(train)
        self._check_scheme(train)

    def _tags_in(self, train: RawData) -> list[str]:
        """The tag names of the training rows: O first, then by entity type."""
        seen: set[str] = set()
        for row, tags in enumerate(train.dataset[self.config.tags_column]):
            if not isinstance(tags, list):
                raise FtlError(
                    f"{train.row_location(row)}: column '{self.config.tags_column}' must hold a list of tags, "
                    f"got {type(tags).__name__}"
                )
            _check_no_missing_tag(tags, train.row_location(row))
            seen.update(str(t) for t in tags)
        if any(t.lstrip("-").isdigit() for t in seen):
            raise FtlError(
                f"{train.what} ({train.description}): tags are numbers; list their names in task.labels"
            )
        names = sorted(seen, key=lambda t: (t != "O", t.split("-", 1)[-1], t))
        if len(names) < 2:
            raise FtlError(f"{train.what} ({train.description}): only the tag {names} occurs; add data")
        return names

    def _check_scheme(self, train: RawData) -> None:
        """Refuse tags seqeval misreads (b-per, o, BILOU's U-/L-; plain tags such as PER are named in a warning),
        and IOB1 data (entities that start with I-) scored in strict mode, where it would find no entity: both
        give an entity F1 that means nothing."""
        names = self._names or []
        unreadable = _unreadable_tags(names)
        plain = [
            t for t in unreadable if "/" in _renamed(t)
        ]  # PER: an IO-scheme entity, or not an entity at all
        if plain:  # (punctuation or aspect tags with O are not entities): said, not refused
            log(
                f"[yellow]{train.what}: {_scheme_problem(plain)} if they are entities; tag accuracy is right "
                "either way[/]"
            )
        unreadable = [t for t in unreadable if t not in plain]  # b-per, o, U-/L-: misnamed, refused
        if not unreadable and not self.config.strict:
            return
        iob1_starts, b_tags, first_iob1 = 0, 0, None
        for row, tags in enumerate(train.dataset[self.config.tags_column]):
            if not isinstance(tags, list):
                continue  # encode_raw names the row
            row_names = [_tag_name(t, names) for t in tags]
            if unreadable and any(t in unreadable for t in row_names):
                raise FtlError(f"{train.row_location(row)}: {_scheme_problem(unreadable)}")
            if self.config.strict:
                starts = _i_tags_starting_entities(row_names)
                if starts and first_iob1 is None:
                    first_iob1 = (row, starts[0])
                iob1_starts += len(starts)
                b_tags += sum(1 for t in row_names if t.startswith(("B-", "S-")))
        if unreadable:  # in task.labels or the dataset's tag names, not in the rows
            where = "task.labels" if self.config.labels else f"{train.what} ({train.description})"
            raise FtlError(f"{where}: {_scheme_problem(unreadable)}")
        if first_iob1 is not None and iob1_starts > b_tags:
            row, tag = first_iob1
            raise FtlError(
                f"{train.row_location(row)}: entities start with I- tags ('{tag}' after O or another type: IOB1), "
                "but task.strict: true scores IOB2, where an entity starts with B-, and would find none; set "
                "task.strict: false or tag the first word of each entity B-"
            )

    def encode_raw(self, raw: RawData, keep_columns: tuple[str, ...] = ()):
        self.check_columns(raw)
        assert self._names is not None, "fit() before encode_raw()"
        tokens_column, tags_column = self.config.tokens_column, self.config.tags_column
        index = {name: i for i, name in enumerate(self._names)}
        ids_are_tags = _class_label_names(raw.dataset, tags_column) is not None or bool(self.config.labels)
        words_out, tags_out, keep_rows = [], [], []
        columns = raw.dataset.select_columns([tokens_column, tags_column])
        for row, (words, tags) in enumerate(zip(columns[tokens_column], columns[tags_column], strict=True)):
            where = raw.row_location(row)
            if not isinstance(words, list) or not isinstance(tags, list):
                raise FtlError(
                    f"{where}: '{tokens_column}' and '{tags_column}' must be lists (one tag per word)"
                )
            if len(words) != len(tags):
                raise FtlError(
                    f"{where}: {len(words)} words but {len(tags)} tags; every word needs exactly one tag"
                )
            if not words:
                continue
            _check_no_missing_tag(tags, where)
            ids = []
            for tag in tags:
                tag_id = _tag_id(tag, index, ids_are_tags, len(self._names))
                if tag_id is None:
                    fix = (
                        "the run does not know this tag: drop or fix those rows, or retrain with it in "
                        "task.labels"
                        if raw.what == EVAL_FILE
                        else "set task.labels to list them all"
                    )
                    raise FtlError(
                        f"{where}: unknown tag '{tag}' in column '{tags_column}'{did_you_mean(str(tag), self._names)}; "
                        f"known tags: {one_of(self._names)} ({fix})"
                    )
                ids.append(tag_id)
            words_out.append([str(w) for w in words])
            tags_out.append(ids)
            keep_rows.append(row)
        if not words_out:
            raise FtlError(f"{raw.what} ({raw.description}): every row has an empty '{tokens_column}'")
        import datasets

        dataset = raw.dataset.select(keep_rows) if len(keep_rows) != len(raw.dataset) else raw.dataset
        kept = {c: dataset[c] for c in keep_columns if c not in (tokens_column, tags_column)}
        return datasets.Dataset.from_dict({**kept, WORDS: words_out, WORD_TAGS: tags_out})

    def export_rows(self, rows) -> list[dict[str, Any]]:
        names = self._names or []
        exported = []
        for row in rows.to_list():
            words, tags = row.pop(WORDS), row.pop(WORD_TAGS)
            exported.append(
                {**row, self.config.tokens_column: words, self.config.tags_column: [names[t] for t in tags]}
            )
        return exported

    # ---- subwords -------------------------------------------------------------------------------
    def tokenize(self, dataset, tokenizer, split: str):
        if not getattr(tokenizer, "is_fast", False):
            raise FtlError(
                "task: token classification needs a fast tokenizer (word alignment); this model's tokenizer is "
                "not one (set model.tokenizer to a fast tokenizer)"
            )
        names = self._names or []
        all_subwords = self.config.label_all_subwords and split == "train"
        continuation = {
            i: names.index("I-" + n[2:])
            for i, n in enumerate(names)
            if n.startswith("B-") and "I-" + n[2:] in names
        }

        def encode(batch: dict[str, list]) -> dict[str, list]:
            encoded = tokenizer(
                batch[WORDS], is_split_into_words=True, truncation=True, max_length=self.config.max_length
            )
            labels, scored = [], []
            for i, tags in enumerate(batch[WORD_TAGS]):
                word_ids = encoded.word_ids(i)
                row, previous = [], None
                for word in word_ids:
                    if word is None:
                        row.append(IGNORE_INDEX)
                    elif word != previous:
                        row.append(tags[word])
                    else:
                        row.append(continuation.get(tags[word], tags[word]) if all_subwords else IGNORE_INDEX)
                    previous = word
                labels.append(row)
                scored.append(len({w for w in word_ids if w is not None}))
            encoded["labels"] = labels
            encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
            encoded["words_scored"] = scored
            encoded["words_total"] = [len(tags) for tags in batch[WORD_TAGS]]
            return encoded

        return dataset.map(encode, batched=True, batch_size=1000, remove_columns=dataset.column_names)

    def dataset_stats(self, dataset, tokenizer) -> dict[str, Any]:
        stats = super().dataset_stats(dataset, tokenizer)
        stats["words"] = int(sum(dataset["words_total"]))
        stats["words_beyond_max_length"] = int(sum(dataset["words_total"]) - sum(dataset["words_scored"]))
        return stats

    def collator(self, tokenizer):
        return PaddingCollator(tokenizer, label_pad_id=IGNORE_INDEX, drop=("words_scored", "words_total"))

    # ---- metrics --------------------------------------------------------------------------------
    def preprocess_logits_for_metrics(self):
        def argmax(logits, labels):
            return (logits[0] if isinstance(logits, tuple) else logits).argmax(-1)

        return argmax

    def compute_metrics(self, dataset=None, tokenizer=None):
        def metrics(prediction) -> dict[str, float]:
            gold, predicted = self.word_tags(prediction.predictions, prediction.label_ids)
            return entity_scores(gold, predicted, strict=self.config.strict)

        return metrics

    def word_tags(self, predictions, label_ids) -> tuple[list[list[str]], list[list[str]]]:
        """Gold and predicted tag names per row, one per scored word (the positions with a label)."""
        import numpy as np

        names = self._names or []
        predictions, label_ids = np.asarray(predictions), np.asarray(label_ids)
        gold, predicted = [], []
        for row_predictions, row_labels in zip(predictions, label_ids, strict=True):
            keep = row_labels != IGNORE_INDEX
            gold.append([names[i] for i in row_labels[keep]])
            predicted.append([names[i] for i in row_predictions[keep]])
        return gold, predicted

    def write_predictions(self, trainer, dataset, raw_rows, directory: Path) -> Predictions | None:
        output = trainer.predict(dataset, metric_key_prefix="predict")  # collective: every worker predicts
        if not trainer.is_world_process_zero():
            return None
        gold, predicted = self.word_tags(output.predictions, output.label_ids)
        return Predictions(
            write_error_analysis(directory, raw_rows[WORDS], gold, predicted, strict=self.config.strict)
        )

    # ---- prediction without labels (launcher/tasks/ner_prediction.py) -------------------------------
    def encode_for_prediction(self, raw: RawData, tokenizer) -> PredictionInputs:
        """Words from the tokens column, or plain text from a `text` column; long rows in windows of words."""
        column = self.config.tokens_column
        if column not in raw.dataset.column_names and TEXT_COLUMN in raw.dataset.column_names:
            column = TEXT_COLUMN
        return encode_words(raw, tokenizer, column=column, max_length=self.config.max_length)

    def predictions_to_rows(self, inputs: PredictionInputs, outputs: list, tokenizer) -> list[dict[str, Any]]:
        return tag_words(inputs, outputs, self._names or [])


def _class_label_names(dataset, column: str) -> list[str] | None:
    """Tag names of a hub dataset whose column is a Sequence of ClassLabel (e.g. wnut_17's ner_tags)."""
    feature = getattr(dataset, "features", {}).get(column)
    inner = getattr(feature, "feature", None)
    names = getattr(inner, "names", None)
    return list(names) if names else None


def _tag_id(tag: Any, index: dict[str, int], ids_are_tags: bool, count: int) -> int | None:
    if isinstance(tag, int) and not isinstance(tag, bool):
        return tag if ids_are_tags and 0 <= tag < count else None
    text = str(tag).strip()
    if text in index:
        return index[text]
    if ids_are_tags and text.isdigit() and int(text) < count:
        return int(text)
    return None


def _check_no_missing_tag(tags: list, where: str) -> None:
    for number, tag in enumerate(tags, 1):
        if tag is None or (isinstance(tag, str) and not tag.strip()):
            shown = "null" if tag is None else "empty"
            raise FtlError(f"{where}: tag {number} is {shown}; every word needs a tag")


def _tag_name(tag: Any, names: list[str]) -> str:
    if isinstance(tag, int) and not isinstance(tag, bool) and 0 <= tag < len(names):
        return names[tag]
    return str(tag).strip()


def _unreadable_tags(names: list[str]) -> list[str]:
    """Tags no scheme seqeval reads (O, B-X, I-X, E-X, S-X) in a set of NER tags. A set with neither O nor a
    prefixed tag is not NER (POS tags such as NN, VB) and is left alone."""
    readable = [n for n in names if n in ("O", "B", "I", "E", "S") or n[:2] in _READ_PREFIXES]
    if not readable:
        return []
    return [n for n in names if n not in readable and not n.lstrip("-").isdigit()]


def _renamed(tag: str) -> str:
    """What an unreadable tag should be called."""
    if tag.lower() == "o":
        return "O"
    if tag[:2].upper() in _PREFIXES:  # b-per
        return tag[0].upper() + tag[1:]
    if tag[:2] in ("U-", "L-"):  # BILOU
        return {"U-": "S-", "L-": "E-"}[tag[:2]] + tag[2:]
    return f"B-{tag}/I-{tag}"


def _scheme_problem(unreadable: list[str]) -> str:
    """'tags 'LOC', 'PER' are not BIO tags ...; rename LOC to B-LOC/I-LOC, PER to B-PER/I-PER (...)'."""
    shown = unreadable[:5]
    more = f" and {len(unreadable) - len(shown)} more" if len(unreadable) > len(shown) else ""
    several = len(unreadable) > 1
    what = "tags" if several else "tag"
    are = "are not BIO tags" if several else "is not a BIO tag"
    renames = ", ".join(f"{t} to {_renamed(t)}" for t in shown)
    plain = any("/" in _renamed(t) for t in shown)
    return (
        f"{what} {', '.join(repr(t) for t in shown)}{more} {are} (O, B-X, I-X, or BIOES E-X, S-X), so entity F1 "
        f"cannot read {'them' if several else 'it'}; rename {renames}"
        + (" (B- on an entity's first word, I- on the rest)" if plain else "")
    )


def _i_tags_starting_entities(tags: list[str]) -> list[str]:
    """The I-X tags that begin an entity (at the start, after O or after another type): IOB1 style."""
    found, previous = [], "O"
    for tag in tags:
        if tag.startswith("I-") and (
            previous == "O" or previous[2:] != tag[2:] or previous[:2] in ("E-", "S-")
        ):
            found.append(tag)
        previous = tag
    return found
