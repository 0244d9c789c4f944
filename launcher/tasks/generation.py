"""Generated text and its ROUGE: shared by seq2seq evaluation and instruction-tuned causal LMs.

ROUGE is rouge-score's F-measure with Porter stemming (the settings of the summarisation literature and of
HF's examples). rougeLsum treats each sentence as a unit, so texts are split into sentences first: a split
after '.', '!' or '?' followed by whitespace (no punkt model is needed offline). With several references,
each prediction takes its best score over them, as in SciTLDR's evaluation.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ftl.launcher.errors import FtlError
from ftl.launcher.files import atomic_write
from ftl.launcher.model.integrity import position_limit
from ftl.launcher.tasks.base import Predictions

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _sentences(text: str) -> str:
    return "\n".join(part for part in _SENTENCE_END.split(text.strip()) if part)


def rouge_per_row(predictions: list[str], references: list[list[str]]) -> list[dict[str, float]]:
    """ROUGE F-measures of each prediction, the best over its references."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    rows = []
    for prediction, refs in zip(predictions, references, strict=True):
        best = dict.fromkeys(ROUGE_TYPES, 0.0)
        for reference in refs or [""]:
            scores = scorer.score(_sentences(reference), _sentences(prediction))
            for kind in ROUGE_TYPES:
                best[kind] = max(best[kind], scores[kind].fmeasure)
        rows.append(best)
    return rows


def rouge(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """Mean ROUGE over the rows (fractions, 0-1)."""
    rows = rouge_per_row(predictions, references)
    if not rows:
        return dict.fromkeys(ROUGE_TYPES, 0.0)
    return {kind: sum(r[kind] for r in rows) / len(rows) for kind in ROUGE_TYPES}


def check_generation_room(model, max_new_tokens: int, what: str = "--max-new-tokens") -> None:
    """A decoder-only model cannot generate past its positions (a learned position table has no row for them;
    rotary positions were never trained there): one line instead of an index error or an endless generation."""
    if getattr(model.config, "is_encoder_decoder", False):
        return
    limit = position_limit(model) or getattr(model.config, "max_position_embeddings", None)
    if isinstance(limit, int) and max_new_tokens >= limit:
        raise FtlError(
            f"{what} {max_new_tokens}: the model takes {limit} positions in all, prompt and generated text; "
            f"give fewer (e.g. {limit // 2})"
        )


def generation_config(settings, tokenizer, model=None, stop_token_ids: list[int] | None = None) -> Any:
    """A transformers GenerationConfig from the recipe's generation settings and the tokenizer's ids
    (`stop_token_ids`: end generating at any of these, e.g. a chat template's end-of-turn token)."""
    from transformers import GenerationConfig

    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if stop_token_ids:
        eos = list(stop_token_ids)
    base = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": eos}
    if model is not None and getattr(model.config, "decoder_start_token_id", None) is not None:
        base["decoder_start_token_id"] = model.config.decoder_start_token_id
    return GenerationConfig(**base, **settings.config_kwargs())


def generate(
    model,
    tokenizer,
    prompts: list[str],
    settings,
    *,
    max_input_length: int,
    batch_size: int,
    synced: bool = False,
    seed: int = 0,
    keep_end: bool = False,
    on_batch=None,
    stop_token_ids: list[int] | None = None,
    add_special_tokens: bool = True,
) -> list[str]:
    """Generate a continuation of each prompt (decoder-only: only the new tokens; encoder-decoder: the output).

    Prompts are tokenised as in training (the tokenizer's own special tokens) and batched longest-first, left
    padded for decoder-only models. `synced` keeps every worker
    stepping together (DeepSpeed ZeRO-3 shards the weights, so all workers must run every forward).
    A prompt longer than max_input_length keeps its start, or with `keep_end` its end (a text to continue).
    `on_batch(n)` is called after each batch of n prompts (progress). A chat prompt is already rendered by its
    template (add_special_tokens=False: the template places its own BOS) and stops at `stop_token_ids`."""
    import torch

    decoder_only = not getattr(model.config, "is_encoder_decoder", False)
    config = generation_config(settings, tokenizer, model, stop_token_ids)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    outputs: dict[int, str] = {}
    side, cut = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side = "left" if decoder_only else "right"
    tokenizer.truncation_side = "left" if keep_end else cut
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    try:
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            batch = tokenizer(
                [prompts[i] for i in chosen],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_input_length,
                add_special_tokens=add_special_tokens,
                return_token_type_ids=False,  # generation takes none (a BERT tokenizer would add them)
            ).to(device)
            with torch.no_grad():
                generated = model.generate(**batch, generation_config=config, synced_gpus=synced)
            if decoder_only:
                generated = generated[:, batch["input_ids"].shape[1] :]
            texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
            outputs.update({i: text.strip() for i, text in zip(chosen, texts, strict=True)})
            if on_batch is not None:
                on_batch(len(chosen))
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = side, cut
        model.train(was_training)
    return [outputs[i] for i in range(len(prompts))]


def write_generations(directory: Path, sources: list[str], texts: list[str], references: list[list[str]]):
    """generations.jsonl (worst ROUGE-L first) and the mean ROUGE as metrics."""
    import json

    scores = rouge_per_row(texts, references)
    rows = [
        {
            "row": i,
            "source": source,
            "generated": text,
            "references": refs,
            **{k: round(v, 4) for k, v in score.items()},
        }
        for i, (source, text, refs, score) in enumerate(zip(sources, texts, references, scores, strict=True))
    ]
    rows.sort(key=lambda row: row["rougeL"])
    path = directory / "generations.jsonl"
    atomic_write(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    means = {kind: sum(s[kind] for s in scores) / max(len(scores), 1) for kind in ROUGE_TYPES}
    return Predictions(path, means)
