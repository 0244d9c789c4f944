"""Values a model config accepts but the model cannot run with, named before anything is built: a size of 0
(an embedding table with no rows), key/value heads that do not divide the attention heads, an activation
transformers does not know. Only the settings the recipe gave (model.config, model.config_overrides) are
checked: a published model's own config is taken as it is."""

from __future__ import annotations

from typing import Any

from ftl.launcher.errors import FtlError, did_you_mean
from ftl.launcher.recipe.schema import ModelSection

_ACTIVATION_KEYS = ("hidden_act", "activation_function", "hidden_activation")


def check_config_values(config, section: ModelSection) -> None:
    given = {**(section.config or {}), **section.config_overrides}
    key_of = {
        key: ("model.config_overrides" if key in section.config_overrides else "model.config")
        for key in given
    }
    if not given:
        return
    for key, value in given.items():
        _check_size(f"{key_of[key]}.{key}", key, value, type(config))
        if key in _ACTIVATION_KEYS:
            _check_activation(f"{key_of[key]}.{key}", value)
    heads, kv_heads = (
        getattr(config, "num_attention_heads", None),
        getattr(config, "num_key_value_heads", None),
    )
    if (
        ("num_key_value_heads" in given or "num_attention_heads" in given)
        and isinstance(heads, int)
        and isinstance(kv_heads, int)
        and kv_heads > 0
        and heads % kv_heads
    ):
        key = "num_key_value_heads" if "num_key_value_heads" in given else "num_attention_heads"
        raise FtlError(
            f"{key_of[key]}.{key}: num_attention_heads ({heads}) must be a multiple of num_key_value_heads "
            f"({kv_heads}): each key/value head serves a whole number of query heads"
        )


# sizes of tables and widths a model cannot have 0 (or fewer) of; layer counts may be 0 (an embeddings-only model),
# and ids (bos_token_id: 0) or windows (sliding_window: 0) are not sizes
_SIZES = frozenset(
    {
        "vocab_size", "hidden_size", "n_embd", "d_model", "dim", "intermediate_size", "d_ff", "ffn_dim",
        "hidden_dim", "n_inner", "num_attention_heads", "n_head", "n_heads", "num_heads", "num_key_value_heads",
        "head_dim", "d_kv", "max_position_embeddings", "n_positions", "type_vocab_size", "embedding_size",
    }
)  # fmt: skip


def _check_size(name: str, key: str, value: Any, config_class) -> None:
    if key not in _SIZES or isinstance(value, bool) or not isinstance(value, int) or value > 0:
        return
    try:  # the class default, for the message only
        default = getattr(config_class(), key, None)
    except Exception:  # noqa: BLE001 - a config class with required arguments has no defaults to show
        default = None
    shown = (
        f" (the default is {default})" if isinstance(default, int) and not isinstance(default, bool) else ""
    )
    raise FtlError(f"{name}: {value} must be at least 1{shown}")


def _check_activation(name: str, value: Any) -> None:
    from transformers.activations import ACT2FN

    if not isinstance(value, str) or value in ACT2FN:
        return
    raise FtlError(
        f"{name}: '{value}' is not an activation transformers knows{did_you_mean(value, list(ACT2FN))}; "
        "e.g. gelu, relu, silu, gelu_new"
    )
