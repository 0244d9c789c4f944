"""How data is laid out on disk beyond one plain file: a folder of split files (train.csv beside test.csv), a
`Dataset.save_to_disk` folder, a hub-style repository whose data sits in a subfolder, JSON documents whose
rows sit under a key or come as a mapping of columns, and text files that are not UTF-8 from their first bytes.

Each check either says what the layout is (for the reader) or raises one FtlError line naming the path and what
to give instead.
"""

from __future__ import annotations

import json
import re
from itertools import chain, islice
from pathlib import Path

from ftl.launcher.console import log
from ftl.launcher.errors import FtlError

# The split names `datasets` reads from file names (datasets.data_files.SPLIT_KEYWORDS), between separators.
SPLIT_KEYWORDS = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "dev", "val"),
    "test": ("test", "testing", "eval", "evaluation"),
}
_SEPARATOR = r"[-._ 0-9]"
_SPLIT_PATTERNS = {
    split: re.compile(rf"(?:^|{_SEPARATOR})(?:{'|'.join(words)}){_SEPARATOR}")
    for split, words in SPLIT_KEYWORDS.items()
}
SAVED_STATE = "state.json"  # written by Dataset.save_to_disk beside its .arrow files
SAVED_SPLITS = "dataset_dict.json"  # written by DatasetDict.save_to_disk beside one folder per split


def split_of(name: str) -> str | None:
    """The split a file name names as `datasets` reads it ('train-00000-of-00002.parquet' -> 'train')."""
    lowered = name.lower()
    return next((split for split, pattern in _SPLIT_PATTERNS.items() if pattern.search(lowered)), None)


def check_splits(path: Path, files: list[Path], what: str) -> None:
    """A folder whose files name two or more splits (train.csv, test.csv) is not one set of rows: read as one, its
    test rows would be trained on. A glob that matches them is read (it names its files), with a warning."""
    by_split: dict[str, list[Path]] = {}
    for file in files:
        split = split_of(file.name)
        if split is not None:
            by_split.setdefault(split, []).append(file)
    if len(by_split) < 2:
        return
    named = [f for split in SPLIT_KEYWORDS for f in by_split.get(split, [])]
    shown = ", ".join(f.name for f in named[:6]) + (" ..." if len(named) > 6 else "")
    where = {split: _paths_of(split, found, files) for split, found in by_split.items()}
    held_out = where.get("validation") or where.get("test")
    advice = []
    if "train" in where:
        advice.append(f"point data.train at {where['train']}")
    if held_out:
        advice.append(f"data.validation at {held_out}")
    if "validation" in where and "test" in where:
        advice.append(f"evaluate on {where['test']} with ftl eval --data")
    if not path.is_dir():  # a glob names its files: reading them together may be meant (train + dev), so said
        log(f"[yellow]{what}: {path} matches files of several splits ({shown}), read as one set of rows[/]")
        return
    raise FtlError(
        f"{what}: {path} holds split files ({shown}); {' and '.join(advice)} (a glob reads several on purpose)"
    )


def _paths_of(split: str, found: list[Path], files: list[Path]) -> str:
    """The path to give for one split's files: the file, or a glob that matches them alone."""
    if len(found) == 1:
        return str(found[0])
    first = found[0].name
    match = _SPLIT_PATTERNS[split].search(first.lower())
    assert match is not None
    glob = f"{first[: match.end()]}*{found[0].suffix}"
    folder = found[0].parent
    if all(f.parent == folder for f in found) and {f for f in files if f.match(glob)} == set(found):
        return str(folder / glob)
    return ", ".join(str(f) for f in found)


