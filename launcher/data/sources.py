"""Load one `DataSource` (local file, glob, directory, or hub id) into a `datasets.Dataset`."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ftl.launcher.data import layouts, readers
from ftl.launcher.data.diagnose import diagnose
from ftl.launcher.errors import FtlError, first_line
from ftl.launcher.files import readable_file
from ftl.launcher.locations import find_local, glob_matches, looked_in
from ftl.launcher.recipe.data import DataSource

EXTENSION_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".txt": "text",
    ".text": "text",
    ".md": "text",
    ".parquet": "parquet",
    ".conll": "conll",
    ".iob": "conll",
    ".bio": "conll",
}
SAVED = "save_to_disk"  # a folder written by datasets.Dataset.save_to_disk
# Lines before the first data row, for pointing at file:line (csv/tsv have a header line).
_HEADER_LINES = {"csv": 1, "tsv": 1, "jsonl": 0}


@dataclass
class RawData:
    """Where one split's rows come from, fingerprinted before reading (so caches can skip the read)."""

    description: str  # '/abs/sst2/train.tsv' or 'hub:stanfordnlp/sst2[train]'
    fingerprint: str
    format: str
    files: list[Path]
    source: DataSource
    what: str
    _dataset: object = None  # datasets.Dataset, read on first use
    _row_starts: list[tuple[Path, int]] | None = None  # file and line of each row, for multi-line rows
    _ready: bool = False
    _csv_lines: list[int] | None = (
        None  # the line of each row of a .csv (rows may span lines), found when asked
    )
    # rows dropped or coerced while a task read them: kind -> reason -> {"rows": n, "first": file:line}
    notes: dict = field(default_factory=dict)

    def note(self, kind: str, reason: str, row: int) -> None:
        """Count a row `kind` ('dropped' or 'coerced') for `reason` (see data/cells.py)."""
        entry = self.notes.setdefault(kind, {}).setdefault(
            reason, {"rows": 0, "first": self.row_location(row)}
        )
        entry["rows"] += 1

    def row_report(self) -> list[str]:
        """One line per kind: 'data.train: dropped 2 of 40 rows: no 'text' (2, first t.jsonl:3)'."""
        lines = []
        total = len(self.dataset)
        for kind, reasons in self.notes.items():
            count = sum(r["rows"] for r in reasons.values())
            why = "; ".join(f"{reason} ({r['rows']}, first {r['first']})" for reason, r in reasons.items())
            lines.append(f"{self.what}: {kind} {count} of {total} rows: {why}")
        return lines

    @property
    def dataset(self):
        if not self._ready:
            if self._dataset is None:
                self._dataset, self._row_starts = _read(self.files, self.format, self.source, self.what)
            self._dataset = _renamed(self._dataset, self.source.rename, self.what)
            if len(self._dataset) == 0:
                raise FtlError(f"{self.what}: {self.description} holds no rows")
            self._ready = True
        return self._dataset

    def row_location(self, index: int) -> str:
        """file:line of a row when rows have lines (one per line, or CoNLL sentences), else 'row N'."""
        if self._row_starts:
            file, line = self._row_starts[index]
            return f"{file}:{line}"
        if self.format == "csv" and len(self.files) == 1:
            if self._csv_lines is None:
                self._csv_lines = readers.csv_row_lines(self.files[0], len(self.dataset)) or []
            if self._csv_lines:
                return f"{self.files[0]}:{self._csv_lines[index]}"
        offset = _HEADER_LINES.get(self.format)
        if offset is not None and len(self.files) == 1:
            return f"{self.files[0]}:{index + 1 + offset}"
        return f"{self.description} row {index + 1}"


def load_source(source: DataSource, recipe_dirs: list[Path], what: str) -> RawData:
    """Local path first, then the hub; an FtlError names the key and where ftl looked."""
    local = find_local(source.path, recipe_dirs) if source.path else None
    if local is not None:
        return _local(local, source, what)
    if source.hub:
        return _load_hub(source, what, missing_path=source.path, recipe_dirs=recipe_dirs)
    raise FtlError(
        f"{what}.path: '{source.path}' not found (looked in {looked_in(recipe_dirs)}); "
        f"set FTL_DATA_HOME to the folder that holds it, or give {what}.hub for a hub dataset"
    )


def load_file(path: Path, what: str, source: DataSource | None = None) -> RawData:
    """An explicit file given on the command line (e.g. `ftl eval --data`)."""
    if not path.is_dir():
        readable_file(path, what)
    return _local(path, source or DataSource(path=str(path)), what)


