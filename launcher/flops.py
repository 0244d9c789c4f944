"""Training FLOPs of a transformer, counted one way for `ftl plan` (estimates) and `ftl bench` (MFU).

Two conventions, both per trained token, for a sequence of `s` real (non-pad) tokens:

* **6N + attention** (PaLM, Chowdhery et al. 2022, Appendix B; also nanoGPT's `estimate_mfu`):
  `6·N + 12·L·H·Q·s`. Every weight takes part in one multiply-add per token in the forward pass (2N FLOPs)
  and two in the backward pass (4N: the gradient with respect to the layer input and the one with respect to
  the weight). The attention scores (QKᵀ) and their weighted sum (AV) have no weights: forward 2·2·s·H·Q per
  token and layer, backward twice that, so 12·L·H·Q·s in all. H·Q (heads × head dimension) is the hidden
  size in most models. The full s×s score square is counted, as PaLM does, also for causal models.
* **trainable-aware**: what a step with frozen layers or LoRA adapters really computes.
  Forward `2N` for every weight; backward, the activation gradient `2·N_bw`, only for the weights at or
  above the lowest trainable layer (backpropagation stops there); the weight gradient `2·N_t` only for
  trainable weights. Attention: forward `4·L·H·Q·s`, backward `8·L_bw·H·Q·s` for the `L_bw` layers the
  gradient passes through. With every weight trainable this equals the 6N count exactly; with LoRA on every
  layer N_bw = N and N_t ≈ 0, so ≈ 4N; with the bottom layers and the embeddings frozen it lies between 2N
  and 6N (SmolLM2-135M with the top 6 of 30 layers trained: 3.05N, because its tied LM head, though frozen,
  is backpropagated through). Counted at layer granularity: inside the lowest trainable layer every
  activation gradient is counted, a slight overcount.

What N is: the parameters that take part in a matrix multiply for every token. Embedding *lookups* (word,
position and token-type tables) cost no FLOPs and are left out; a word embedding tied to the output
projection is counted once, as the output projection (it multiplies every token's hidden state by the
vocabulary). Norms and biases are counted like weights (the convention; they are a tiny share). A head that
runs once per sequence (a classifier on the first token) is counted per token, as the 6N convention does:
an overcount of at most its size (for MiniLM's pooler and classifier, 1.4 % of N).

Work done counts **non-pad tokens** only: a step's FLOPs are Σ over its sequences of
`per_token·ℓ + attention·ℓ²`, with ℓ the real length of each sequence (the planned length in `ftl plan`).
MFU = achieved FLOPs/s ÷ (peak FLOPs/s per device × devices).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from ftl.launcher.model.freeze import layer_pattern, layers_or_none, parameter_count


@dataclass(frozen=True)
class FlopCounts:
    """What the FLOP formulas need from a model (after freezing or LoRA)."""

    dense: int  # N: parameters multiplied with every token (lookup tables left out)
    dense_trainable: int  # N_t: of those, the trainable ones (they get weight gradients)
    dense_backward: int  # N_bw: of those, the ones at or above the lowest trainable layer
    layers: int  # L: transformer layers
    backward_layers: int  # L_bw: layers at or above the lowest trainable one
    attention_width: int  # H·Q: attention heads × head dimension

    # ---- per token, and per token per context token (the attention term) -------------------------
    @property
    def dense_per_token(self) -> int:
        """6N."""
        return 6 * self.dense

    @property
    def attention_per_token(self) -> int:
        """12·L·H·Q: multiplied by the sequence length gives the attention FLOPs of one token."""
        return 12 * self.layers * self.attention_width

    @property
    def trainable_dense_per_token(self) -> int:
        """2N + 2N_bw + 2N_t."""
        return 2 * self.dense + 2 * self.dense_backward + 2 * self.dense_trainable

    @property
    def trainable_attention_per_token(self) -> int:
        """(4·L + 8·L_bw)·H·Q."""
        return (4 * self.layers + 8 * self.backward_layers) * self.attention_width

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def model_flops(counts: FlopCounts, tokens: float, tokens_squared: float) -> float:
    """6N + attention FLOPs of training on sequences holding `tokens` real tokens in all, where
    `tokens_squared` is Σ ℓ² over the sequences (ℓ: each sequence's real length)."""
    return counts.dense_per_token * tokens + counts.attention_per_token * tokens_squared


def trainable_flops(counts: FlopCounts, tokens: float, tokens_squared: float) -> float:
    """The trainable-aware FLOPs of the same work (see the module docstring)."""
    return counts.trainable_dense_per_token * tokens + counts.trainable_attention_per_token * tokens_squared


def uniform_sequences(sequences: float, length: int) -> tuple[float, float]:
    """(tokens, Σ ℓ²) of `sequences` sequences of `length` real tokens each (the plan's assumption)."""
    return sequences * length, sequences * length * length


def mfu(flops: float, seconds: float, peak_flops_per_device: float | None, devices: int) -> float | None:
    """Model FLOPs utilisation: achieved FLOPs/s over the peak of all devices (None without a peak)."""
    if not peak_flops_per_device or seconds <= 0 or devices <= 0:
        return None
    return flops / seconds / (peak_flops_per_device * devices)


# ---- counting a model --------------------------------------------------------------------------------
_EMBEDDING_NAME = re.compile(r"(^|\.)(embeddings?|wte|wpe|embed_tokens|embed_positions)(\.|$)")
# peft's ModulesToSaveWrapper keeps the untouched original next to the trained copy; only the copy runs.
_UNUSED_COPY = ".original_module."


def flop_counts(model: Any) -> FlopCounts:
    """Count N, N_t, N_bw, L, L_bw and H·Q of a model (real, meta-device, ZeRO-3 partitioned or quantized).

    Positions: lookup tables and other embedding parameters sit below the layers (-1), layer i at i, and
    everything else (final norm, pooler, task or LM head) above them (L). A tied word embedding is used at
    both ends: it is counted as the output projection (position L), and when trainable it makes the whole
    model backpropagate (its lookup at the bottom needs gradients).
    """
    import torch

    found = layers_or_none(model)
    layer_re = layer_pattern(found[0]) if found else None
    n_layers = found[1] if found else 0
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    output_weight = getattr(output, "weight", None)
    lookups = {
        id(module.weight)
        for module in model.modules()
        if isinstance(module, torch.nn.Embedding) and module.weight is not output_weight
    }

    placed: list[tuple[int, int, bool]] = []  # (position, elements, trainable) of each dense parameter
    lowest = n_layers + 1  # above everything: nothing trainable
    for name, parameter in model.named_parameters():  # each shared parameter once
        if _UNUSED_COPY in name:
            continue
        trainable = bool(parameter.requires_grad)
        if id(parameter) in lookups:
            if trainable:
                lowest = -1
            continue
        match = layer_re.search(name) if layer_re is not None else None
        if parameter is output_weight:
            position = n_layers
            if trainable and _EMBEDDING_NAME.search(name):  # tied: also the input lookup
                lowest = -1
        elif match:
            position = int(match.group(1))
        elif _EMBEDDING_NAME.search(name):
            position = -1
        else:
            position = n_layers
        if trainable:
            lowest = min(lowest, position)
        placed.append((position, parameter_count(parameter), trainable))

    return FlopCounts(
        dense=sum(count for _, count, _ in placed),
        dense_trainable=sum(count for _, count, trainable in placed if trainable),
        dense_backward=sum(count for position, count, _ in placed if position >= lowest),
        layers=n_layers,
        backward_layers=min(max(n_layers - max(lowest, 0), 0), n_layers),
        attention_width=attention_width(getattr(model, "config", None)),
    )


def attention_width(config: Any) -> int:
    """H·Q: heads × head dimension (the hidden size unless the config sets head_dim otherwise)."""
    if config is None:
        return 0
    config = getattr(config, "text_config", None) or config
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    head_dim = getattr(config, "head_dim", None)
    if heads and head_dim:
        return heads * int(head_dim)
    return hidden
