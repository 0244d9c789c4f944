"""Masked-LM training that projects only the masked positions onto the vocabulary.

A Hugging Face *ForMaskedLM model ends in a decoder (its output embeddings: hidden size x vocabulary, tied to
the input embeddings) applied to every position; the loss then ignores the ~85 % of positions that were not
masked. For a small encoder that decoder is the largest matmul of the step (MiniLM: 384 x 30,522 per position,
more FLOPs than its six layers together), so most of a step went into logits nobody reads.

In training, a forward pre-hook on the decoder hands it only the masked positions' hidden states; the model
returns logits [masked positions, vocabulary] and the loss is their mean cross entropy: BERT's own loss (a
per-micro-batch mean, which the Trainer divides by the accumulation steps), computed on the rows that count.
Evaluation runs the model unchanged: its metrics read the logits at every position. A single process driving
several GPUs (HF's nn.DataParallel splits the batch across replicas that share the hook) decodes in full.
"""

from __future__ import annotations

from typing import Any

from transformers import Trainer

from ftl.launcher.token_labels import IGNORE_INDEX
from ftl.launcher.train.trainer import FtlTrainerMixin


class MaskedPositions:
    """The pre-hook on a model's decoder; `positions` (a bool mask [batch, length]) is set per training step."""

    def __init__(self, model) -> None:
        self.positions = None
        decoder = model.get_output_embeddings()
        self.handle = decoder.register_forward_pre_hook(self._select) if decoder is not None else None

    @property
    def active(self) -> bool:
        return self.handle is not None

    def _select(self, module, args: tuple) -> tuple | None:
        if self.positions is None:
            return None
        hidden = args[0]
        return (hidden[self.positions.to(hidden.device)], *args[1:])

    def loss(self, outputs, targets):
        """Mean cross entropy of the masked positions' logits against their labels (`targets`, 1-D)."""
        from torch.nn.functional import cross_entropy

        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        if logits.dim() != 2 or logits.shape[0] != targets.shape[0]:
            raise RuntimeError(
                f"masked-LM decoder returned logits of shape {tuple(logits.shape)} for {targets.shape[0]} masked "
                "positions: this model reshapes after its output embeddings, so only-masked decoding does not apply"
            )
        return cross_entropy(logits.float(), targets.to(logits.device))


class MaskedLMTrainer(FtlTrainerMixin, Trainer):
    """Trains a masked LM decoding only its masked positions (the decoder's pre-hook is set up here)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.masked_positions = MaskedPositions(self.model)

    def compute_loss(self, model, inputs: dict[str, Any], return_outputs=False, num_items_in_batch=None):
        selector = self.masked_positions
        if (
            selector is None
            or not selector.active
            or not model.training
            or "labels" not in inputs
            or self.args.n_gpu > 1  # nn.DataParallel: each replica sees a slice of the batch
        ):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs["labels"]
        selector.positions = labels != IGNORE_INDEX
        try:
            outputs = model(**{key: value for key, value in inputs.items() if key != "labels"})
            loss = selector.loss(outputs, labels[selector.positions])
        finally:
            selector.positions = None
        return (loss, outputs) if return_outputs else loss