def _local(path: Path, source: DataSource, what: str) -> RawData:
    saved = layouts.saved_dataset(path, what) if path.is_dir() else None
    files = saved or _files_of(path, what)
    fmt = SAVED if saved else _format_of(files, source, what, path)
    for file in files:
        readable_file(file, what)
        if file.stat().st_size == 0:
            raise FtlError(f"{what}: {file} is empty")
        if not os.access(file, os.R_OK):
            raise FtlError(f"{what}: {file} is not readable (permissions)")
        if fmt not in ("parquet", SAVED):
            layouts.check_text_encoding(file, what)
    shown = str(path) if len(files) == 1 or saved else f"{path} ({len(files)} files)"
    return RawData(shown, fingerprint_files(files, fmt, source), fmt, files, source, what)


def _files_of(path: Path, what: str) -> list[Path]:
    """The data files a path names: itself, a glob's matches, or a folder's files. As in `datasets`, hidden
    files and a folder's README.md (and dataset metadata) are not data; a folder's files of unknown kinds are
    left out too, but named when nothing else is there."""
    if path.is_dir():
        entries = sorted(p for p in path.iterdir() if p.is_file() and not _ignored(p))
        files = [p for p in entries if _data_file(p)]
        if not files:
            raise layouts.no_data_files(path, entries, _data_file, what)
        layouts.check_splits(path, files, what)
        return files
    if not path.exists() and any(ch in str(path) for ch in "*?["):
        files = [p for p in glob_matches(path) if p.is_file() and not _ignored(p)]
        if not files:
            raise FtlError(f"{what}: no data files match {path}")
        layouts.check_splits(path, files, what)
        return files
    return [path]


def _data_file(path: Path) -> bool:
    return path.suffix.lower() in EXTENSION_FORMATS and not _ignored(path)


def _ignored(path: Path) -> bool:
    from datasets.data_files import FILES_TO_IGNORE

    return path.name.startswith((".", "__")) or path.name in FILES_TO_IGNORE


def _format_of(files: list[Path], source: DataSource, what: str, path: Path) -> str:
    if source.format != "auto":
        return source.format
    formats = {f: EXTENSION_FORMATS.get(f.suffix.lower()) for f in files}
    if set(formats.values()) == {"json"} and all(readers.is_squad(f) for f in files):
        return "squad"
    if None in formats.values():
        unknown = next(f for f, fmt in formats.items() if fmt is None)
        raise FtlError(
            f"{what}: cannot tell the format of {unknown} from its extension; set {what}.format to one of "
            f"{', '.join(sorted(set(EXTENSION_FORMATS.values())))}"
        )
    kinds = sorted(set(formats.values()), key=lambda k: (-sum(v == k for v in formats.values()), k == "text"))
    if len(kinds) > 1:
        main = kinds[0]
        stray = [f.name for f, fmt in formats.items() if fmt != main]
        raise FtlError(
            f"{what}: {path} mixes formats: {', '.join(stray[:5])} among its {main} files; move "
            f"{'it' if len(stray) == 1 else 'them'} out, or point {what} at the {main} files alone (e.g. a glob "
            f"like {path.name}/*{next(f.suffix for f, fmt in formats.items() if fmt == main)})"
        )
    return kinds[0]


