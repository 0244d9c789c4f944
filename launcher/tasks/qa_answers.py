"""From start/end logits over context windows to answer texts, and SQuAD's exact match and F1.

The scoring follows the official SQuAD v1.1/v2.0 evaluation script: answers are lower-cased, punctuation,
articles (a, an, the) and extra whitespace removed; F1 is over the bag of remaining tokens; each
prediction takes the best score over the gold answers; an unanswerable question (no gold answer) counts as
correct only when the prediction is empty.
"""

from __future__ import annotations

import collections
import re
import string
from dataclasses import dataclass
from typing import Any

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    predicted, reference = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not reference:
        return float(predicted == reference)
    common = collections.Counter(predicted) & collections.Counter(reference)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(reference)
    return 2 * precision * recall / (precision + recall)


def score(prediction: str, golds: list[str]) -> tuple[float, float]:
    """(exact match, F1) of one prediction against its gold answers (none: the question is unanswerable)."""
    golds = golds or [""]
    return max(exact_match(prediction, g) for g in golds), max(token_f1(prediction, g) for g in golds)


@dataclass
class Answer:
    text: str
    start: int  # character offsets into the context (-1 for no answer)
    end: int
    score: float  # start + end logit
    feature: int = -1  # the window the answer was found in
    start_token: int = 0  # token positions in that window (0, 0: the CLS token, no answer)
    end_token: int = 0


def best_answers(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    example_ids: list[int],
    offsets: list[list[list[int]]],
    contexts: list[str],
    *,
    n_best: int,
    max_answer_length: int,
    allow_unanswerable: bool,
) -> list[Answer]:
    """The best span per example over all of its windows (features, in the order the logits are in).

    offsets[i][t] is the (start, end) character span of token t of window i in its context, or (-1, -1) for
    tokens outside the context (question, special tokens, padding)."""
    windows: dict[int, list[int]] = collections.defaultdict(list)
    for feature, example in enumerate(example_ids):
        windows[example].append(feature)
    answers = []
    for example, context in enumerate(contexts):
        best = Answer("", -1, -1, -np.inf)
        null_score, null_feature = np.inf, -1
        for feature in windows.get(example, []):
            starts, ends = start_logits[feature], end_logits[feature]
            spans = offsets[feature]
            if float(starts[0] + ends[0]) < null_score:  # the CLS token: no answer here
                null_score, null_feature = float(starts[0] + ends[0]), feature
            length = len(spans)
            for s in np.argsort(starts[:length])[::-1][:n_best]:
                if spans[s][0] < 0:
                    continue
                for e in np.argsort(ends[:length])[::-1][:n_best]:
                    if spans[e][0] < 0 or e < s or e - s + 1 > max_answer_length:
                        continue
                    value = float(starts[s] + ends[e])
                    if value > best.score:
                        text = context[spans[s][0] : spans[e][1]]
                        best = Answer(text, spans[s][0], spans[e][1], value, feature, int(s), int(e))
        if allow_unanswerable and null_score > best.score:
            best = Answer("", -1, -1, null_score, null_feature)
        answers.append(best)
    return answers


def squad_metrics(answers: list[Answer], gold: list[list[str]]) -> dict[str, Any]:
    """Mean exact match and F1 (fractions, 0-1) over the examples."""
    if not answers:
        return {"exact_match": 0.0, "f1": 0.0}
    scores = [score(answer.text, golds) for answer, golds in zip(answers, gold, strict=True)]
    return {
        "exact_match": float(np.mean([em for em, _ in scores])),
        "f1": float(np.mean([f1 for _, f1 in scores])),
    }
