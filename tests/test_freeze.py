"""Freezing: what each recipe setting freezes, and the per-block report."""

from __future__ import annotations

import pytest

from ftl.launcher.errors import FtlError
from ftl.launcher.model.freeze import apply_freezing, block_counts, find_layers, parse_layer_spec
from ftl.launcher.model.load import ModelSpec, load_model, load_tokenizer
from ftl.launcher.recipe import load_recipe
from ftl.launcher.tasks.registry import task_for


def _model(recipe_path, *overrides):
    loaded = load_recipe(recipe_path, list(overrides))
    task = task_for(loaded.recipe.task)
    tokenizer = load_tokenizer(loaded.recipe.model, loaded.search_dirs)
    built = load_model(ModelSpec.of(loaded.recipe, loaded.search_dirs), task, tokenizer)
    apply_freezing(built.model, loaded.recipe.freeze, built.head_names)
    return built


def _frozen_blocks(built):
    return {b.block: b.frozen == b.total for b in block_counts(built.model, built.head_names)}


def test_layer_specs_accept_indexes_ranges_and_negatives():
    assert parse_layer_spec([0, "2-3", -1], 6) == {0, 2, 3, 5}
    with pytest.raises(FtlError, match="layer 6 does not exist; the model has 6 layers: 0-5"):
        parse_layer_spec([6], 6)
    with pytest.raises(FtlError, match="not a layer index or a range"):
        parse_layer_spec(["top"], 6)


def test_bottom_layers_and_embeddings(classification_recipe):
    built = _model(classification_recipe, "freeze.bottom_layers=1", "freeze.embeddings=true")
    blocks = _frozen_blocks(built)
    assert blocks == {"embeddings": True, "layer 0": True, "layer 1": False, "head": False, "other": False}
    assert find_layers(built.model) == ("bert.encoder.layer", 2)


def test_head_only_trains_only_the_new_head(classification_recipe):
    built = _model(classification_recipe, "freeze.head_only=true")
    trainable = {n for n, p in built.model.named_parameters() if p.requires_grad}
    assert trainable and trainable <= set(built.head_names)


def test_patterns_freeze_matching_parameters(classification_recipe):
    built = _model(classification_recipe, "freeze.patterns=['attention']")
    for name, parameter in built.model.named_parameters():
        assert parameter.requires_grad == ("attention" not in name), name


def test_block_counts_add_up_and_tied_weights_count_once(lm_recipe):
    built = _model(lm_recipe, "freeze.embeddings=true")
    counts = block_counts(built.model, built.head_names)
    unique = {id(p): p.numel() for p in built.model.parameters()}
    assert sum(c.total for c in counts) == sum(unique.values())
    assert _frozen_blocks(built)["embeddings"]  # tied with the LM head: frozen together
