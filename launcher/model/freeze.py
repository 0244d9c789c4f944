"""Freezing: embeddings, bottom N layers, explicit layers or ranges, regexes, or everything but the head.

Also the per-block report of trainable versus frozen parameters that `ftl check` and `ftl run` print.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ftl.launcher.errors import FtlError, did_you_mean
from ftl.launcher.recipe.schema import FreezeSection

_LAYER_CONTAINER_NAMES = ("layers", "layer", "h", "blocks", "block")


def parameter_count(parameter) -> int:
    """Elements of a parameter as the model uses it: the full size of a ZeRO-3 partitioned parameter
    (`ds_numel`) and of a bitsandbytes 4-bit one (packed two per byte, shape in `quant_state`)."""
    full = getattr(parameter, "ds_numel", None)
    if full is not None:
        return int(full)
    quant_state = getattr(parameter, "quant_state", None)
    shape = getattr(quant_state, "shape", None)
    if shape is not None:
        count = 1
        for size in shape:
            count *= int(size)
        return count
    return int(parameter.numel())


@dataclass
class BlockCount:
    block: str
    total: int
    trainable: int

    @property
    def frozen(self) -> int:
        return self.total - self.trainable


def find_layers(model) -> tuple[str, int]:
    """The parameter-name prefix of the transformer layer list (e.g. 'bert.encoder.layer') and its length."""
    found = layers_or_none(model)
    if found is None:
        raise FtlError(
            f"freeze: cannot find the transformer layers of {type(model).__name__}; use freeze.patterns"
        )
    return found


def layers_or_none(model) -> tuple[str, int] | None:
    """The largest ModuleList of identical blocks named like a layer list, or None."""
    import torch

    best: tuple[str, int, int] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) == 0:
            continue
        if name.rsplit(".", 1)[-1] not in _LAYER_CONTAINER_NAMES:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        size = sum(parameter_count(p) for p in module.parameters())
        if best is None or size > best[2]:
            best = (name, len(module), size)
    return None if best is None else (best[0], best[1])


def layer_pattern(prefix: str):
    """Matches a parameter name inside layer N of the layer list at `prefix`; group 1 is N."""
    return re.compile(re.escape(prefix) + r"\.(\d+)\.")


def embedding_parameter_names(model) -> set[str]:
    embeddings = model.get_input_embeddings()
    names = {name for name, p in model.named_parameters() if any(p is q for q in embeddings.parameters())}
    layers = layers_or_none(model)
    for name, _ in model.named_parameters():
        if layers is not None and name.startswith(layers[0] + "."):
            continue
        if re.search(r"(^|\.)(embeddings?|wte|wpe|embed_tokens|embed_positions)(\.|$)", name):
            names.add(name)
    return names


def parse_layer_spec(spec: list[int | str], n_layers: int) -> set[int]:
    """[0, 2, '4-5', -1] -> {0, 2, 4, 5, n-1}; invalid entries list the valid range."""
    chosen: set[int] = set()
    valid = f"the model has {n_layers} layers: 0-{n_layers - 1} (or -1 to -{n_layers} from the top)"
    for item in spec:
        text = str(item).strip()
        match = re.fullmatch(r"(-?\d+)\s*-\s*(-?\d+)", text) if not text.lstrip("-").isdigit() else None
        if match:
            start, end = (_index(int(g), n_layers, valid) for g in match.groups())
            if start > end:
                raise FtlError(f"freeze.layers: range '{text}' is empty (start after end); {valid}")
            chosen.update(range(start, end + 1))
        elif text.lstrip("-").isdigit():
            chosen.add(_index(int(text), n_layers, valid))
        else:
            raise FtlError(f"freeze.layers: '{text}' is not a layer index or a range like '0-3'; {valid}")
    return chosen


def _index(value: int, n_layers: int, valid: str) -> int:
    index = value + n_layers if value < 0 else value
    if not 0 <= index < n_layers:
        raise FtlError(f"freeze.layers: layer {value} does not exist; {valid}")
    return index


def apply_freezing(model, spec: FreezeSection, head_names: list[str]) -> None:
    """Set requires_grad from the recipe; `head_names` are the task head's (newly initialised) parameters."""
    names = [name for name, _ in model.named_parameters()]
    frozen: set[str] = set()
    if spec.bottom_layers or spec.layers:
        layer_prefix, n_layers = find_layers(model)  # only then must the model have a layer list
    if spec.head_only:
        head = set(head_names)
        if not head:
            raise FtlError("freeze.head_only: this model has no separate task head to train")
        frozen.update(n for n in names if n not in head)
    if spec.embeddings:
        frozen.update(embedding_parameter_names(model))
    if spec.bottom_layers:
        if spec.bottom_layers > n_layers:
            raise FtlError(
                f"freeze.bottom_layers: {spec.bottom_layers} is more than the model's {n_layers} layers"
            )
        frozen.update(_layer_params(names, layer_prefix, set(range(spec.bottom_layers))))
    if spec.layers:
        frozen.update(_layer_params(names, layer_prefix, parse_layer_spec(spec.layers, n_layers)))
    for pattern in spec.patterns:
        matched = {n for n in names if re.search(pattern, n)}
        if not matched:
            examples = ", ".join(names[:3])
            raise FtlError(
                f"freeze.patterns: '{pattern}' matches no parameter{did_you_mean(pattern, names)}; "
                f"names look like: {examples}"
            )
        frozen.update(matched)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name not in frozen)
    if not any(p.requires_grad for p in model.parameters()):
        raise FtlError("freeze: these settings freeze every parameter; nothing would be trained")


def _layer_params(names: list[str], prefix: str, layers: set[int]) -> set[str]:
    pattern = layer_pattern(prefix)
    return {n for n in names if (m := pattern.match(n)) and int(m.group(1)) in layers}


def block_counts(model, head_names: list[str]) -> list[BlockCount]:
    """Parameters per block: embeddings, each layer, head, other (norms, pooler). Tied weights count once."""
    layer_prefix, n_layers = layers_or_none(model) or ("", 0)
    embeddings = embedding_parameter_names(model)
    head = set(head_names)
    layer_re = (
        layer_pattern(layer_prefix) if n_layers else re.compile(r"(?!)")
    )  # no layer list: nothing matches
    order = ["embeddings", *[f"layer {i}" for i in range(n_layers)], "head", "other"]
    counts = {block: BlockCount(block, 0, 0) for block in order}
    for name, parameter in model.named_parameters():  # named_parameters() yields a tied tensor once
        match = layer_re.match(name)
        if name in embeddings:
            block = "embeddings"
        elif match:
            block = f"layer {match.group(1)}"
        elif name in head:
            block = "head"
        else:
            block = "other"
        size = parameter_count(parameter)  # the full size also when ZeRO-3 or 4-bit storage holds a part
        counts[block].total += size
        counts[block].trainable += size if parameter.requires_grad else 0
    return [counts[b] for b in order if counts[b].total]
