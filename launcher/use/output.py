"""Where `ftl predict` and `ftl generate` put their results, and their progress bars."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ftl.launcher.console import console, log
from ftl.launcher.errors import FtlError
from ftl.launcher.files import atomic_write, make_dir


def jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows)


def write_text(text: str, output: Path | None) -> None:
    """To `output` (written atomically; replacing a file is announced), or to stdout."""
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return

    if output.is_dir():
        raise FtlError(
            f"--output: {output} is a directory; give a file name, e.g. {output / 'predictions.jsonl'}"
        )
    make_dir(output.parent, "--output")
    if output.exists():
        log(f"replacing {output}")
    atomic_write(output, text)


@contextmanager
def progress(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """advance(n) for a rich progress bar on a terminal; does nothing off a terminal."""
    if not console.is_terminal or total <= 0:
        yield lambda n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)
