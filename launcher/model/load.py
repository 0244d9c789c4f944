"""Tokenizer and model for a task: from a local directory, a GGUF file, the hub, or a config."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ftl.launcher.console import log
from ftl.launcher.errors import FtlError, TransientFtlError, did_you_mean
from ftl.launcher.files import is_main_process
from ftl.launcher.model.adapters import add_lora, bitsandbytes_config, load_dtype
from ftl.launcher.model.attention import attention_kwargs
from ftl.launcher.model.config_values import check_config_values
from ftl.launcher.model.integrity import broken_file
from ftl.launcher.model.locate import ModelLocation, locate_model, locate_path
from ftl.launcher.recipe.scaling import LoraSection, QuantizationSection
from ftl.launcher.recipe.schema import ModelSection, Recipe


class ModelHead(Protocol):
    """What loading needs to know of the task a model is for: its transformers class, the config settings the
    task sets (e.g. num_labels), and the kind of LoRA adapter it takes."""

    peft_task_type: str

    def model_class(self) -> Any: ...
    def config_overrides(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ModelSpec:
    """The model to build: the `model:` section, the directories its relative paths are found in, and the
    settings that change how it loads (quantization, adapters, the seed of a model built from a config)."""

    section: ModelSection
    dirs: tuple[Path, ...]
    quantization: QuantizationSection | None = None
    lora: LoraSection | None = None
    seed: int = 42
    gradient_checkpointing: bool = False
    sharded: bool = (
        False  # ZeRO-3 partitions the weights (a quantized model stores 4 bits in its compute dtype)
    )

    @classmethod
    def of(cls, recipe: Recipe, dirs) -> ModelSpec:
        return cls(
            recipe.model,
            tuple(dirs),
            recipe.quantization,
            recipe.lora,
            recipe.seed,
            recipe.train.gradient_checkpointing,
            recipe.distributed.zero_stage == 3,
        )


@dataclass
class LoadedModel:
    model: Any
    location: ModelLocation
    # The task head: parameters the checkpoint did not provide (for a model built from a config, or on the
    # meta device, the parameters outside the backbone).
    head_names: list[str] = field(default_factory=list)
    base_weights: Path | None = None  # a saved base model the adapters belong to (see adapters.py)


def quiet_transformers(level: str = "info") -> None:
    """Library chatter only at ftl's debug level; ftl reports what matters itself."""
    import transformers

    transformers.logging.set_verbosity(logging.INFO if level == "debug" else logging.ERROR)
    transformers.logging.disable_progress_bar()
    if level != "debug":  # deprecation notices of the library's own internals, not of anything ftl asks for
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|torch)\.")
        # peft, saving adapters of a base with no config.json beside it (a GGUF file), cannot check whether the
        # vocabulary changed: ftl never resizes embeddings, so it did not
        warnings.filterwarnings(
            "ignore", message="Could not find a config file in", category=UserWarning, module=r"peft\."
        )
    for name in ("bitsandbytes", "datasets", "torch.distributed", "DeepSpeed"):
        logging.getLogger(name).setLevel(logging.DEBUG if level == "debug" else logging.ERROR)


