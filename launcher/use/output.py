"""Where `ftl predict` and `ftl generate` put their results, and their progress bars.

An --output is checked before any work (`check_output`): it must not be one of the command's own input files,
nor lie inside the run directory being read, nor be a file the run was made from (its recipe or training data,
as its manifest records them). It is then written the way its kind asks (`write_text`): a regular file (or a
new one) atomically, a symbolic link by atomically writing the file it points to (the link stays), and a named
pipe or a device (e.g. /dev/stdout) directly, in place.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ftl.launcher.console import console, log
from ftl.launcher.errors import FtlError
from ftl.launcher.files import atomic_write, make_dir, os_error_line
from ftl.launcher.use.runs import RECIPE_FILE


def jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows)


def check_output(
    output: Path | None, inputs: Iterable[tuple[str, Path | None]] = (), run: Path | None = None
) -> None:
    """One FtlError line when writing `output` would destroy what the command reads: an input file (given as
    (option, path) pairs, e.g. ("--data", data)), a file inside the run directory `run`, or the recipe or data
    the run was made from."""
    if output is None:
        return
    if output.is_dir():
        raise FtlError(
            f"--output: {output} is a directory; give a file name, e.g. {output / 'predictions.jsonl'}"
        )
    target = Path(os.path.realpath(output))  # through symbolic links: the file that would be written
    for option, path in inputs:
        if path is not None and _same_file(output, target, path):
            raise FtlError(
                f"--output: {output} is the {option} file this command reads; writing it would destroy it: "
                "give another file name, e.g. predictions.jsonl"
            )
    if run is None or not (run / RECIPE_FILE).is_file():
        return  # not a run: opening it names what is wrong
    root = Path(os.path.realpath(run))
    if target == root or (root in target.parents and _written_by_the_run(root, target)):
        raise FtlError(
            f"--output: {output} is part of the run {run} (written by ftl run), which this command reads; give "
            "another file name, e.g. predictions.jsonl"
        )
    for what, path in _run_sources(run):
        if _same_file(output, target, path):
            raise FtlError(
                f"--output: {output} is the {what} run {run} was made from; writing it would destroy it: give "
                "another file name, e.g. predictions.jsonl"
            )


# files a run writes beside its folders (model/, checkpoints/, tensorboard/, stages), besides .json and .yaml
_RUN_FILES = (
    "validation.jsonl",
    "generations.jsonl",
    "misclassified.jsonl",
    "ner_errors.jsonl",
    "qa_errors.jsonl",
)


def _written_by_the_run(root: Path, target: Path) -> bool:
    """A file in one of the run's folders, or one of its own files (a new file, or an earlier prediction the user
    wrote beside them, is not)."""
    if target.parent != root:
        return True
    return target.exists() and (target.suffix in (".json", ".yaml") or target.name in _RUN_FILES)


def _same_file(output: Path, target: Path, other: Path) -> bool:
    try:
        if os.path.samefile(output, other):  # also a hard link, or another name through a link
            return True
    except OSError:  # one of them does not exist (yet): compare the paths they resolve to
        pass
    return target == Path(os.path.realpath(other))


def _run_sources(run: Path) -> list[tuple[str, Path]]:
    """The recipe and data files a run's manifest.json records (none when it cannot be read)."""
    try:
        manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
        cwd = Path(manifest.get("cwd") or ".")
        sources: list[tuple[str, Path]] = []
        command = manifest.get("command") or []
        if (
            len(command) > 2
            and command[1] in ("run", "train")
            and str(command[2]).endswith((".yaml", ".yml"))
        ):
            sources.append(("recipe", cwd / command[2]))
        for split, path in (manifest.get("data_sources") or {}).items():
            if isinstance(path, str) and path:
                sources.append((f"{split} data", cwd / path))
        return [(what, path) for what, path in sources if path.is_file()]
    except (OSError, ValueError, TypeError, AttributeError):
        return []


def write_text(text: str, output: Path | None) -> None:
    """To `output` (written atomically; replacing a file is announced), or to stdout. A symbolic link writes the
    file it points to; a named pipe or device (not a regular file) is written in place, without a rename."""
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        mode = os.stat(output).st_mode  # through links
    except FileNotFoundError:
        mode = None  # a new file, or a link to one
    except OSError as exc:  # a loop of links, a part of the path that is a file, no permission, ...
        raise FtlError(f"--output: {os_error_line(exc, output)}") from None
    if mode is not None and stat.S_ISDIR(mode):
        raise FtlError(
            f"--output: {output} is a directory; give a file name, e.g. {output / 'predictions.jsonl'}"
        )
    if mode is not None and (not stat.S_ISREG(mode) or _through_proc(output)):
        _write_in_place(
            text, output
        )  # a named pipe, a terminal, /dev/null, /dev/stdout (even onto a file) ...
        return
    target = Path(os.path.realpath(output)) if output.is_symlink() else output
    make_dir(target.parent, "--output")
    if mode is not None:
        log(f"replacing {output}" + (f" (the file {target} its link points to)" if target != output else ""))
    try:
        atomic_write(target, text)
    except OSError as exc:
        raise FtlError(f"--output: {os_error_line(exc, target)}") from None


def _through_proc(path: Path) -> bool:
    """A link into /proc (e.g. /dev/stdout -> /proc/self/fd/1): an open file's stream, which only the kernel can
    follow (its path may be of a deleted file), so it is written in place."""
    current = os.path.abspath(path)
    for _ in range(40):
        if current == "/proc" or current.startswith("/proc/"):
            return True
        if not os.path.islink(current):
            return False
        current = os.path.abspath(os.path.join(os.path.dirname(current), os.readlink(current)))
    return False


def _write_in_place(text: str, output: Path) -> None:
    try:
        with open(output, "a", encoding="utf-8") as stream:  # a stream: append (a `>>` file keeps its text)
            stream.write(text)
    except OSError as exc:
        raise FtlError(f"--output: {os_error_line(exc, output)}") from None


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