def saved_dataset(folder: Path, what: str) -> list[Path] | None:
    """The files of a `Dataset.save_to_disk` folder (its .arrow files and state.json), else None; a saved
    DatasetDict (one folder per split) is refused with the folders to give."""
    if (folder / SAVED_SPLITS).is_file():
        try:
            splits = json.loads((folder / SAVED_SPLITS).read_text(encoding="utf-8")).get("splits", [])
        except (ValueError, AttributeError):
            splits = []
        splits = [s for s in splits if isinstance(s, str)] or sorted(
            p.name for p in folder.iterdir() if (p / SAVED_STATE).is_file()
        )
        train = "train" if "train" in splits else (splits[0] if splits else "train")
        others = [s for s in splits if s != train]
        validation = next((s for s in ("validation", "valid", "dev", "test") if s in others), None)
        advice = f"point {what} at one split's folder, e.g. {folder / train}"
        if validation:
            advice = f"point data.train at {folder / train} and data.validation at {folder / validation}"
        raise FtlError(
            f"{what}: {folder} is a DatasetDict saved with save_to_disk (splits: {', '.join(splits)}); {advice}"
        )
    if not (folder / SAVED_STATE).is_file():
        return None
    arrows = sorted(folder.glob("*.arrow"))
    if not arrows:
        raise FtlError(
            f"{what}: {folder} has a save_to_disk {SAVED_STATE} but no .arrow files; save the dataset again"
        )
    return [*arrows, folder / SAVED_STATE]


def no_data_files(folder: Path, entries: list[Path], data_file, what: str) -> FtlError:
    """The error for a folder with no data files of its own: names the subfolder that holds them (a hub-style
    repository keeps them in data/), else what the folder does hold."""
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))):
        near = chain(sub.glob("*"), sub.glob("*/*"))  # two levels: a big tree is not walked for a hint
        inside = sorted(islice((p for p in near if p.is_file() and data_file(p)), 4))
        if inside:
            names = ", ".join(str(p.relative_to(sub)) for p in inside[:3]) + (
                " ..." if len(inside) > 3 else ""
            )
            return FtlError(
                f"{what}: no data files in {folder} itself; its data is in the subfolder {sub.name}/ ({names}); "
                f"point {what} at {sub}"
            )
    found = (
        f" (it holds {', '.join(p.name for p in entries[:5])}: no csv, tsv, json, jsonl, txt, parquet or CoNLL file)"
        if entries
        else " (it is empty)"
    )
    return FtlError(f"{what}: no data files in {folder}{found}")


def json_rows(file: Path, what: str) -> str | dict | None:
    """How a .json file holds its rows: the key of a document's only list of objects ({"data": [{...}, ...]}),
    the columns of a mapping of columns ({"text": [...], "label": [...]}), or None (a list of rows, or JSON
    Lines in a file named .json: `datasets` reads both as they are)."""
    with file.open("rb") as handle:
        if not handle.read(64).removeprefix(b"\xef\xbb\xbf").lstrip().startswith(b"{"):
            return None
    try:
        document = json.loads(file.read_text(encoding="utf-8-sig"))
    except (ValueError, UnicodeDecodeError):
        return None  # JSON Lines, or not JSON at all: the reader (and diagnose) say which line
    if not isinstance(document, dict) or not document:
        return None
    values = list(document.values())
    rows = values[0]
    if len(document) == 1 and isinstance(rows, list) and rows and all(isinstance(v, dict) for v in rows):
        return next(iter(document))
    if not all(isinstance(v, list) for v in values):
        return None
    if len({len(value) for value in values}) > 1:
        return None  # lists of different lengths: one record (e.g. a conversation and its tools), as datasets reads it
    return document


_WIDE_BOMS = [  # longest first: the UTF-32 LE mark starts with the UTF-16 LE one
    (b"\xff\xfe\x00\x00", "utf-32"),
    (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
]


def check_text_encoding(file: Path, what: str) -> None:
    """A text file that starts with a UTF-16 or UTF-32 byte order mark (Windows editors save 'Unicode' so)."""
    with file.open("rb") as handle:
        head = handle.read(4)
    for mark, encoding in _WIDE_BOMS:
        if head.startswith(mark):
            raise FtlError(
                f"{file}:1: not UTF-8 text ({encoding.upper()}, byte order mark 0x{mark.hex()}; {what}); save "
                f"the file as UTF-8 (e.g. iconv -f {encoding} -t utf-8)"
            )