def load_tokenizer(section: ModelSection, dirs, location: ModelLocation | None = None):
    """The tokenizer of `model:` (model.tokenizer, else the model's own; `location` when already found)."""
    from transformers import AutoTokenizer

    dirs = list(dirs)
    if section.tokenizer:
        location = locate_path(section.tokenizer, dirs, "model.tokenizer")
    location = location or locate_model(section, dirs)
    if location.kind == "config":
        raise FtlError("model.tokenizer: a model built from model.config needs a tokenizer location")
    with _hub_errors(location, "tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(
            location.path,
            revision=section.revision,
            trust_remote_code=section.trust_remote_code,
            **location.hf_kwargs(),
        )
    words = len(tokenizer) - len(set(tokenizer.all_special_ids))
    if words <= 0:  # transformers builds an empty vocabulary when a folder has no tokenizer files
        key = "model.tokenizer" if section.tokenizer else "model.name_or_path"
        raise FtlError(
            f"{key}: the tokenizer at {location} knows no token besides its special ones: the folder "
            "has no tokenizer files (tokenizer.json, vocab.txt, tokenizer.model, ...); set model.tokenizer to a "
            "folder or hub id that has them"
        )
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise FtlError(f"model.tokenizer: the tokenizer at {location} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def remote_code_warning(section: ModelSection) -> str | None:
    """The warning a recipe that opts into running a model's own code gets (None when it does not)."""
    if not section.trust_remote_code:
        return None
    return (
        "[bold yellow]warning[/]: model.trust_remote_code is on: Python code shipped with the model "
        f"({section.name_or_path or 'model.config'}) runs in this process with your permissions; keep it on only "
        "for code you have read (and pin model.revision for hub models)"
    )


def model_config(
    section: ModelSection, head: ModelHead, location: ModelLocation, tokenizer=None, *, announce: bool = True
):
    """The model's config (from `location`, or built from model.config) with the recipe's and the task's
    settings applied."""
    from transformers import AutoConfig

    overrides = head.config_overrides()
    if location.kind == "config":
        settings = dict(section.config)
        config = _config_from_settings(dict(settings))
        if tokenizer is not None and "vocab_size" not in settings:
            config.vocab_size = len(tokenizer)
        if tokenizer is not None:
            _special_tokens_of(config, tokenizer, settings)
    else:
        with _hub_errors(location, "model config"):
            config = AutoConfig.from_pretrained(
                location.path,
                revision=section.revision,
                trust_remote_code=section.trust_remote_code,
                **location.hf_kwargs(),
            )
    _override(config, section.config_overrides)
    for key, value in overrides.items():
        setattr(config, key, value)
    encoder_family = hasattr(config, "add_cross_attention")  # BERT, RoBERTa, ELECTRA, ...: not GPT-NeoX or T5
    if head.peft_task_type == "CAUSAL_LM" and getattr(config, "is_decoder", None) is False and encoder_family:
        _as_decoder(config, section, announce=announce)
    check_config_values(config, section)
    if tokenizer is not None and getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = tokenizer.pad_token_id
    return config


def _as_decoder(config, section: ModelSection, *, announce: bool) -> None:
    """An encoder (BERT, RoBERTa, ...) trained as a causal LM must not see the tokens it predicts: built as a
    decoder (each token attends only to those before it) unless the recipe says is_decoder itself."""
    if "is_decoder" in section.config_overrides or "is_decoder" in (section.config or {}):
        return
    config.is_decoder = True
    if announce and config.model_type not in _SAID_DECODER and is_main_process():
        _SAID_DECODER.add(config.model_type)
        log(
            f"[yellow]model: {config.model_type} is an encoder; built as a decoder for a causal LM (is_decoder: "
            "true, each token sees only those before it)[/]"
        )


_SAID_DECODER: set[str] = set()


def _config_from_settings(settings: dict[str, Any]):
    """model.config as a transformers config: an unknown model type or setting is named (with a close match),
    as is a value of the wrong type."""
    from transformers import CONFIG_MAPPING, AutoConfig

    model_type = str(settings.pop("model_type"))
    if model_type not in CONFIG_MAPPING:
        raise FtlError(
            f"model.config.model_type: unknown model type '{model_type}'{did_you_mean(model_type, CONFIG_MAPPING.keys())}; "
            "e.g. bert, roberta, gpt2, llama, t5"
        )
    known = CONFIG_MAPPING[model_type]().to_dict()
    for key in settings:
        if key not in known:
            raise FtlError(
                f"model.config.{key}: {CONFIG_MAPPING[model_type].__name__} has no setting '{key}'"
                f"{did_you_mean(key, known)}"
            )
    try:
        return AutoConfig.for_model(model_type, **settings)
    except Exception as exc:  # transformers validates settings with several exception types
        key = next((k for k in settings if f"'{k}'" in str(exc)), None)
        raise FtlError(f"model.config{'.' + key if key else ''}: {library_reason(exc)}") from None


def library_reason(exc: BaseException) -> str:
    """A library exception's message on one line: its first line, with the next when the first only announces
    it (ends with ':')."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return " ".join(lines[:2]) if lines[0].endswith(":") and len(lines) > 1 else lines[0]


@contextlib.contextmanager
def building(section: ModelSection, location: ModelLocation):
    """Building a model from its config: a library's error (a size that does not divide, a negative size, a
    dropout above 1) is one line blaming the settings that made the config."""
    try:
        yield
    except FtlError:
        raise
    except Exception as exc:  # torch and transformers raise ValueError, RuntimeError, TypeError, ...
        if section.config_overrides:
            key = "model.config_overrides"
        elif location.kind == "config":
            key = "model.config"
        else:
            key = f"model ({location})"
        raise FtlError(f"{key}: cannot build the model: {library_reason(exc)}") from None


def _override(config, settings: dict[str, Any]) -> None:
    """model.config_overrides onto a loaded config: only settings it has (a typo would otherwise be a new,
    silently ignored attribute)."""
    known = config.to_dict()
    for key, value in settings.items():
        if key not in known and (not hasattr(config, key) or callable(getattr(config, key))):
            raise FtlError(
                f"model.config_overrides.{key}: {type(config).__name__} has no setting '{key}'"
                f"{did_you_mean(key, known)}"
            )
        setattr(config, key, value)


def _special_tokens_of(config, tokenizer, settings: dict) -> None:
    """A model built from a config speaks its tokenizer's special tokens (unless the config names them):
    padding, end of sequence (the tokenizer's eos, else its separator), and the decoder's first token of an
    encoder-decoder (padding, as T5 does)."""
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    chosen = {
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": eos,
        "bos_token_id": tokenizer.bos_token_id,
    }
    if getattr(config, "is_encoder_decoder", False):
        chosen["decoder_start_token_id"] = tokenizer.pad_token_id
    for key, value in chosen.items():
        if key not in settings and value is not None:
            setattr(config, key, value)


def load_model(
    spec: ModelSpec, head: ModelHead, tokenizer, *, meta: bool = False, base_dir: Path | None = None
) -> LoadedModel:
    """Load pretrained weights (or initialise from config), quantized and with LoRA adapters when the spec
    says so. meta=True builds shapes only, for `ftl check`. `base_dir` receives a base model that exists
    nowhere else (built from a config, or a GGUF file to be quantized), so adapters can be re-attached later."""
    import torch

    section = spec.section
    location = locate_model(section, list(spec.dirs))
    config = model_config(section, head, location, tokenizer, announce=not meta)  # (ftl check: no warnings)
    auto = head.model_class()
    if meta:
        with torch.device("meta"), building(section, location):
            model = auto.from_config(config, trust_remote_code=section.trust_remote_code)
        return LoadedModel(model, location, _head_parameter_names(model))
    if location.kind == "config" or (location.gguf_file and spec.quantization is not None):
        if spec.lora is None:
            return _dense_model(spec, location, config, auto)
        if base_dir is None:
            raise FtlError("lora: a base model built here needs a run directory to be saved in")
        return _with_adapters(_built_base(spec, location, config, auto, base_dir), spec, head, base_dir)
    loaded = _pretrained(section, location, config, auto, spec.quantization, sharded=spec.sharded)
    return _with_adapters(loaded, spec, head, None)


def _with_adapters(base: LoadedModel, spec: ModelSpec, head: ModelHead, base_dir: Path | None) -> LoadedModel:
    if spec.lora is None:
        return base
    peft_model = add_lora(
        base.model,
        spec.lora,
        head.peft_task_type,
        quantized=spec.quantization is not None,
        gradient_checkpointing=spec.gradient_checkpointing,
        sharded=spec.sharded,
    )
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    return LoadedModel(peft_model, base.location, trainable, base_weights=base_dir)


def _built_base(spec: ModelSpec, location: ModelLocation, config, auto, base_dir: Path) -> LoadedModel:
    """The base of adapters that exists in no file (built from a config, or a GGUF file to be quantized).

    Every process builds it itself (seeded: the same weights everywhere) and trains on its own copy; rank 0
    also saves it to `base_dir` for ftl predict, eval and export, which nobody reads during this run. So no
    process ever waits for, or reads half of, another's file, and nodes need not share a disk. bitsandbytes
    quantizes while reading weight files: a quantized base is read back from a private copy of this process."""
    with full_weights():  # the base is saved whole, also under ZeRO-3
        dense = _dense_model(spec, location, config, auto)
    saved_as = ModelLocation("local", str(base_dir), None, note=f"{location} saved as the adapter's base")
    if is_main_process():
        _save_base(dense.model, base_dir)
    if spec.quantization is None:
        return LoadedModel(dense.model, saved_as, dense.head_names)
    base_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".base-private-", dir=base_dir.parent) as private:
        _save_private(dense.model, Path(private))
        del dense
        quantized = _pretrained(
            spec.section,
            ModelLocation("local", private, None),
            config,
            auto,
            spec.quantization,
            sharded=spec.sharded,
        )
    return LoadedModel(quantized.model, saved_as, quantized.head_names)


def _save_private(model, directory: Path) -> None:
    """This process's own copy of a model's files (transformers' save_pretrained writes on rank 0 only)."""
    from safetensors.torch import save_model

    model.config.save_pretrained(str(directory))
    save_model(model, str(directory / "model.safetensors"), metadata={"format": "pt"})  # tied weights once


@contextlib.contextmanager
def full_weights():
    """Build a model whole even when the Trainer's arguments asked for ZeRO-3 (which makes transformers build
    every model inside deepspeed.zero.Init, partitioned over the ranks)."""
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


def quantized_device_map() -> dict[str, Any]:
    """Where bitsandbytes puts a quantized model: this process's own GPU (Ray Train sets each worker's
    current device; a single-process run is pinned to one), else the CPU. Never GPU 0 for every rank."""
    import torch

    return {"": torch.cuda.current_device() if torch.cuda.is_available() else "cpu"}


def _dense_model(spec: ModelSpec, location: ModelLocation, config, auto) -> LoadedModel:
    """A full-precision model: random from a config, or a GGUF file unpacked."""
    import torch

    if location.kind == "config":
        torch.manual_seed(spec.seed)
        with building(spec.section, location):
            model = auto.from_config(
                config, trust_remote_code=spec.section.trust_remote_code, **attention_kwargs(spec.section)
            )
        return LoadedModel(model, location, _head_parameter_names(model))
    return _pretrained(spec.section, location, config, auto, quantization=None)


def _save_base(model, directory: Path) -> None:
    """Write the base atomically (a kill never leaves half of it); kept when a resumed run wrote it before."""
    if (directory / "config.json").exists():
        return
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".base-", dir=directory.parent))
    try:
        model.save_pretrained(str(staging))
        os.replace(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _pretrained(
    section: ModelSection,
    location: ModelLocation,
    config,
    auto,
    quantization: QuantizationSection | None,
    *,
    sharded: bool = False,
) -> LoadedModel:
    extra = location.hf_kwargs()
    if quantization is not None:
        extra.update(
            quantization_config=bitsandbytes_config(
                quantization, keep=head_modules(auto, config), sharded=sharded
            ),
        )
        if not sharded:  # under ZeRO-3 DeepSpeed places the shards (it refuses a device_map)
            extra["device_map"] = quantized_device_map()
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
            dtype=load_dtype(quantization, sharded=sharded),
            **attention_kwargs(section),
            **extra,
        )
    if location.gguf_file:
        forget_gguf_origin(model)
    missing = set(info.get("missing_keys", []))
    fresh = [name for name, _ in model.named_parameters() if name in missing]
    return LoadedModel(model, location, fresh)


