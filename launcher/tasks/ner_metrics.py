"""Entities in BIO tags and entity-level scores, through seqeval (shared by training metrics, the error
analysis and prediction)."""

from __future__ import annotations

from typing import Any

Entity = tuple[str, int, int]  # type, first word, last word (inclusive)


def entities(tags: list[str]) -> list[Entity]:
    from seqeval.metrics.sequence_labeling import get_entities

    return [(kind, start, end) for kind, start, end in get_entities(tags)]


def entity_scores(gold: list[list[str]], predicted: list[list[str]], *, strict: bool) -> dict[str, float]:
    """Micro entity precision/recall/F1, word accuracy, and F1 per entity type (f1_<type>)."""
    from seqeval.metrics import accuracy_score, classification_report

    kwargs: dict[str, Any] = {"zero_division": 0}
    if strict:
        kwargs.update(mode="strict", scheme=strict_scheme(gold, predicted))
    report = classification_report(gold, predicted, output_dict=True, **kwargs)
    micro = report.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0})
    scores = {
        "precision": float(micro["precision"]),
        "recall": float(micro["recall"]),
        "f1": float(micro["f1-score"]),
        "accuracy": float(accuracy_score(gold, predicted)),
    }
    for kind, values in report.items():
        if not kind.endswith(" avg"):
            scores[f"f1_{kind.replace('-', '_')}"] = float(values["f1-score"])
    return scores


def strict_scheme(*rows: list[list[str]]):
    """seqeval's scheme for strict scoring: IOBES when any tag is E-X or S-X (IOB2 refuses those tags with a
    ValueError), else IOB2."""
    from seqeval.scheme import IOB2, IOBES

    bioes = any(tag[:2] in ("E-", "S-") for sentences in rows for tags in sentences for tag in tags)
    return IOBES if bioes else IOB2
