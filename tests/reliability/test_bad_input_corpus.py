"""The bad-input corpus: every mistake a user can make is exit code 2 and one line on stderr that names the key
or file:line and what would fix it; no traceback, nothing on stdout, and no file of the user's changed.

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

from launcher.cli import main
from tests.conftest import REPO, edit_recipe, env_without_hub, write_tsv

SPACE = {"train.lr": [0.01, 0.02]}
NON_UTF8 = "sentence\tlabel\ngood film\tpositive\ncaf\xe9 was bad\tnegative\n".encode("latin-1")


@dataclass(frozen=True)
class Case:
    id: str
    expect: tuple[str, ...]  # substrings of the one error line
    argv: tuple[str, ...] = ("check", "{recipe}")  # {recipe}: the recipe file, {dir}: its folder
    edit: dict = field(default_factory=dict)  # edit_recipe(recipe, **edit)
    text: str | bytes | None = None  # the recipe file's whole content instead
    files: dict = field(default_factory=dict)  # more files in the folder: name -> str | bytes


CASES = [
    # ---- recipes: YAML ------------------------------------------------------------------------------
    Case(
        "yaml-unclosed-bracket",
        ("tiny-cls.yaml:", "invalid YAML"),
        text="name: x\ntrain:\n  lr: [1e-4\n  epochs: 2\n",
    ),
    Case("yaml-tab-indent", ("tiny-cls.yaml:3: invalid YAML", "'\\t'"), text="name: x\ntrain:\n\tlr: 1\n"),
    Case(
        "yaml-duplicate-key",
        ("tiny-cls.yaml:4: key 'lr' appears twice in train (first on line 3); keep one",),
        text="name: x\ntrain:\n  lr: 1.0e-4\n  lr: 2.0e-4\n",
    ),
    Case(
        "yaml-python-object",
        ("tiny-cls.yaml:2: invalid YAML", "python/object/apply:os.system"),
        text="name: x\nmodel: !!python/object/apply:os.system ['touch pwned']\n",
    ),
    Case(
        "yaml-python-name",
        ("tiny-cls.yaml:1: invalid YAML", "python/name:os.system"),
        text="name: !!python/name:os.system x\n",
    ),
    Case("yaml-empty", ("the recipe is empty; it needs at least name, model, task and data",), text=""),
    Case(
        "yaml-a-list", ("tiny-cls.yaml:1: a recipe must be a mapping of sections",), text="- train\n- eval\n"
    ),
    Case("yaml-not-utf8", ("tiny-cls.yaml: not UTF-8 text",), text="name: caf\xe9\n".encode("latin-1")),
    Case("recipe-missing", ("nope.yaml: recipe file not found",), argv=("check", "{dir}/nope.yaml")),
    Case("recipe-is-a-directory", ("is a directory, expected a recipe .yaml file",), argv=("check", "{dir}")),
    # ---- recipes: keys and types --------------------------------------------------------------------
    Case(
        "unknown-top-level-key",
        ("unknown key 'trainn' in the recipe (did you mean 'train'?)", "valid keys:"),
        edit={"trainn": {}},
    ),
    Case(
        "unknown-key-did-you-mean",
        ("tiny-cls.yaml:", "unknown key 'lerning_rate' in train", "valid keys:"),
        edit={"train": {"lerning_rate": 1e-3}},
    ),
    Case(
        "unknown-nested-key",
        ("unknown key 'patiense' in train.early_stopping (did you mean 'patience'?)",),
        edit={"train": {"early_stopping": {"patiense": 2}}},
    ),
    Case(
        "wrong-type-int",
        ("train.batch_size", "valid integer", "'many'"),
        edit={"train": {"batch_size": "many"}},
    ),
    Case(
        "wrong-type-list",
        ("train.epochs: Input should be a valid number (got [1, 2])",),
        edit={"train": {"epochs": [1, 2]}},
    ),
    Case("section-not-a-mapping", ("train must be a mapping of keys, got 5",), edit={"train": 5}),
    Case(
        "missing-section",
        ("missing required key 'data'",),
        text="name: x\nmodel: {name_or_path: org/model}\ntask: {type: causal_lm}\n",
    ),
    Case("bad-name", ("name: String should match pattern", "'my run'"), edit={"name": "my run"}),
    Case(
        "unknown-task-type",
        ("unknown task type 'sequence_clasification' (did you mean 'sequence_classification'?)",),
        edit={"task": {"type": "sequence_clasification"}},
    ),
    Case(
        "literal-did-you-mean",
        ("train.scheduler: 'cosin' is not allowed (did you mean 'cosine'?)",),
        edit={"train": {"scheduler": "cosin"}},
    ),
    Case(
        "nan-policy-value",
        ("train.nan_policy: 'ignore' is not allowed", "'stop' or 'skip'"),
        edit={"train": {"nan_policy": "ignore"}},
    ),
    # ---- recipes: ranges --------------------------------------------------------------------------
    Case("negative-lr", ("train.lr: Input should be greater than 0 (got -1)",), edit={"train": {"lr": -1}}),
    Case(
        "warmup-ratio-above-1",
        ("train.warmup_ratio: Input should be less than 1 (got 1.5)",),
        edit={"train": {"warmup_ratio": 1.5}},
    ),
    Case(
        "keep-zero-checkpoints",
        ("train.keep_checkpoints: Input should be greater than or equal to 1",),
        edit={"train": {"keep_checkpoints": 0}},
    ),
    Case(
        "validation-fraction",
        ("data.validation_split.fraction: Input should be less than 1 (got 1.5)",),
        edit={"data": {"validation_split": {"fraction": 1.5}}},
    ),
    Case(
        "max-bad-steps-zero",
        ("train.max_bad_steps: Input should be greater than or equal to 1",),
        edit={"train": {"max_bad_steps": 0}},
    ),
    # ---- recipes: settings valid alone, not together ------------------------------------------------
    Case(
        "warmup-twice",
        ("train.warmup_steps: set either warmup_steps or warmup_ratio, not both",),
        edit={"train": {"warmup_steps": 5, "warmup_ratio": 0.1}},
    ),
    Case(
        "head-only-and-layers",
        ("freeze.head_only: head_only already freezes the whole backbone; remove the other freeze keys",),
        edit={"freeze": {"head_only": True, "bottom_layers": 1}},
    ),
    Case(
        "early-stopping-without-best",
        ("train.early_stopping: early stopping needs eval.select_best: true",),
        edit={"train": {"early_stopping": {"patience": 2}}, "eval": {"select_best": False}},
    ),
    Case(
        "checkpoints-off-evaluations",
        ("train.checkpoint_every_steps: 3 is not a multiple of eval.every_steps=2",),
        edit={"train": {"checkpoint_every_steps": 3}, "eval": {"every_steps": 2}},
    ),
    Case(
        "max-bad-steps-with-skip",
        ("train.max_bad_steps: applies to nan_policy: stop",),
        edit={"train": {"nan_policy": "skip", "max_bad_steps": 3}},
    ),
    Case(
        "skip-under-deepspeed",
        ("train.nan_policy: skip needs a run without DeepSpeed",),
        edit={"train": {"nan_policy": "skip"}, "distributed": {"zero_stage": 2}},
    ),
    Case(
        "metric-not-produced",
        ("does not produce 'perplexity'", "accuracy, f1_macro, loss"),
        argv=("check", "{recipe}", "eval.metric=perplexity"),
    ),
    Case(
        "fp16-on-cpu",
        ("fp16 (with loss scaling) needs a CUDA GPU",),
        argv=("check", "{recipe}", "train.precision=fp16"),
    ),
    Case(
        "extends-missing-base",
        ("tiny-cls.yaml:1: extends: base recipe 'missing.yaml' not found",),
        text="extends: missing.yaml\nname: c\n",
    ),
    Case(
        "extends-cycle",
        ("extends forms a cycle",),
        text="extends: b.yaml\nname: a\n",
        files={"b.yaml": "extends: tiny-cls.yaml\nname: b\n"},
    ),
    Case(
        "layer-out-of-range",
        ("freeze.layers: layer 7 does not exist; the model has 2 layers: 0-1",),
        edit={"freeze": {"layers": [0, 7]}},
    ),
    Case(
        "freeze-pattern-matches-nothing",
        ("freeze.patterns: 'encoder\\.layr' matches no parameter", "names look like"),
        edit={"freeze": {"patterns": ["encoder\\.layr"]}},
    ),
    # ---- recipes: secrets -------------------------------------------------------------------------
    Case(
        "password-in-study-url",
        ("tiny-cls.yaml:", "tune.storage: the URL holds a password", "PGPASSWORD"),
        edit={"tune": {"space": SPACE, "storage": "postgresql://ftl:hunter2-pass@db/ftl"}},
    ),
    Case(
        "password-in-storage-path",
        ("distributed.storage_path: the URL holds a password",),
        edit={"distributed": {"storage_path": "s3://AKIAKEY:very-secret-key@bucket/x"}},
    ),
    # ---- data files -------------------------------------------------------------------------------
    Case(
        "data-missing",
        ("data.train.path: 'nowhere/train.tsv' not found (looked in", "FTL_DATA_HOME"),
        edit={"data": {"train": "nowhere/train.tsv"}},
    ),
    Case("data-empty", ("train.tsv is empty",), files={"train.tsv": ""}),
    Case("data-header-only", ("holds no rows",), files={"train.tsv": "sentence\tlabel\n"}),
    Case(
        "data-not-utf8",
        ("train.tsv:3: not UTF-8 text (byte 0xe9", "save the file as UTF-8"),
        files={"train.tsv": NON_UTF8},
    ),
    Case(
        "data-ragged-row",
        ("train.tsv:3: 3 fields where the header has 2 (sentence, label)", "fix the row"),
        files={"train.tsv": "sentence\tlabel\ngood film\tpositive\nbad\tfilm\tnegative\n"},
    ),
    Case(
        "data-ragged-csv",
        ("t.csv:3: 3 fields where the header has 2", "quote fields"),
        edit={"data": {"train": "t.csv"}},
        files={"t.csv": "sentence,label\ngood,positive\nbad,film,negative\n"},
    ),
    Case(
        "data-bad-json-line",
        ("t.jsonl:2: not valid JSON", "one JSON object per line"),
        edit={"data": {"train": "t.jsonl"}},
        files={"t.jsonl": '{"sentence": "a", "label": "positive"}\n{"sentence": "b", "label": \n'},
    ),
    Case(
        "data-missing-column",
        (
            "no column 'sentense' (task.text_column) (did you mean 'sentence'?)",
            "columns are: sentence, label",
        ),
        edit={"task": {"text_column": "sentense"}},
    ),
    Case(
        "data-missing-label-column",
        ("no column 'label' (task.label_column)", "columns are: sentence, score"),
        files={"train.tsv": "sentence\tscore\ngood film\t1\nbad film\t0\n"},
    ),
    Case(
        "data-label-outside-set",
        ("train.tsv:4: unknown label 'neutral'", "known labels: negative, positive"),
        files={"train.tsv": "sentence\tlabel\ngood\tpositive\nbad\tnegative\nso so\tneutral\n"},
    ),
    Case(
        "data-unknown-extension",
        ("cannot tell the format of", "set data.train.format"),
        edit={"data": {"train": "t.dat"}},
        files={"t.dat": "x\n"},
    ),
    # ---- command line ------------------------------------------------------------------------------
    Case(
        "cli-unknown-option", ("No such option", "ftl run --help"), argv=("run", "{recipe}", "--outptu", "x")
    ),
    Case("cli-missing-argument", ("Missing argument 'recipe'", "ftl run --help"), argv=("run",)),
    Case("cli-override-syntax", ("expected KEY=VALUE",), argv=("check", "{recipe}", "train.lr:3e-5")),
    Case(
        "cli-override-unknown-key",
        ("override 'trian.lr=1e-4': unknown key 'trian' in the recipe (did you mean 'train'?)",),
        argv=("check", "{recipe}", "trian.lr=1e-4"),
    ),
    Case(
        "cli-override-wrong-type",
        ("override 'train.batch_size=abc': train.batch_size", "valid integer"),
        argv=("check", "{recipe}", "train.batch_size=abc"),
    ),
    Case(
        "cli-output-is-a-file",
        ("--output:", "train.tsv is a file; give a directory"),
        argv=("run", "{recipe}", "--output", "{dir}/train.tsv"),
    ),
    Case(
        "cli-output-occupied",
        ("already holds files; pass --resume",),
        argv=("run", "{recipe}", "--output", "{dir}"),
    ),
    Case(
        "cli-resume-nothing",
        ("holds no run to resume",),
        argv=("run", "{recipe}", "--output", "{dir}/new", "--resume"),
    ),
    Case("cli-eval-not-a-run", ("not a run directory",), argv=("eval", "{dir}", "--data", "{dir}/train.tsv")),
    Case(
        "cli-export-dtype",
        ("--dtype: 'fp16' is not supported; use fp32 or bf16",),
        argv=("export", "{dir}", "--output", "{dir}/m", "--dtype", "fp16"),
    ),
    Case(
        "cli-bench-matrix",
        ("--matrix: 'train.batch_size' is not KEY=v1,v2",),
        argv=("bench", "{recipe}", "--matrix", "train.batch_size"),
    ),
    Case("cli-samples-zero", ("Invalid value for '--samples'",), argv=("tune", "{recipe}", "--samples", "0")),
    # ---- search spaces -----------------------------------------------------------------------------
    Case(
        "space-none",
        ("the recipe has no tune.space to search",),
        argv=("tune", "{recipe}", "--output", "{dir}/s"),
    ),
    Case(
        "space-metric",
        ("tune.metric: task sequence_classification does not produce 'bleu'",),
        argv=("tune", "{recipe}", "--output", "{dir}/s"),
        edit={"tune": {"space": SPACE, "metric": "bleu"}},
    ),
    Case(
        "space-grid-continuous",
        ("search: grid needs finite dimensions", "list the values to try"),
        argv=("tune", "{recipe}", "--output", "{dir}/s"),
        edit={"tune": {"space": {"train.lr": {"uniform": [0.1, 0.2]}}, "search": "grid"}},
    ),
    Case(
        "space-low-above-high",
        ("tune.space.train.lr: uniform: low 0.1 is greater than high 0.01",),
        argv=("cv", "{recipe}", "--output", "{dir}/s"),
        edit={"tune": {"space": {"train.lr": {"uniform": [0.1, 0.01]}}}},
    ),
    # ---- submission options ------------------------------------------------------------------------
    Case(
        "submit-samples-without-tune",
        ("--samples: applies to a search; add --tune",),
        argv=("submit", "{recipe}", "--samples", "2"),
    ),
    Case(
        "submit-tune-without-space",
        ("--tune: the recipe has no tune.space to search",),
        argv=("submit", "{recipe}", "--tune"),
    ),
    Case(
        "submit-open-remote-cluster",
        ("refusing to send a job to http://10.1.2.3:8265 without a token or TLS", "--insecure"),
        argv=("submit", "{recipe}", "--address", "http://10.1.2.3:8265"),
    ),
    Case(
        "submit-storage-credentials",
        ("--storage: the URI holds credentials",),
        argv=(
            "submit",
            "{recipe}",
            "--address",
            "http://10.1.2.3:8265",
            "--storage",
            "s3://AKIAKEY:very-secret-key@b/x",
        ),
    ),
    Case(
        "submit-token-file-missing",
        ("token file not found",),
        argv=("submit", "{recipe}", "--address", "http://10.1.2.3:8265", "--token-file", "{dir}/nope"),
    ),
    Case(
        "submit-bad-address",
        ("--address: 'http://:::' is not an address", "http://HEAD:8265"),
        argv=("submit", "{recipe}", "--address", "http://:::"),
    ),
    Case(
        "submit-negative-gpus", ("Invalid value for '--gpus'",), argv=("submit", "{recipe}", "--gpus", "-1")
    ),
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
        [sys.executable, "-m", "launcher.cli", *argv],
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
