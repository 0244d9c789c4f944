"""Why a text data file did not parse, as file:line: the parsers' own errors name neither.

Called only after `datasets` failed to read csv, tsv, json lines or text files, so a good file costs nothing.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ftl.launcher.errors import FtlError


def diagnose(files: list[Path], fmt: str, what: str) -> None:
    """Raise an FtlError naming the first bad line of `files`; return when no problem is found."""
    for file in files:
        lines = _decoded_lines(file, what)
        if fmt in ("csv", "tsv"):
            _check_fields(file, lines, fmt)
        elif fmt == "json" and lines and lines[0].lstrip().startswith("["):
            _check_json_document(file, "\n".join(lines))
        elif fmt in ("json", "jsonl"):
            _check_json_lines(file, lines)


def _decoded_lines(file: Path, what: str) -> list[str]:
    raw = file.read_bytes()
    try:
        return raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        byte = raw[exc.start : exc.start + 1].hex()
        raise FtlError(
            f"{file}:{line}: not UTF-8 text (byte 0x{byte}; {what}); save the file as UTF-8 "
            "(e.g. iconv -f latin1 -t utf-8)"
        ) from None


def _check_fields(file: Path, lines: list[str], fmt: str) -> None:
    if fmt == "tsv":  # read with quoting off: a field is whatever lies between tabs
        rows = ((number, line.split("\t")) for number, line in enumerate(lines, start=1))
    else:
        rows = ((reader.line_num, row) for reader in [csv.reader(lines)] for row in reader)
    header: list[str] | None = None
    for number, row in rows:
        if header is None:
            header = row
            continue
        if row and len(row) != len(header):
            separator = "tabs" if fmt == "tsv" else "commas (quote fields that contain commas)"
            raise FtlError(
                f"{file}:{number}: {len(row)} fields where the header has {len(header)} "
                f"({', '.join(header)}); fix the row's {separator}"
            )


def _check_json_document(file: Path, text: str) -> None:
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        raise FtlError(f"{file}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None


def _check_json_lines(file: Path, lines: list[str]) -> None:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FtlError(
                f"{file}:{number}: not valid JSON ({exc.msg} at column {exc.colno}); one JSON object per line"
            ) from None
        if not isinstance(value, dict):
            raise FtlError(
                f"{file}:{number}: a JSON line must be an object of columns, got {type(value).__name__}"
            )
