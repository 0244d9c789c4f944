"""One encoder, one head per task: a Hugging Face model of its own (saved and loaded with save_pretrained /
from_pretrained), so the Trainer, DeepSpeed and checkpoints treat it like any other model.

Heads: `sequence` (the first token's final hidden state -> dropout -> linear, as BERT's classifier) and
`token` (every token's hidden state -> dropout -> linear). A batch holds rows of one task (`task_id`); its
loss is the head's cross-entropy times the task's loss weight.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import ModelOutput

from ftl.launcher.errors import FtlError
from ftl.launcher.token_labels import IGNORE_INDEX


class MultiTaskConfig(PretrainedConfig):
    model_type = "ftl-multitask"

    def __init__(
        self,
        encoder: dict[str, Any] | None = None,
        heads: dict[str, dict[str, Any]] | None = None,
        head_dropout: float = 0.1,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.encoder = encoder or {}
        self.heads = (
            heads or {}
        )  # name -> {"kind": "sequence"|"token", "labels": [...], "loss_weight": float}
        self.head_dropout = head_dropout


class MultiTaskModel(PreTrainedModel):
    config_class = MultiTaskConfig
    base_model_prefix = "encoder"
    supports_gradient_checkpointing = True
    _no_split_modules: list[str] = []

    def __init__(self, config: MultiTaskConfig, encoder: torch.nn.Module | None = None) -> None:
        super().__init__(config)
        if encoder is None:
            encoder_config = AutoConfig.for_model(**config.encoder)
            encoder = (
                AutoModel.from_config(encoder_config, add_pooling_layer=False)
                if _has_pooler(encoder_config)
                else AutoModel.from_config(encoder_config)
            )
        self.encoder = encoder
        hidden = self.encoder.config.hidden_size
        self.task_names = list(config.heads)
        self.dropout = torch.nn.Dropout(config.head_dropout)
        taken = torch.nn.ModuleDict()  # its methods and attributes (training, ...) cannot be keys
        reserved = [name for name in config.heads if hasattr(taken, name)]
        if reserved:
            raise FtlError(
                f"task.tasks.{reserved[0]}: '{reserved[0]}' cannot name a sub-task (torch keeps the heads in a "
                "ModuleDict, which has an attribute of that name); rename it, e.g. to "
                f"'{reserved[0]}_task'"
            )
        self.heads = torch.nn.ModuleDict(
            {name: torch.nn.Linear(hidden, len(spec["labels"])) for name, spec in config.heads.items()}
        )
        self.post_init()

    def _init_weights(self, module) -> None:
        if isinstance(module, torch.nn.Linear) and module in self.heads.values():
            module.weight.data.normal_(0.0, 0.02)
            module.bias.data.zero_()

    def get_input_embeddings(self):
        return self.encoder.get_input_embeddings()

    def forward(
        self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, task_id=None, **kwargs
    ):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        hidden = self.encoder(**inputs).last_hidden_state
        name = self.task_names[int(task_id.reshape(-1)[0])]
        spec = self.config.heads[name]
        features = hidden[:, 0] if spec["kind"] == "sequence" else hidden
        logits = self.heads[name](self.dropout(features))
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX
            ) * float(spec.get("loss_weight", 1.0))
        return ModelOutput(loss=loss, logits=logits)


def _has_pooler(config) -> bool:
    """BERT-like encoders build a pooler the heads do not use (it would get no gradient)."""
    import inspect

    model_class = AutoModel._model_mapping[type(config)]
    return "add_pooling_layer" in inspect.signature(model_class.__init__).parameters


def build(
    encoder_location: str | None,
    encoder_config,
    heads: dict[str, dict[str, Any]],
    dropout: float,
    load_kwargs: dict[str, Any],
) -> MultiTaskModel:
    """A new multi-task model: the pretrained encoder at `encoder_location` (or a random one from its config)
    and freshly initialised heads."""
    config = MultiTaskConfig(encoder=encoder_config.to_dict(), heads=heads, head_dropout=dropout)
    extra = {"add_pooling_layer": False} if _has_pooler(encoder_config) else {}
    if encoder_location is None:
        torch.manual_seed(load_kwargs.pop("seed", 0))
        encoder = AutoModel.from_config(encoder_config, **extra)
    else:
        encoder = AutoModel.from_pretrained(encoder_location, config=encoder_config, **extra, **load_kwargs)
    return MultiTaskModel(config, encoder=encoder)
