"""Property-based fuzzing of the user-error contract with hypothesis: recipes, command-line overrides and data
files generated from the schema, each run through the real `ftl check`, which must either accept the input
(exit 0) or refuse it with exit code 2 and one `error:` line: no traceback, nothing on stdout, no input changed.

CI runs a few seeded, bounded examples per property (derandomized: the same inputs every run);
`make fuzz` (benchmarks/fuzz_sweep.py) runs many more with fresh seeds. Every real finding goes to
bad_inputs.yaml as a case of its own.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftl.launcher.cli import main
from ftl.launcher.recipe import load_recipe
from tests.conftest import write_classification_recipe
from tests.reliability.test_bad_input_corpus import snapshot

EXAMPLES = int(os.environ.get("FTL_FUZZ_EXAMPLES", "12"))
RANDOM = os.environ.get("FTL_FUZZ_RANDOM") == "1"  # the sweep: new inputs every run
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not RANDOM,
    database=None,
    suppress_health_check=list(HealthCheck),
)

# values a new user might put anywhere: wrong types, edges of ranges, non-finite numbers, empty things
ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2, 7, 2**31, 2**32, 10**12]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 1.0, 0.5, 1e-12, 1e30, -0.0]),
    st.text(max_size=12),
    st.sampled_from(["", " ", "auto", "none", "yes", "1e-4", "inf", "nan", "../x", "/dev/null", "*.tsv"]),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.sampled_from(["a", "type", "path", "r"]), st.integers(-2, 2), max_size=2),
)


def _template() -> tuple[Path, dict]:
    folder = Path(tempfile.mkdtemp(prefix="ftl-fuzz-"))
    recipe = write_classification_recipe(folder)
    resolved = load_recipe(recipe).recipe.model_dump(mode="json", exclude={"extends"})
    return folder, resolved


def _key_paths(value, prefix=()) -> list[tuple[str, ...]]:
    """Every key of the resolved recipe (all of the schema's defaults filled in)."""
    found = []
    if isinstance(value, dict):
        for key, inner in value.items():
            found.append((*prefix, key))
            found += _key_paths(inner, (*prefix, key))
    return found


_FOLDER, _RESOLVED = _template()
KEY_PATHS = [p for p in _key_paths(_RESOLVED) if p[0] not in ("tune", "stages", "distributed")]


def run_check(folder: Path, argv: list[str]) -> None:
    """The contract for one input: exit 0, or exit 2 with one error line; no traceback; nothing on stdout
    after a refusal; no file of the folder changed."""
    before = snapshot(folder)
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(argv)
    text = err.getvalue()
    assert "Traceback" not in text, text
    if code != 0:
        lines = [line for line in text.splitlines() if line.strip()]
        assert code == 2, text
        assert len(lines) == 1 and lines[0].startswith("error: "), text
        assert out.getvalue() == "", out.getvalue()
    assert snapshot(folder) == before, "an input file changed"


def _set(data: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        if not isinstance(data.get(key), dict):
            data[key] = {}
        data = data[key]
    data[path[-1]] = value


def _fresh_folder() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="ftl-fuzz-"))
    write_classification_recipe(folder)
    return folder


@pytest.fixture(autouse=True)
def _cache(monkeypatch):
    monkeypatch.setenv("FTL_CACHE", tempfile.mkdtemp(prefix="ftl-fuzz-cache-"))


@FUZZ
@given(edits=st.lists(st.tuples(st.sampled_from(KEY_PATHS), ODD_VALUES), min_size=1, max_size=3))
def test_any_recipe_value_is_accepted_or_refused_in_one_line(edits):
    folder = _fresh_folder()
    data = json.loads(json.dumps(_RESOLVED))
    data["model"]["tokenizer"] = _RESOLVED["model"]["tokenizer"]
    for path, value in edits:
        _set(data, path, value)
    recipe = folder / "tiny-cls.yaml"
    recipe.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    run_check(folder, ["check", str(recipe)])


def _override_value(value) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value if isinstance(value, str) else json.dumps(value)


@FUZZ
@given(
    overrides=st.lists(
        st.tuples(st.sampled_from(KEY_PATHS), ODD_VALUES).map(
            lambda kv: f"{'.'.join(kv[0])}={_override_value(kv[1])}"
        ),
        min_size=1,
        max_size=3,
    )
)
def test_any_override_is_accepted_or_refused_in_one_line(overrides):
    folder = _fresh_folder()
    run_check(folder, ["check", str(folder / "tiny-cls.yaml"), *overrides])


CELLS = st.one_of(
    st.sampled_from(["good film", "bad film", "", " ", "NA", "None", "0", "1", "positive", "negative"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8),
    st.integers(-2, 9),
    st.none(),
    st.lists(st.text(max_size=3), max_size=2),
    st.dictionaries(st.just("t"), st.text(max_size=3), max_size=1),
)


@FUZZ
@given(
    fmt=st.sampled_from(["jsonl", "tsv", "csv", "json"]),
    rows=st.lists(st.tuples(CELLS, CELLS), min_size=0, max_size=30),
    drop_key=st.booleans(),
)
def test_any_data_file_is_accepted_or_refused_in_one_line(fmt, rows, drop_key):
    folder = _fresh_folder()
    name = f"t.{fmt}"
    if fmt in ("jsonl", "json"):
        records = [
            {k: v for k, v in {"sentence": text, "label": label}.items() if not (drop_key and v is None)}
            for text, label in rows
        ]
        body = "".join(json.dumps(r) + "\n" for r in records) if fmt == "jsonl" else json.dumps(records)
    else:
        separator = "\t" if fmt == "tsv" else ","

        def cell(value) -> str:
            text = "" if value is None else str(value)
            return text.replace("\t", " ").replace("\n", " ").replace("\r", " ")

        body = f"sentence{separator}label\n" + "".join(f"{cell(t)}{separator}{cell(y)}\n" for t, y in rows)
    (folder / name).write_text(body, encoding="utf-8")
    run_check(folder, ["check", str(folder / "tiny-cls.yaml"), f"data.train={name}"])
