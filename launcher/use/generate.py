"""`ftl generate RUN --prompt TEXT | --prompts FILE`: text from a causal-LM or seq2seq run.

A prompt is a text or a JSON object: an instruction-tuned run's prompt template takes a text into its single
field, or an object's fields by name; a seq2seq run puts its source_prefix first (`--raw`: neither). Decoding
follows the run's generation settings (greedy unless they sample), changed by the options: a temperature, top-p
or top-k turns sampling on (temperature 0: greedy). Sampling is seeded: the same seed, prompts and batch size
give the same text; without --seed a seed is drawn and printed, so any result can be repeated.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftl.launcher.console import log
from ftl.launcher.data.sources import load_file
from ftl.launcher.errors import FtlError, first_line
from ftl.launcher.tasks.generation import check_generation_room, generate
from ftl.launcher.use.output import check_output, jsonl, progress, write_text
from ftl.launcher.use.trained import open_trained

_TABLE_FORMATS = (".csv", ".tsv", ".parquet")


@dataclass
class Decoding:
    """The command line's decoding options (None: the run's own setting)."""

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    num_beams: int | None = None
    repetition_penalty: float | None = None


def generate_from_run(
    run: Path,
    prompts: list[str],
    prompts_file: Path | None = None,
    *,
    decoding: Decoding | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    raw: bool = False,
    output: Path | None = None,
    as_json: bool = False,
) -> list[dict[str, Any]]:

    started = time.perf_counter()
    check_output(output, [("--prompts", prompts_file)], run)  # before any work: never what it reads
    given = [_parse_prompt(text) for text in prompts] + (read_prompts(prompts_file) if prompts_file else [])
    if not given:
        raise FtlError(
            "ftl generate: give a prompt with --prompt TEXT, or a file of them with --prompts FILE"
        )
    trained = open_trained(run)
    defaults = trained.task.generation_defaults()  # one line when the run's task does not generate
    settings = decoding_settings(defaults.generation, decoding or Decoding())
    texts = [trained.task.generation_prompt(prompt, raw=raw) for prompt in given]
    if settings.do_sample and seed is None:
        seed = random.SystemRandom().randrange(2**31)
        log(f"sampling with seed {seed} (--seed {seed} repeats it)")
    model = trained.load_model()
    check_generation_room(model, settings.max_new_tokens)
    with progress("generate", len(texts)) as advance:
        generated = generate(
            model,
            trained.tokenizer,
            texts,
            settings,
            max_input_length=defaults.max_input_length,
            batch_size=batch_size or trained.recipe.eval.batch_size,
            seed=seed or 0,
            keep_end=defaults.keep_end and not raw,
            on_batch=advance,
            stop_token_ids=defaults.stop_token_ids,
            add_special_tokens=defaults.add_special_tokens or raw,
        )
    rows = [
        {"prompt": prompt, "input": text, "generated": out, **({"seed": seed} if settings.do_sample else {})}
        for prompt, text, out in zip(given, texts, generated, strict=True)
    ]
    if output is None and len(rows) == 1 and not as_json:
        write_text(rows[0]["generated"] + "\n", None)
    else:
        write_text(jsonl(rows), output)
    where = f" -> {output}" if output is not None else ""
    log(f"generated for {len(rows)} prompt(s) in {time.perf_counter() - started:.1f}s{where}")
    return rows


def decoding_settings(base, decoding: Decoding):
    """The run's GenerationSettings with the command line's changes (validated as a recipe section)."""
    from pydantic import ValidationError

    changes: dict[str, Any] = {
        key: value
        for key, value in (
            ("max_new_tokens", decoding.max_new_tokens),
            ("num_beams", decoding.num_beams),
            ("repetition_penalty", decoding.repetition_penalty),
            ("top_p", decoding.top_p),
            ("top_k", decoding.top_k),
        )
        if value is not None
    }
    if decoding.temperature is not None:
        if decoding.temperature == 0:
            changes["do_sample"] = False
        else:
            changes.update(temperature=decoding.temperature, do_sample=True)
    if decoding.top_p is not None or decoding.top_k is not None:
        if decoding.temperature == 0:
            raise FtlError(
                "--temperature 0 means greedy decoding; leave out --top-p and --top-k, or raise it"
            )
        changes["do_sample"] = True
    try:
        return type(base).model_validate({**base.model_dump(), **changes})
    except ValidationError as exc:
        error = exc.errors()[0]
        raise FtlError(f"--{str(error['loc'][0]).replace('_', '-')}: {error['msg']}") from None


def read_prompts(path: Path) -> list[str | dict[str, Any]]:
    """.jsonl: a JSON text or object per line; .json: a list of them; .csv/.tsv/.parquet: each row an object;
    anything else: a prompt per non-blank line."""
    if not path.is_file():
        raise FtlError(
            f"--prompts: {path} not found" if not path.exists() else f"--prompts: {path} is not a file"
        )
    suffix = path.suffix.lower()
    if suffix in _TABLE_FORMATS:
        prompts: list[str | dict[str, Any]] = load_file(path, "--prompts").dataset.to_list()
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise FtlError(f"--prompts: {path} is not UTF-8 text ({exc.reason})") from None
        if suffix == ".jsonl":
            prompts = [
                _json_prompt(line, f"{path}:{n}")
                for n, line in enumerate(text.splitlines(), 1)
                if line.strip()
            ]
        elif suffix == ".json":
            try:
                document = json.loads(text)
            except json.JSONDecodeError as exc:
                raise FtlError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(document, list):
                raise FtlError(f"--prompts: {path} must hold a JSON list of prompts (texts or objects)")
            prompts = [_checked(item, f"{path}: item {i}") for i, item in enumerate(document)]
        else:
            prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise FtlError(f"--prompts: {path} holds no prompts")
    return prompts


def _parse_prompt(text: str) -> str | dict[str, Any]:
    """A --prompt: a JSON object (the template's fields) when it is one, else the text itself."""
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return text
        if isinstance(value, dict):
            return value
    return text


def _json_prompt(line: str, where: str) -> str | dict[str, Any]:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise FtlError(f"{where}: not valid JSON ({first_line(exc)})") from None
    return _checked(value, where)


def _checked(value: Any, where: str) -> str | dict[str, Any]:
    if not isinstance(value, (str, dict)):
        raise FtlError(f"{where}: a prompt is a text or an object of fields, got {type(value).__name__}")
    return value
