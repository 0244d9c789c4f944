"""What can be known about a model before training, without loading its weights: its files are whole, and its
shapes fit the recipe (the tokenizer's ids fit the embeddings; the task's token limits fit the positions).

`ftl check` runs all of it on the meta-device model; `ftl run` runs the fit checks on the model it loaded, before
the first step. A library's own error while reading a model's files becomes one line naming the file
(`broken_file`), since its messages (a JSON decoder's position, a struct size) name none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ftl.launcher.errors import FtlError, first_line
from ftl.launcher.model.locate import ModelLocation

_JSON_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "ftl_task.json",
    "adapter_config.json",
)
_WEIGHTS = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)


def check_model_files(location: ModelLocation) -> None:
    """A local model folder's JSON files parse, it has weights, and each safetensors file is whole. Where its
    weights are is left to a model that ships its own code (and its loader: the trust_remote_code refusal
    comes first while the recipe has not opted in)."""
    if location.kind != "local":
        return
    folder = Path(location.path)
    problem = broken_file(folder)
    if problem:
        raise FtlError(f"model: {problem}")
    if _ships_code(folder):
        return
    if not any((folder / name).is_file() for name in _WEIGHTS) and not list(folder.glob("*.safetensors")):
        raise FtlError(
            f"model: {folder} has config.json but no weights (model.safetensors or pytorch_model.bin); copy the "
            "model's weight files there"
        )


def _ships_code(folder: Path) -> bool:
    try:
        return "auto_map" in json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False


def broken_file(folder: Path, gguf_file: str | None = None) -> str | None:
    """'FILE: what is wrong' for the first unreadable file of a model folder (None when all read)."""
    if gguf_file:
        return _gguf_problem(folder / gguf_file)
    for name in _JSON_FILES:
        path = folder / name
        if path.is_file():
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except UnicodeDecodeError:
                return f"{path}: not UTF-8 text"
            except json.JSONDecodeError as exc:
                return f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); the file is truncated or corrupt"
    for path in sorted(folder.glob("*.safetensors")):
        reason = _safetensors_problem(path)
        if reason:
            return f"{path}: truncated or corrupt safetensors file ({reason}); copy it again"
    return None


def _safetensors_problem(path: Path) -> str | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except Exception as exc:  # safetensors raises its own error type for every kind of damage
        return first_line(exc)
    return None


def _gguf_problem(path: Path) -> str | None:
    if path.stat().st_size == 0:
        return f"{path}: the GGUF file is empty"
    from gguf import GGUFReader

    try:
        GGUFReader(str(path))
    except Exception as exc:  # the reader raises struct, value and index errors on a cut file
        return f"{path}: not a readable GGUF file ({first_line(exc)}); it is truncated or corrupt"
    return None


# ---- shapes against the recipe ---------------------------------------------------------------------------
def check_fits(model, tokenizer, section, task_config) -> None:
    """The tokenizer's ids fit the model's embeddings, and the task's token limits fit its position table."""
    _vocabulary_fits(model, tokenizer, section)
    limit = position_limit(model)
    if limit is None:
        return
    for key, length in token_limits(task_config).items():
        if length > limit:
            raise FtlError(
                f"{key}: {length} tokens, but the model has {limit} positions (its config's max_position_embeddings "
                f"or n_positions); lower {key} to at most {limit}"
                + (", or raise max_position_embeddings in model.config" if section.config is not None else "")
            )


def _vocabulary_fits(model, tokenizer, section) -> None:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(embeddings, "num_embeddings", None)
    if rows is None:
        return
    ids = max(tokenizer.get_vocab().values(), default=-1) + 1
    ids = max(ids, len(tokenizer))
    if ids <= rows:
        return
    if section.config is not None and "vocab_size" in section.config:
        key, fix = (
            "model.config.vocab_size",
            f"raise it to at least {ids} or leave it out (ftl sizes it from the tokenizer)",
        )
    elif section.tokenizer:
        key, fix = (
            "model.tokenizer",
            "use the model's own tokenizer, or one whose vocabulary the model was trained on",
        )
    else:
        key, fix = "model", "its tokenizer and weights do not belong together"
    raise FtlError(
        f"{key}: the model's embeddings hold {rows} tokens but its tokenizer has {ids}; ids beyond {rows - 1} would "
        f"fail in the first step: {fix}"
    )


def position_limit(model) -> int | None:
    """How many token positions a model with learned absolute position embeddings takes (None: no such table,
    e.g. rotary or relative positions)."""
    import torch

    for name, module in model.named_modules():
        last = name.rsplit(".", 1)[-1]
        if isinstance(module, torch.nn.Embedding) and last in (
            "position_embeddings",
            "wpe",
            "embed_positions",
        ):
            offset = getattr(module, "offset", 0)  # BART/OPT keep the first positions for padding
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            padding = getattr(parent, "padding_idx", None)  # RoBERTa: positions start after the padding index
            taken = offset + (
                padding + 1 if isinstance(padding, int) and last == "position_embeddings" else 0
            )
            return module.num_embeddings - taken
    return None


def token_limits(task_config: Any, prefix: str = "task") -> dict[str, int]:
    """task.<key> -> tokens, for the settings that bound a sequence's length (each multitask task's too)."""
    found = {}
    for key in ("max_length", "max_source_length", "max_target_length"):
        value = getattr(task_config, key, None)
        if isinstance(value, int):
            found[f"{prefix}.{key}"] = value
    for name, sub in (getattr(task_config, "tasks", None) or {}).items():
        found.update(token_limits(sub.task, f"{prefix}.tasks.{name}.task"))
    return found
