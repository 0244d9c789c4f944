"""Tokenizer and model for a task: from a local directory, a GGUF file, the hub, or a config."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from launcher.errors import FtlError
from launcher.model.locate import ModelLocation, locate_model, locate_path
from launcher.recipe.loader import LoadedRecipe
from launcher.tasks.base import Task


@dataclass
class LoadedModel:
    model: Any
    location: ModelLocation
    # The task head: parameters the checkpoint did not provide (for a model built from a config, or on the
    # meta device, the parameters outside the backbone).
    head_names: list[str] = field(default_factory=list)


def quiet_transformers(level: str = "info") -> None:
    """Library chatter only at ftl's debug level; ftl reports what matters itself."""
    import transformers

    transformers.logging.set_verbosity(logging.INFO if level == "debug" else logging.ERROR)
    transformers.logging.disable_progress_bar()
    for name in ("bitsandbytes", "datasets", "torch.distributed", "DeepSpeed"):
        logging.getLogger(name).setLevel(logging.DEBUG if level == "debug" else logging.ERROR)


def load_tokenizer(loaded: LoadedRecipe, location: ModelLocation | None = None):
    from transformers import AutoTokenizer

    section = loaded.recipe.model
    if section.tokenizer:
        location = locate_path(section.tokenizer, loaded.search_dirs, "model.tokenizer")
    location = location or locate_model(section, loaded.search_dirs)
    if location.kind == "config":
        raise FtlError("model.tokenizer: a model built from model.config needs a tokenizer location")
    with _hub_errors(location, "tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(
            location.path,
            revision=section.revision,
            trust_remote_code=section.trust_remote_code,
            **location.hf_kwargs(),
        )
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise FtlError(f"model.tokenizer: the tokenizer at {location} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_config(loaded: LoadedRecipe, task: Task, location: ModelLocation, tokenizer=None):
    from transformers import AutoConfig

    section = loaded.recipe.model
    overrides = task.config_overrides()
    if location.kind == "config":
        settings = dict(section.config)
        model_type = settings.pop("model_type")
        try:
            config = AutoConfig.for_model(model_type, **settings)
        except ValueError as exc:
            raise FtlError(f"model.config: {str(exc).splitlines()[0]}") from None
        if tokenizer is not None and "vocab_size" not in settings:
            config.vocab_size = len(tokenizer)
    else:
        with _hub_errors(location, "model config"):
            config = AutoConfig.from_pretrained(
                location.path,
                revision=section.revision,
                trust_remote_code=section.trust_remote_code,
                **location.hf_kwargs(),
            )
        if section.config:
            for key, value in section.config.items():
                if key != "model_type":
                    setattr(config, key, value)
    for key, value in overrides.items():
        setattr(config, key, value)
    if tokenizer is not None and getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = tokenizer.pad_token_id
    return config


def load_model(loaded: LoadedRecipe, task: Task, tokenizer, *, meta: bool = False) -> LoadedModel:
    """Load pretrained weights (or initialise from config). meta=True builds shapes only, for `ftl check`."""
    import torch

    section = loaded.recipe.model
    location = locate_model(section, loaded.search_dirs)
    config = model_config(loaded, task, location, tokenizer)
    auto = task.model_class()
    if meta:
        with torch.device("meta"):
            model = auto.from_config(config, trust_remote_code=section.trust_remote_code)
        return LoadedModel(model, location, _head_parameter_names(model))
    if location.kind == "config":
        torch.manual_seed(loaded.recipe.seed)
        model = auto.from_config(config, trust_remote_code=section.trust_remote_code)
        return LoadedModel(model, location, _head_parameter_names(model))
    extra = location.hf_kwargs()
    if location.gguf_file:
        from transformers import GgufConfig

        # Fine-tuning needs dense weights: unpack the GGUF blocks once, at load time.
        extra["quantization_config"] = GgufConfig(gguf_file=location.gguf_file, dequantize=True)
    with _hub_errors(location, "model"):
        model, info = auto.from_pretrained(
            location.path,
            config=config,
            revision=section.revision,
            trust_remote_code=section.trust_remote_code,
            output_loading_info=True,
            dtype=torch.float32,
            **extra,
        )
    if location.gguf_file:
        _forget_gguf_origin(model)
    missing = set(info.get("missing_keys", []))
    fresh = [name for name, _ in model.named_parameters() if name in missing]
    return LoadedModel(model, location, fresh)


def _forget_gguf_origin(model) -> None:
    """A dequantized GGUF model is a plain dense model: drop the quantizer so it trains and saves as one."""
    model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config


def _head_parameter_names(model) -> list[str]:
    """Parameters outside the pretrained backbone (what from_pretrained would newly initialise)."""
    prefix = getattr(model, "base_model_prefix", "")
    return [name for name, _ in model.named_parameters() if prefix and not name.startswith(prefix + ".")]


@contextlib.contextmanager
def _hub_errors(location: ModelLocation, what: str):
    """Loading failures become one line naming the location and the likely fix."""
    try:
        yield
    except FtlError:
        raise
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = ""
        if location.kind == "hub":
            hint = (
                " (offline? add a local copy under model.local_copies, or set HF_HUB_OFFLINE=0 with network)"
            )
        raise FtlError(f"model: cannot load the {what} from {location}: {reason}{hint}") from None