def head_modules(auto, config) -> list[str]:
    """The modules a task puts on top of the backbone (a classifier, an LM head): trained in full beside the
    adapters, so they must stay unquantized (bitsandbytes cannot train a 4-bit head; peft's copy of one fails)."""
    import torch

    with torch.device("meta"), full_weights():  # an empty copy, not one partitioned by ZeRO-3's zero.Init
        model = auto.from_config(config)
    prefix = getattr(model, "base_model_prefix", "")
    return [
        name
        for name, child in model.named_children()
        if name != prefix and next(child.parameters(), None) is not None
    ]


def forget_gguf_origin(model) -> None:
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
    except Exception as exc:  # a library's error while reading files the user pointed at
        reason = library_reason(exc)
        if "contains custom code" in reason:
            raise FtlError(
                f"model.trust_remote_code: {location} ships Python code of its own, which ftl runs only when the "
                "recipe opts in; read that code, then set model.trust_remote_code: true"
            ) from None
        if location.kind in ("local", "gguf"):
            folder = Path(location.path)
            broken = broken_file(folder, location.gguf_file) if folder.is_dir() else None
            if broken:
                raise FtlError(f"model: cannot load the {what}: {broken}") from None
        hint = ""
        if location.kind == "hub":
            hint = (
                " (offline? add a local copy under model.local_copies, or set HF_HUB_OFFLINE=0 with network)"
            )
        kind = TransientFtlError if location.kind == "hub" else FtlError  # the network may come back
        raise kind(f"model: cannot load the {what} from {location}: {reason}{hint}") from None
