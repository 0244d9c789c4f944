"""Masked-LM training that projects only the masked positions onto the vocabulary.

A Hugging Face *ForMaskedLM model ends in a decoder (its output embeddings: hidden size x vocabulary, tied to
the input embeddings) applied to every position; the loss then ignores the ~85 % of positions that were not
masked. For a small encoder that decoder is the largest matmul of the step (MiniLM: 384 x 30,522 per position,
more FLOPs than its six layers together), so most of a step went into logits nobody reads.

In training, a forward pre-hook on the decoder hands it only the masked positions' hidden states; the model
returns logits [masked positions, vocabulary] and the loss is their cross entropy. It is reduced as HF's
Trainer assumes of a model that takes num_items_in_batch (its gradient-accumulation scaling depends on it): the
sum over num_items_in_batch, which for one micro-batch per step is the mean over its masked tokens, BERT's own
loss. (Under gradient accumulation it is the token-weighted mean of the accumulated batch, where BERT's own
per-micro-batch mean would be added up un-divided by HF.) Models whose forward takes no loss kwargs: the mean. Same loss and gradients, computed on the rows that count. Evaluation runs the model
unchanged: its metrics read the logits at every position.
"""

from __future__ import annotations

from typing import Any

from transformers import Trainer

from launcher.train.trainer import FtlTrainerMixin

IGNORE_INDEX = -100


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

    def loss(self, outputs, labels, num_items_in_batch=None):
        from transformers.loss.loss_utils import fixed_cross_entropy

        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        targets = labels[labels != IGNORE_INDEX]
        if logits.dim() != 2 or logits.shape[0] != targets.shape[0]:
            raise RuntimeError(
                f"masked-LM decoder returned logits of shape {tuple(logits.shape)} for {targets.shape[0]} masked "
                "positions: this model reshapes after its output embeddings, so only-masked decoding does not apply"
            )
        return fixed_cross_entropy(
            logits.float(), targets.to(logits.device), num_items_in_batch, IGNORE_INDEX
        )


class MaskedLMTrainer(FtlTrainerMixin, Trainer):
    masked_positions: MaskedPositions | None = None  # set by the masked-LM task (configure_trainer)

    def compute_loss(self, model, inputs: dict[str, Any], return_outputs=False, num_items_in_batch=None):
        selector = self.masked_positions
        if selector is None or not selector.active or not model.training or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        accepts = self.model_accepts_loss_kwargs  # does the model's own loss divide by num_items_in_batch?
        if self.compute_loss_func is not None or (self.args.average_tokens_across_devices and not accepts):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        def loss(outputs, labels, num_items_in_batch=None):  # HF pops the labels and hands them here
            return selector.loss(outputs, labels, num_items_in_batch if accepts else None)

        selector.positions = inputs["labels"] != IGNORE_INDEX
        self.compute_loss_func = loss
        try:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        finally:
            self.compute_loss_func = None
            selector.positions = None
