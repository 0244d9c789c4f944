"""Readers for the nested and columnar formats `datasets` has no loader for: CoNLL columns and SQuAD JSON.

Both return plain columns plus, per row, the file and line it starts at, so an error in a row can name its
file:line.

* CoNLL (`.conll`, `.iob`, `.bio`): one token per line, whitespace-separated columns, the token first and the
  tag last (CoNLL-2003 keeps POS and chunk columns in between); a blank line ends a sentence; `-DOCSTART-`
  lines are skipped. Rows: `tokens` (list of str) and `tags` (list of str). A file with a single column holds
  tokens only (text to predict on).
* SQuAD v1.1/v2.0 JSON (`{"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}`): one row per
  question, in the columns of the hub's `squad` dataset: id, title, context, question, answers
  ({"text": [...], "answer_start": [...]}); v2.0's unanswerable questions have empty answer lists.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftl.launcher.errors import FtlError

CONLL_TOKENS, CONLL_TAGS = "tokens", "tags"
SQUAD_COLUMNS = ("id", "title", "context", "question", "answers")


@dataclass
class Columns:
    """Rows as columns, with where each row starts (file, 1-based line) when rows have lines."""

    columns: dict[str, list[Any]]
    starts: list[tuple[Path, int]] = field(default_factory=list)


def read_conll(files: list[Path], what: str) -> Columns:
    tokens: list[list[str]] = []
    tags: list[list[str]] = []
    starts: list[tuple[Path, int]] = []
    widths: set[int] = set()
    for file in files:
        sentence: list[str] = []
        sentence_tags: list[str] = []
        start = 0
        with file.open(encoding="utf-8") as handle:
            try:
                lines = handle.read().splitlines()
            except UnicodeDecodeError as exc:
                raise FtlError(
                    f"{what}: {file} is not UTF-8 text ({exc.reason}); convert it to UTF-8"
                ) from None
        for number, line in enumerate([*lines, ""], start=1):
            parts = line.split()
            if parts and parts[0] == "-DOCSTART-":
                continue
            if not parts:
                if sentence:
                    tokens.append(sentence)
                    tags.append(sentence_tags)
                    starts.append((file, start))
                sentence, sentence_tags = [], []
                continue
            widths.add(min(len(parts), 2))
            if len(widths) > 1:
                raise FtlError(
                    f"{file}:{number}: expected 'token<TAB>tag' like the lines before it, got {line.strip()!r}; "
                    "every line of a CoNLL file needs the same columns (token first, tag last)"
                )
            if not sentence:
                start = number
            sentence.append(parts[0])
            sentence_tags.append(parts[-1])
    if not tokens:
        raise FtlError(f"{what}: {', '.join(map(str, files))} holds no sentences")
    columns: dict[str, list[Any]] = {CONLL_TOKENS: tokens}
    if widths != {1}:
        columns[CONLL_TAGS] = tags
    return Columns(columns, starts)


_SQUAD_KEYS = (re.compile(rb'"data"\s*:'), re.compile(rb'"paragraphs"\s*:'))


def is_squad(file: Path) -> bool:
    """A .json file holding a SQuAD-style document: a `{` document (after any UTF-8 byte order mark) with the
    keys "data" and "paragraphs", found by scanning its bytes without parsing it."""
    with file.open("rb") as handle:
        head = handle.read(1 << 16)
        if not head.removeprefix(b"\xef\xbb\xbf").lstrip().startswith(b"{"):
            return False
        found = [False, False]
        while head:  # a long title or context may come before the first "paragraphs"
            found = [seen or bool(key.search(head)) for seen, key in zip(found, _SQUAD_KEYS, strict=True)]
            if all(found):
                return True
            more = handle.read(1 << 20)
            head = head[-64:] + more if more else b""
    return False


def read_squad(files: list[Path], what: str) -> Columns:
    columns: dict[str, list[Any]] = {name: [] for name in SQUAD_COLUMNS}
    for file in files:
        try:
            document = json.loads(file.read_text(encoding="utf-8-sig"))
        except UnicodeDecodeError as exc:
            raise FtlError(f"{what}: {file} is not UTF-8 text ({exc.reason}); convert it to UTF-8") from None
        except json.JSONDecodeError as exc:
            raise FtlError(f"{file}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        articles = document.get("data") if isinstance(document, dict) else None
        if not isinstance(articles, list):
            raise FtlError(f"{what}: {file} is not SQuAD JSON (no top-level 'data' list of articles)")
        for a, article in enumerate(articles):
            title = str(article.get("title", f"article {a}"))
            for p, paragraph in enumerate(article.get("paragraphs", [])):
                context = paragraph.get("context")
                where = f"{file}: data[{a}].paragraphs[{p}]"
                if not isinstance(context, str):
                    raise FtlError(f"{where}: no 'context' text")
                for q, qa in enumerate(paragraph.get("qas", [])):
                    _add_question(columns, qa, title, context, f"{where}.qas[{q}]")
    if not columns["id"]:
        raise FtlError(f"{what}: {', '.join(map(str, files))} holds no questions")
    return Columns(columns)


def _add_question(columns: dict[str, list[Any]], qa: dict, title: str, context: str, where: str) -> None:
    question = qa.get("question")
    if not isinstance(question, str) or not question.strip():
        raise FtlError(f"{where}: no 'question' text")
    texts, offsets = [], []
    for answer in [] if qa.get("is_impossible") else qa.get("answers", []):
        text, start = answer.get("text"), answer.get("answer_start")
        if not isinstance(text, str) or not isinstance(start, int):
            raise FtlError(f"{where}: an answer needs 'text' and an integer 'answer_start'")
        if context[start : start + len(text)] != text:
            raise FtlError(
                f"{where}: answer {text!r} is not at answer_start {start} of the context "
                f"(found {context[start : start + len(text)]!r}); fix the offset"
            )
        texts.append(text)
        offsets.append(start)
    columns["id"].append(str(qa.get("id", f"{title}-{len(columns['id'])}")))
    columns["title"].append(title)
    columns["context"].append(context)
    columns["question"].append(question)
    columns["answers"].append({"text": texts, "answer_start": offsets})


_CSV_LINES_LIMIT = 200 << 20  # bytes: a bigger file is not parsed again for line numbers


def csv_row_lines(file: Path, rows: int) -> list[int] | None:
    """The line each data row of a .csv file starts on, as pandas reads it (quoted fields may span lines, blank
    lines are skipped); None when the file is too big to parse again or its count of rows differs from `rows`."""
    import csv

    if file.stat().st_size > _CSV_LINES_LIMIT:
        return None
    starts = []
    with file.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
        reader = csv.reader(handle)
        if next(reader, None) is None:
            return None
        before = reader.line_num
        for record in reader:
            if any(cell.strip() for cell in record):
                starts.append(before + 1)
            before = reader.line_num
    return starts if len(starts) == rows else None
