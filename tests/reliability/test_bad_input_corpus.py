"""The bad-input corpus (bad_inputs.yaml): every mistake a user can make is exit code 2 and one line on stderr
that names the key or file:line and what would fix it; no traceback, nothing on stdout, no file of the user's
changed. Odd inputs that ftl must accept (`ok: true`) exit 0 without a traceback and change no file either.

Each case starts from the tiny classification recipe (tests/conftest.py) in its own folder, prepares it (named
set-ups such as a saved model or a finished run, an edit of its sections, raw recipe text, extra files,
truncated or removed files, environment variables), runs the real CLI in this process and compares a hash of
every file in the folder before and after. A few cases run `ftl` as a real process at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from ftl.launcher.cli import main
from tests.conftest import REPO, TINY_BERT, edit_recipe, env_without_hub, minilm_dir, write_tsv

CORPUS = Path(__file__).parent / "bad_inputs.yaml"
LONG_VERBS = ("run", "tune", "cv", "bench")


@dataclass(frozen=True)
class Case:
    id: str
    expect: tuple[str, ...] = ()  # substrings of the one error line
    argv: tuple[str, ...] = ("check", "{recipe}")  # {recipe}: the recipe file, {dir}: its folder
    edit: dict = field(default_factory=dict)  # edit_recipe(recipe, **edit): sections merged
    replace: dict = field(default_factory=dict)  # whole sections replaced (null removes one)
    text: str | bytes | None = None  # the recipe file's whole content instead
    files: dict = field(default_factory=dict)  # more files in the folder: name -> str | bytes
    setup: tuple[str, ...] = ()  # named set-ups (SETUPS below), 'kind:name[:argument]', before the rest
    truncate: dict = field(default_factory=dict)  # file -> the number of its first bytes to keep
    remove: tuple[str, ...] = ()  # files or folders to delete
    env: dict = field(default_factory=dict)  # environment variables ({dir} is the folder)
    ok: bool = False  # an odd input ftl must accept: exit 0, no traceback
    stderr: tuple[str, ...] = ()  # substrings of stderr (ok cases)
    absent: tuple[str, ...] = ()  # paths that must not exist afterwards ({dir} is the folder)


CASES = [
    Case(**{**case, **{k: tuple(v) for k, v in case.items() if isinstance(v, list)}})
    for case in yaml.safe_load(CORPUS.read_text(encoding="utf-8"))
]


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under root (but the per-test tokenisation cache) with a hash of its bytes."""
    found = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if relative.parts[0] == "ftl-cache":
            continue
        if path.is_file() and not stat.S_ISREG(path.stat().st_mode):
            found[str(relative)] = "special"  # a named pipe: reading it would consume it
        else:
            found[str(relative)] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return found


