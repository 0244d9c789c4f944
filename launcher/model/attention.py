"""The model's attention implementation (model.attn_implementation), and whether it keeps packed examples apart.

transformers keeps examples packed into one row apart when the row comes with `position_ids` that restart per
example and no attention mask: `masking_utils.create_causal_mask` detects the restarts and gives SDPA, eager
(and flex) attention a block-diagonal causal mask; flash_attention_2 reads the boundaries from `cu_seq_lens_*`.
A model whose code builds its mask or positions elsewhere (ALiBi models such as BLOOM and MPT take no position
ids; OPT builds its causal mask without them) would let the examples attend to each other
without a word: `require_packed_attention` tries it on the
model itself, one short forward pass, before training starts.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from ftl.launcher.errors import FtlError
from ftl.launcher.recipe.schema import ModelSection

FLASH = "flash_attention_2"


def attention_kwargs(section: ModelSection, *, meta: bool = False) -> dict[str, Any]:
    """from_pretrained/from_config keyword arguments for model.attn_implementation (none when unset, and none
    for a meta model: shapes do not depend on it, and `ftl check` may run where flash-attn is not installed)."""
    choice = section.attn_implementation
    if choice is None or meta:
        return {}
    if choice == FLASH:
        import torch

        if importlib.util.find_spec("flash_attn") is None:
            raise FtlError(
                "model.attn_implementation: flash_attention_2 needs the flash-attn package (pip install flash-attn); "
                "use sdpa"
            )
        if not torch.cuda.is_available():
            raise FtlError(
                "model.attn_implementation: flash_attention_2 runs on a CUDA GPU only; use sdpa here"
            )
    return {"attn_implementation": choice}


def require_packed_attention(model, key: str) -> None:
    """Raise when the model lets examples packed into one row (position ids restarting, no attention mask)
    attend to each other: the last example's outputs must be the same as when it runs alone. Skipped for
    models whose weights are not here (meta devices, ZeRO-3 partitions)."""
    import torch

    parameters = list(model.parameters())
    if not parameters or any(p.device.type == "meta" or hasattr(p, "ds_id") for p in parameters):
        return
    device = parameters[0].device
    vocab = model.get_input_embeddings().weight.shape[0]
    generator = torch.Generator().manual_seed(0)
    first = torch.randint(0, vocab, (1, 6), generator=generator)
    second = torch.randint(0, vocab, (1, 5), generator=generator)
    packed = torch.cat([first, second], dim=1).to(device)
    positions = torch.tensor([list(range(6)) + list(range(5))], device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            together = model(input_ids=packed, position_ids=positions, use_cache=False).logits[0, 6:].float()
            alone = model(input_ids=second.to(device), use_cache=False).logits[0].float()
            mixed = model(input_ids=packed, use_cache=False).logits[0, 6:].float()
    except TypeError as exc:  # a forward without position_ids
        raise FtlError(
            f"{key}: {type(model).__name__} takes no position ids, so packed examples would attend to each other "
            f"({exc}); set it to false"
        ) from None
    finally:
        model.train(was_training)
    leak = (together - alone).abs().max().item()
    cross = (mixed - alone).abs().max().item()
    if cross > 0 and leak > 0.05 * cross:
        name = getattr(model.config, "_attn_implementation", None)
        raise FtlError(
            f"{key}: {type(model).__name__} (attention: {name}) lets packed examples attend to each other (it "
            "ignores restarting position ids); set it to false, or use a model whose attention honours them "
            "(e.g. Llama, Qwen2, Mistral, GPT-2 with sdpa, eager or flash_attention_2)"
        )