def _read(files: list[Path], fmt: str, source: DataSource, what: str):
    """(datasets.Dataset, the file:line each row starts at or None)."""
    import datasets

    datasets.disable_progress_bars()
    # its parsers log the exception they raise: the one line ftl prints below says it better
    logging.getLogger("datasets").setLevel(logging.CRITICAL)
    names = [str(f) for f in files]
    try:
        if fmt in ("conll", "squad"):
            read = readers.read_conll if fmt == "conll" else readers.read_squad
            found = read(files, what)
            return datasets.Dataset.from_dict(found.columns), found.starts or None
        if fmt in ("csv", "tsv"):
            _check_header(files, fmt)
            kwargs = {"delimiter": "\t", "quoting": 3} if fmt == "tsv" else {}
            # only an empty cell is missing: pandas would also take the texts NA, None, null, n/a, nan ... for
            # missing values and drop those rows (or fail on a label named NA)
            kwargs.update(keep_default_na=False, na_values=[""])
            return datasets.load_dataset("csv", data_files=names, split="train", **kwargs), None
        if fmt in ("json", "jsonl"):
            rows = layouts.json_rows(files[0], what) if fmt == "json" else None
            if isinstance(rows, dict):
                return _columns_dataset(files, rows, what), None
            kwargs = {"field": rows, "encoding": "utf-8-sig"}  # a byte order mark is no part of the JSON
            return datasets.load_dataset("json", data_files=names, split="train", **kwargs), None
        if fmt == SAVED:  # in memory: a mapped copy must not be cached beside the user's files
            return datasets.load_from_disk(str(files[0].parent), keep_in_memory=True), None
        if fmt == "parquet":
            return datasets.load_dataset("parquet", data_files=names, split="train"), None
        if fmt == "text":
            text = datasets.load_dataset(
                "text", data_files=names, split="train", sample_by=source.text_sample_by
            )
            return text, None
    except FtlError:
        raise
    except Exception as exc:  # parsers raise many types; the user needs the file and the first line of why
        reason = first_line(exc)
        if "corresponds to no data" in reason:
            raise FtlError(f"{what}: {', '.join(names)} holds no rows (only a header?)") from None
        if fmt in ("csv", "tsv", "json", "jsonl", "text"):
            diagnose(files, fmt, what)  # names the file:line when it can
        raise FtlError(f"{what}: cannot read {', '.join(names)} as {fmt}: {reason}") from None
    raise FtlError(f"{what}: unsupported format {fmt}")


def _columns_dataset(files: list[Path], first: dict, what: str):
    """.json files that each hold a mapping of columns ({"text": [...], "label": [...]}), as one dataset."""
    import datasets

    parts = [datasets.Dataset.from_dict(first)]
    for file in files[1:]:
        columns = layouts.json_rows(file, what)
        if not isinstance(columns, dict):
            raise FtlError(
                f"{what}: {file} is not a mapping of columns like {files[0]}; give files of one layout"
            )
        parts.append(datasets.Dataset.from_dict(columns))
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def _check_header(files: list[Path], fmt: str) -> None:
    """A column named twice in a header (pandas would quietly rename the second to 'name.1')."""
    import csv

    for file in files:
        with file.open(encoding="utf-8-sig", errors="replace", newline="") as handle:
            first = handle.readline().rstrip("\r\n")
        header = first.split("\t") if fmt == "tsv" else next(csv.reader([first]), [])
        seen: set[str] = set()
        for name in (h.strip() for h in header):
            if name in seen and name:
                raise FtlError(f"{file}:1: column '{name}' appears twice in the header; rename one of them")
            seen.add(name)


def _renamed(dataset, mapping: dict[str, str], what: str):
    from ftl.launcher.errors import did_you_mean, one_of

    columns = dataset.column_names
    applicable = {}
    for old, new in mapping.items():
        if old in columns:
            applicable[old] = new
        elif (
            new not in columns
        ):  # a source that already has the new name (e.g. the local copy) needs no rename
            raise FtlError(
                f"{what}.rename: no column '{old}'{did_you_mean(old, columns)}; columns are: {one_of(columns)}"
            )
    return dataset.rename_columns(applicable) if applicable else dataset


def _load_hub(source: DataSource, what: str, missing_path: str | None, recipe_dirs: list[Path]) -> RawData:
    import datasets

    datasets.disable_progress_bars()
    try:
        dataset = datasets.load_dataset(source.hub, source.hub_config, split=source.split)
    except Exception as exc:
        reason = first_line(exc)
        local = (
            f"'{missing_path}' not found locally (looked in {looked_in(recipe_dirs)}; set FTL_DATA_HOME) and "
            if missing_path
            else ""
        )
        raise FtlError(f"{what}: {local}hub dataset '{source.hub}' could not be loaded: {reason}") from None
    if len(dataset) == 0:
        raise FtlError(f"{what}: hub dataset '{source.hub}' split '{source.split}' has no rows")
    return RawData(
        f"hub:{source.hub}[{source.split}]",
        f"hub:{dataset._fingerprint}|{sorted(source.rename.items())}",
        "hub",
        [],
        source,
        what,
        dataset,
    )


def fingerprint_files(files: list[Path], fmt: str, source: DataSource) -> str:
    """Content hash of the files plus how they are read (so a changed file or reader invalidates caches)."""
    digest = hashlib.sha256(f"{fmt}|{source.text_sample_by}|{sorted(source.rename.items())}".encode())
    for file in files:
        digest.update(file.name.encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]