# ---- named set-ups: what a case needs that is more than a few bytes -----------------------------------------
@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Things made once per module and copied into each case that names them."""
    return _Made(tmp_path_factory.mktemp("made"))


class _Made:
    def __init__(self, root: Path) -> None:
        self.root = root

    def model(self) -> Path:
        """A tiny BERT classifier saved with save_pretrained, with the MiniLM tokenizer beside it."""
        target = self.root / "model"
        if not target.exists():
            from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

            settings = dict(TINY_BERT)
            config = AutoConfig.for_model(
                settings.pop("model_type"), vocab_size=30522, num_labels=2, **settings
            )
            AutoModelForSequenceClassification.from_config(config).save_pretrained(str(target))
            AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(str(target))
        return target

    def run(self) -> Path:
        """A finished 4-step run of the tiny classification recipe."""
        target = self.root / "run"
        if not target.exists():
            from tests.conftest import write_classification_recipe

            folder = self.root / "run-recipe"
            folder.mkdir()
            recipe = edit_recipe(
                write_classification_recipe(folder),
                train={"max_steps": 4, "batch_size": 8},
                eval={"every_steps": 2},
                log={"progress": False, "tensorboard": False},
            )
            assert main(["run", str(recipe), "--output", str(target)]) == 0
        return target


def _fifo(path: Path, content: str) -> None:
    """A named pipe with a writer waiting to send `content` (a reader that opens it gets the bytes)."""
    os.mkfifo(path)

    def write() -> None:
        with contextlib.suppress(BrokenPipeError), open(path, "w") as pipe:
            pipe.write(content)

    threading.Thread(target=write, daemon=True).start()


def _release_fifos(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.exists() and stat.S_ISFIFO(path.stat().st_mode):
            descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # lets a waiting writer finish
            os.close(descriptor)


def _package_file(spec: str) -> Path:
    from ftl.launcher.locations import package_dir

    found = package_dir(spec)
    assert found is not None, spec
    return found


SETUPS = {
    # model:NAME  a saved tiny model folder;  run:NAME  a finished run;  fifo:NAME  a named pipe holding rows
    # head:NAME:SPEC:BYTES  the first BYTES bytes of a file shipped in a package (package:NAME/file)
    "model": lambda made, folder, name, _: shutil.copytree(made.model(), folder / name),
    "run": lambda made, folder, name, _: shutil.copytree(made.run(), folder / name),
    "fifo": lambda made, folder, name, _: _fifo(
        folder / name, "sentence\tlabel\ngood\tpositive\nbad\tnegative\n"
    ),
    "link": lambda made, folder, name, target: os.symlink(target, folder / name),
    "head": lambda made, folder, name, argument: (folder / name).write_bytes(
        _package_file(argument.rsplit(":", 1)[0]).open("rb").read(int(argument.rsplit(":", 1)[1]))
    ),
}


def prepare(case: Case, recipe: Path, made: _Made | None = None, monkeypatch=None) -> list[str]:
    folder = recipe.parent

    def filled(text: str) -> str:
        return text.replace("{recipe}", str(recipe)).replace("{dir}", str(folder))

    for step in case.setup:
        kind, name, *argument = step.split(":", 2)
        SETUPS[kind](made, folder, name, argument[0] if argument else None)
    if case.edit:
        edit_recipe(recipe, **case.edit)
    if case.replace:
        sections = {**yaml.safe_load(recipe.read_text()), **case.replace}
        recipe.write_text(
            yaml.safe_dump({k: v for k, v in sections.items() if v is not None}, sort_keys=False)
        )
    if case.text is not None:
        (recipe.write_bytes if isinstance(case.text, bytes) else recipe.write_text)(case.text)
    for name, content in case.files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    for name, size in case.truncate.items():
        with (folder / name).open("r+b") as handle:
            handle.truncate(size)
    for name in case.remove:
        target = folder / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    for name, value in case.env.items():
        assert monkeypatch is not None
        monkeypatch.setenv(name, filled(value))
    return [filled(a) for a in case.argv]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, capsys, monkeypatch, classification_recipe, made):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("FTL_RAY_ADDRESS", raising=False)
    folder = classification_recipe.parent
    argv = prepare(case, classification_recipe, made, monkeypatch)
    before = snapshot(folder)
    capsys.readouterr()
    try:
        code = main(argv)
    finally:
        _release_fifos(folder)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert "Traceback" not in captured.err, captured.err
    if case.ok:
        assert code == 0, captured.err
        for expected in case.stderr:
            assert expected in captured.err, captured.err
        after = snapshot(folder)
        assert {k: after.get(k) for k in before} == before, "a user file changed"
    else:
        assert code == 2, captured.err
        if argv[0] in LONG_VERBS:  # they report progress (what they run, on what) before a failure
            lines = [line for line in lines if line.startswith("error:")]
        assert len(lines) == 1, captured.err
        assert lines[0].startswith("error: ")
        for expected in case.expect:
            assert expected in lines[0], lines[0]
        assert captured.out == ""
        assert snapshot(folder) == before, "a user file changed"
    for path in case.absent:
        assert not Path(path.replace("{dir}", str(folder))).exists(), f"{path} was left behind"


def test_the_corpus_is_large_and_covers_every_kind():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 40
    for prefix in ("yaml-", "unknown-", "wrong-type", "data-", "cli-", "space-", "submit-", "password-"):
        assert any(i.startswith(prefix) for i in ids), prefix


@pytest.mark.parametrize("case_id", ["yaml-python-object", "data-ragged-row", "cli-override-unknown-key"])
def test_a_real_process_prints_one_line_and_changes_nothing(case_id, tmp_path, classification_recipe):
    case = next(c for c in CASES if c.id == case_id)
    argv = prepare(case, classification_recipe)
    before = snapshot(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "ftl.launcher.cli", *argv],
        capture_output=True,
        text=True,
        env={**env_without_hub(), "FTL_CACHE": str(tmp_path / "ftl-cache")},
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert all(expected in result.stderr for expected in case.expect), result.stderr
    assert result.stdout == "" and snapshot(tmp_path) == before
    assert not (tmp_path / "pwned").exists() and not (REPO / "pwned").exists()


def test_a_run_that_fails_on_its_data_leaves_no_directory(capsys, tmp_path, classification_recipe):
    rows = [("good film", "positive"), ("bad film", "negative"), ("so so", "neutral")]
    write_tsv(tmp_path / "train.tsv", rows)
    output = tmp_path / "runs" / "first"
    main(["run", str(classification_recipe), "--output", str(output)])
    assert "unknown label 'neutral'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # so the fixed recipe runs with the same command
    assert os.listdir(tmp_path)
