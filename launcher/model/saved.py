"""A trained model in <run>/model: a full model, or a LoRA adapter and the record of its base model.

A run with `lora:` saves only the adapter; `<run>/model/ftl_base.json` says where the base model came from,
so `ftl eval`, `ftl predict` and `ftl export --merge-lora` can rebuild it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ftl.launcher.errors import FtlError
from ftl.launcher.model.load import forget_gguf_origin
from ftl.launcher.model.locate import ModelLocation

BASE_FILE = "ftl_base.json"


def write_base_record(
    directory: Path, peft_model, location: ModelLocation, base_weights: Path | None
) -> None:
    """Where the adapter's base model lives (a from-config base is saved next to the run), and the base's
    config as trained (label names, no quantization: merged and evaluated models are dense)."""
    import copy

    config = copy.deepcopy(peft_model.get_base_model().config)
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config
    config.save_pretrained(str(directory))
    model = peft_model.get_base_model()
    record: dict[str, Any] = {
        "kind": location.kind,
        "path": location.path,
        "gguf_file": location.gguf_file,
        "revision": getattr(model.config, "_commit_hash", None) if location.kind == "hub" else None,
        "trust_remote_code": bool(getattr(model.config, "auto_map", None)),
    }
    if base_weights is not None:  # inside the run: relative to model/, so the run reads it from anywhere
        relative = os.path.relpath(Path(base_weights).resolve(), Path(directory).resolve())
        record.update(kind="local", path=relative, gguf_file=None, relative_to_model_dir=True)
    elif location.kind in ("local", "gguf"):
        record["path"] = str(Path(location.path).resolve())
    (directory / BASE_FILE).write_text(json.dumps(record, indent=1))


def base_path(directory: Path, record: dict[str, Any]) -> str:
    """Where an adapter's base model is: a hub id, a folder, or the run's own base_model/."""
    path = record["path"]
    if record.get("relative_to_model_dir"):
        return str((directory / path).resolve())
    beside = directory.parent / "base_model"  # runs recorded their base_model/ relative to the working folder
    if record.get("kind") == "local" and Path(path).name == "base_model" and beside.is_dir():
        return str(beside)
    return path


def is_adapter(directory: Path) -> bool:
    return (directory / "adapter_config.json").exists()


def load_trained(directory: Path, auto_class, *, merge: bool = False):
    """A trained model from <run>/model: a full model, or base + adapter (merged into the base if asked)."""
    import torch

    if not is_adapter(directory):
        return auto_class.from_pretrained(str(directory))
    from peft import PeftModel

    record = json.loads((directory / BASE_FILE).read_text()) if (directory / BASE_FILE).exists() else None
    if record is None:
        raise FtlError(
            f"{directory}: adapter without {BASE_FILE}; cannot tell which base model it belongs to"
        )
    extra = {}
    if record.get("gguf_file"):
        from transformers import GgufConfig

        extra = {
            "gguf_file": record["gguf_file"],
            "quantization_config": GgufConfig(gguf_file=record["gguf_file"], dequantize=True),
        }
    config_dir = directory  # the run's saved config carries num_labels / id2label
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(config_dir)) if (config_dir / "config.json").exists() else None
    base = auto_class.from_pretrained(
        base_path(directory, record),
        dtype=torch.float32,
        revision=record.get("revision"),
        trust_remote_code=record.get("trust_remote_code", False),
        **({"config": config} if config else {}),
        **extra,
    )
    if record.get("gguf_file"):
        forget_gguf_origin(base)
    model = PeftModel.from_pretrained(base, str(directory))
    return model.merge_and_unload() if merge else model
