"""The bad-input corpus (bad_inputs.yaml): every mistake a user can make is exit code 2 and one line on stderr
that names the key or file:line and what would fix it; no traceback, nothing on stdout, no file of the user's
changed.

Each case starts from the tiny classification recipe (tests/conftest.py) in its own folder, changes it (an
edit of its sections, raw recipe text, extra files), runs the real CLI in this process and compares a hash of
every file in the folder before and after. A few cases run `ftl` as a real process at the end.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from ftl.launcher.cli import main
from tests.conftest import REPO, edit_recipe, env_without_hub, write_tsv


@dataclass(frozen=True)
class Case:
    id: str
    expect: tuple[str, ...]  # substrings of the one error line
    argv: tuple[str, ...] = ("check", "{recipe}")  # {recipe}: the recipe file, {dir}: its folder
    edit: dict = field(default_factory=dict)  # edit_recipe(recipe, **edit)
    text: str | bytes | None = None  # the recipe file's whole content instead
    files: dict = field(default_factory=dict)  # more files in the folder: name -> str | bytes


CASES = [
    Case(**{**case, "expect": tuple(case["expect"]), "argv": tuple(case.get("argv", Case.argv))})
    for case in yaml.safe_load((Path(__file__).parent / "bad_inputs.yaml").read_text(encoding="utf-8"))
]


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under root (but the per-test tokenisation cache) with a hash of its bytes."""
    found = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if relative.parts[0] == "ftl-cache":
            continue
        found[str(relative)] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return found


def prepare(case: Case, recipe: Path) -> list[str]:
    folder = recipe.parent
    if case.edit:
        edit_recipe(recipe, **case.edit)
    if case.text is not None:
        (recipe.write_bytes if isinstance(case.text, bytes) else recipe.write_text)(case.text)
    for name, content in case.files.items():
        (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return [a.replace("{recipe}", str(recipe)).replace("{dir}", str(folder)) for a in case.argv]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, capsys, monkeypatch, classification_recipe):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("FTL_RAY_ADDRESS", raising=False)
    argv = prepare(case, classification_recipe)
    before = snapshot(classification_recipe.parent)
    code = main(argv)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, captured.err
    assert "Traceback" not in captured.err
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ")
    for expected in case.expect:
        assert expected in lines[0], lines[0]
    assert captured.out == ""
    assert snapshot(classification_recipe.parent) == before, "a user file changed"


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
