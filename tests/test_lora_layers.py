"""lora.layers_to_transform: adapters on chosen layers only (peft's layers_to_transform), all-linear included."""

from __future__ import annotations

import pytest

from ftl.launcher.errors import FtlError
from tests.conftest import TINY_BERT, TINY_LLAMA


@pytest.mark.parametrize("target", ["all-linear", ["q_proj", "v_proj"]])
def test_lora_layers_to_transform_puts_adapters_on_those_layers_only(target):
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftl.launcher.model.adapters import add_lora
    from ftl.launcher.recipe.scaling import LoraSection

    config = LlamaConfig(
        **{
            **{k: v for k, v in TINY_LLAMA.items() if k != "model_type"},
            "num_hidden_layers": 4,
            "vocab_size": 64,
        }
    )
    lora = LoraSection(r=2, target_modules=target, layers_to_transform=[2, 3])
    model = add_lora(
        LlamaForCausalLM(config), lora, "CAUSAL_LM", quantized=False, gradient_checkpointing=False
    )
    adapted = {name.split(".lora_A")[0] for name, _ in model.named_parameters() if ".lora_A" in name}
    assert {int(name.split("layers.")[1].split(".")[0]) for name in adapted} == {
        2,
        3,
    }  # no head, no layer 0-1
    per_layer = 7 if target == "all-linear" else 2  # q k v o gate up down
    assert len(adapted) == 2 * per_layer

    with pytest.raises(
        FtlError, match=r"lora.layers_to_transform: layer 4 is not in this model, whose 4 layers are 0-3"
    ):
        add_lora(
            LlamaForCausalLM(config),
            LoraSection(r=2, layers_to_transform=[3, 4]),
            "CAUSAL_LM",
            quantized=False,
            gradient_checkpointing=False,
        )


def test_an_encoder_s_layers_are_found_too():
    from transformers import BertConfig, BertForSequenceClassification

    from ftl.launcher.model.adapters import add_lora
    from ftl.launcher.recipe.scaling import LoraSection

    config = BertConfig(**{k: v for k, v in TINY_BERT.items() if k != "model_type"})
    lora = LoraSection(r=2, layers_to_transform=[1])
    model = add_lora(
        BertForSequenceClassification(config), lora, "SEQ_CLS", quantized=False, gradient_checkpointing=False
    )
    adapted = {name.split(".lora_A")[0] for name, _ in model.named_parameters() if ".lora_A" in name}
    assert adapted and all(".layer.1." in name for name in adapted)  # not layer 0, not the classifier
