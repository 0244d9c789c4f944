"""CoNLL-style token files: one `token<TAB or space>tag` per line, a blank line between sentences."""

from __future__ import annotations

from pathlib import Path

from launcher.errors import FtlError


def read_conll(files: list[Path]):
    """Read sentences into a Dataset with `tokens` and `tags` (lists of strings) columns."""
    import datasets

    tokens_column: list[list[str]] = []
    tags_column: list[list[str]] = []
    for file in files:
        tokens: list[str] = []
        tags: list[str] = []
        with file.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                stripped = line.rstrip("\n").rstrip("\r")
                if not stripped.strip() or stripped.startswith("-DOCSTART-"):
                    if tokens:
                        tokens_column.append(tokens)
                        tags_column.append(tags)
                        tokens, tags = [], []
                    continue
                parts = stripped.split("\t") if "\t" in stripped else stripped.split()
                if len(parts) < 2:
                    raise FtlError(f"{file}:{number}: expected 'token<TAB>tag', got {stripped!r}")
                tokens.append(parts[0])
                tags.append(parts[-1])
        if tokens:
            tokens_column.append(tokens)
            tags_column.append(tags)
    return datasets.Dataset.from_dict({"tokens": tokens_column, "tags": tags_column})
