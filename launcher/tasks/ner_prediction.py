"""Tagging words without labels (`ftl predict` on a token-classification run).

Input rows hold a list of words, or plain text that is split on whitespace with each word's character span
kept. A row longer than max_length is cut into overlapping windows of whole words; each word takes its tags
from the window where it has the most context on both sides. Output per row: a tag per word and the entities
(word span, text, mean score, and character span for plain text).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from ftl.launcher.data.sources import RawData
from ftl.launcher.errors import FtlError
from ftl.launcher.tasks.ner_metrics import entities
from ftl.launcher.tasks.prediction import PredictionInputs


def encode_words(raw: RawData, tokenizer, *, column: str, max_length: int) -> PredictionInputs:
    """Features for every window of every row of `column` (a list of words or a text per row)."""
    from ftl.launcher.tasks.prediction import require_columns

    if not getattr(tokenizer, "is_fast", False):
        raise FtlError("ftl predict: token classification needs a fast tokenizer (word alignment)")
    require_columns(raw, {"tokens_column": column})
    words_of, spans_of, texts, skipped = [], [], [], {}
    for row, value in enumerate(raw.dataset[column]):
        if value is not None and not isinstance(value, (str, list)):
            raise FtlError(
                f"{raw.row_location(row)}: column '{column}' must hold a list of words or a text, "
                f"got {type(value).__name__}"
            )
        words, spans = split_words(value)
        if not words:
            skipped[row] = f"no words in '{column}'"
        words_of.append(words)
        spans_of.append(spans)
        texts.append(value if isinstance(value, str) else None)
    rows = [i for i, words in enumerate(words_of) if words]
    if not rows:
        return PredictionInputs(rows=len(words_of), per_token=True, skipped=skipped, state={})

    budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    counts = tokenizer([words_of[i] for i in rows], is_split_into_words=True, add_special_tokens=False)
    windows: list[tuple[int, int, int]] = []  # row, first word, end word
    for position, row in enumerate(rows):
        per_word = [0] * len(words_of[row])
        for word in counts.word_ids(position):
            if word is not None:
                per_word[word] += 1
        windows += [(row, a, b) for a, b in word_windows(per_word, max(budget, 1), budget // 4)]
    encoded = tokenizer(
        [words_of[row][a:b] for row, a, b in windows],
        is_split_into_words=True,
        truncation=True,
        max_length=max_length,
    )
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
    features, firsts = [], []
    for i, (_, a, _) in enumerate(windows):
        features.append({k: list(encoded[k][i]) for k in keys})
        seen, positions = set(), []  # the first subword of each word: (token position, word index in the row)
        for position, word in enumerate(encoded.word_ids(i)):
            if word is not None and word not in seen:
                seen.add(word)
                positions.append((position, a + word))
        firsts.append(positions)
    windowed = sum(1 for n in Counter(row for row, _, _ in windows).values() if n > 1)
    notes = [
        f"{windowed} of {len(rows)} rows are longer than task.max_length={max_length} tokens: "
        "tagged in overlapping windows of whole words"
    ]
    return PredictionInputs(
        rows=len(words_of),
        features=features,
        feature_rows=[row for row, _, _ in windows],
        per_token=True,
        skipped=skipped,
        notes=notes if windowed else [],
        state={"words": words_of, "spans": spans_of, "texts": texts, "windows": windows, "firsts": firsts},
    )


def tag_words(inputs: PredictionInputs, outputs: list, names: list[str]) -> list[dict[str, Any]]:
    """predicted_tags (one per word), entities [{type, start, end (word span, end exclusive), text, score,
    and for plain text char_start, char_end}] and, for plain text input, the words the text was split into."""
    from ftl.launcher.tasks.prediction import softmax

    if not inputs.features:
        return [{"predicted_tags": None, "entities": None} for _ in range(inputs.rows)]
    state = inputs.state
    words_of, spans_of = state["words"], state["spans"]
    best: dict[tuple[int, int], tuple[float, Any]] = {}  # (row, word) -> (centrality, probabilities)
    for (row, a, b), positions, (logits,) in zip(state["windows"], state["firsts"], outputs, strict=True):
        last = len(words_of[row]) - 1
        probabilities = softmax(logits)
        for position, word in positions:
            left = word - a if a > 0 else len(words_of[row])
            right = b - 1 - word if b - 1 < last else len(words_of[row])
            centrality = min(left, right)
            if (row, word) not in best or centrality > best[(row, word)][0]:
                best[(row, word)] = (centrality, probabilities[position])
    results: list[dict[str, Any]] = []
    for row, words in enumerate(words_of):
        spans = spans_of[row]
        fields: dict[str, Any] = {"words": words} if spans is not None else {}
        if row in inputs.skipped:
            results.append({**fields, "predicted_tags": None, "entities": None})
            continue
        tags, scores = [], []
        for word in range(len(words)):
            found = best.get((row, word))
            if found is None:  # cut off inside a window (a single word longer than max_length)
                tags.append(None)
                scores.append(0.0)
                continue
            tag = int(found[1].argmax())
            tags.append(names[tag])
            scores.append(float(found[1][tag]))
        found_entities = []
        for kind, start, end in entities([t or "O" for t in tags]):
            entity = {
                "type": kind,
                "start": start,
                "end": end + 1,
                "text": " ".join(words[start : end + 1]),
                "score": round(sum(scores[start : end + 1]) / (end + 1 - start), 6),
            }
            if spans is not None:  # plain text: the entity as written, and where
                entity.update(char_start=spans[start][0], char_end=spans[end][1])
                entity["text"] = state["texts"][row][spans[start][0] : spans[end][1]]
            found_entities.append(entity)
        results.append({**fields, "predicted_tags": tags, "entities": found_entities})
    return results


def word_windows(counts: list[int], budget: int, overlap: int) -> list[tuple[int, int]]:
    """Windows (first word, end word) over words with `counts` subwords each: as many whole words as fit in
    `budget` subwords, consecutive windows sharing up to `overlap` subwords; at least one word each."""
    windows, start, total = [], 0, len(counts)
    while True:
        end, used = start, 0
        while end < total and (used + counts[end] <= budget or end == start):
            used += counts[end]
            end += 1
        windows.append((start, end))
        if end >= total:
            return windows
        following, shared = end, 0
        while following - 1 > start and shared + counts[following - 1] <= overlap:
            following -= 1
            shared += counts[following]
        start = following


def split_words(value: Any) -> tuple[list[str], list[tuple[int, int]] | None]:
    """A row's words and, for plain text, each word's character span."""
    if isinstance(value, list):
        return [str(w) for w in value], None
    if isinstance(value, str):
        found = list(re.finditer(r"\S+", value))
        return [m.group() for m in found], [m.span() for m in found]
    return [], None
