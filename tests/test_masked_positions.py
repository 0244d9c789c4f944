"""Masked-LM training decodes only the masked positions: same loss and gradients as the model's own loss."""

from __future__ import annotations

import pytest
import torch

from ftl.launcher.token_labels import IGNORE_INDEX
from ftl.launcher.train.masked_positions import MaskedPositions
from tests.conftest import TINY_BERT


def _model():
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    settings = {k: v for k, v in TINY_BERT.items() if k != "model_type"}
    config = BertConfig(**{**settings, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
    return BertForMaskedLM(config).train()


def _batch():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 1000, (4, 12), generator=generator)
    labels = torch.full_like(ids, IGNORE_INDEX)
    chosen = torch.rand(ids.shape, generator=generator) < 0.2
    chosen[0, 3] = True
    labels[chosen] = ids[chosen]
    return ids, labels


def test_only_masked_decoding_gives_the_models_own_loss_and_gradients():
    ids, labels = _batch()
    reference = _model()
    expected = reference(input_ids=ids, labels=labels).loss
    expected.backward()

    model = _model()
    selector = MaskedPositions(model)
    selector.positions = labels != IGNORE_INDEX
    outputs = model(input_ids=ids)
    masked = int((labels != IGNORE_INDEX).sum())
    assert outputs.logits.shape == (masked, model.config.vocab_size)
    loss = selector.loss(outputs, labels[selector.positions])
    loss.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    for (name, mine), (_, theirs) in zip(model.named_parameters(), reference.named_parameters(), strict=True):
        if theirs.grad is None:
            assert mine.grad is None or not mine.grad.any(), name
        else:
            assert torch.allclose(mine.grad, theirs.grad, atol=1e-6, rtol=1e-4), name

    selector.positions = None  # outside a training step the model is unchanged
    assert model(input_ids=ids).logits.shape == (*ids.shape, model.config.vocab_size)


def test_the_trainer_computes_the_same_training_loss_either_way(tmp_path):
    from transformers import TrainingArguments

    from ftl.launcher.train.masked_positions import MaskedLMTrainer

    ids, labels = _batch()
    model = _model()
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = MaskedLMTrainer(model=model, args=args)
    inputs = {"input_ids": ids, "labels": labels}
    count = (labels != IGNORE_INDEX).sum()  # HF's num_items_in_batch with one micro-batch per step
    full = trainer.compute_loss(model, dict(inputs), num_items_in_batch=count)
    trainer.masked_positions = MaskedPositions(model)
    sparse, outputs = trainer.compute_loss(model, dict(inputs), return_outputs=True, num_items_in_batch=count)
    assert outputs.logits.shape == (count, model.config.vocab_size)  # only the masked positions decoded
    assert sparse.item() == pytest.approx(full.item(), rel=1e-6)
    assert trainer.masked_positions.positions is None


def test_a_model_without_output_embeddings_keeps_full_decoding():
    from transformers import BertConfig, BertModel

    settings = {k: v for k, v in TINY_BERT.items() if k != "model_type"}
    assert not MaskedPositions(BertModel(BertConfig(**settings))).active
