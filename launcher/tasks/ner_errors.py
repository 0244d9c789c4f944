"""Error analysis of a tagging run: what each entity type gets wrong, and the sentences where it happens.

<run>/entity_report.json   per entity type: precision, recall, F1, support, and counts of each error kind
<run>/ner_errors.jsonl     one line per validation sentence with an error, most errors first

Error kinds, comparing entity spans (type, first word, last word):
  wrong_type  the same words predicted as another type
  wrong_span  the same type over overlapping but different words
  missed      a gold entity no prediction overlaps
  spurious    a predicted entity no gold entity overlaps
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from ftl.launcher.files import atomic_write
from ftl.launcher.tasks.ner_metrics import Entity, entities, entity_scores, strict_scheme

ERROR_KINDS = ("wrong_type", "wrong_span", "missed", "spurious")


def sentence_errors(gold: list[Entity], predicted: list[Entity]) -> list[dict[str, Any]]:
    """Every gold or predicted entity that is not matched exactly, with its kind of error."""

    def overlaps(a: Entity, b: Entity) -> bool:
        return a[1] <= b[2] and b[1] <= a[2]

    exact = set(gold) & set(predicted)
    errors: list[dict[str, Any]] = []
    for entity in gold:
        if entity in exact:
            continue
        partners = [p for p in predicted if p not in exact and overlaps(entity, p)]
        if not partners:
            errors.append({"kind": "missed", "gold": entity})
            continue
        for partner in partners:
            same_span = partner[1:] == entity[1:]
            errors.append(
                {"kind": "wrong_type" if same_span else "wrong_span", "gold": entity, "predicted": partner}
            )
    for entity in predicted:
        if entity not in exact and not any(overlaps(entity, g) for g in gold):
            errors.append({"kind": "spurious", "predicted": entity})
    return errors


def write_error_analysis(
    directory: Path,
    words: list[list[str]],
    gold: list[list[str]],
    predicted: list[list[str]],
    *,
    strict: bool,
) -> Path:
    counts: dict[str, Counter] = {}
    lines: list[tuple[int, dict[str, Any]]] = []
    for row, (row_words, row_gold, row_predicted) in enumerate(zip(words, gold, predicted, strict=True)):
        found = sentence_errors(entities(row_gold), entities(row_predicted))
        if not found:
            continue
        for error in found:
            kind = (error.get("gold") or error["predicted"])[0]
            counts.setdefault(kind, Counter())[error["kind"]] += 1
        lines.append(
            (
                len(found),
                {
                    "row": row,
                    "text": " ".join(row_words),
                    "errors": [_readable(error, row_words) for error in found],
                    "gold": [_span(e, row_words) for e in entities(row_gold)],
                    "predicted": [_span(e, row_words) for e in entities(row_predicted)],
                },
            )
        )
    report = _per_type_report(gold, predicted, strict=strict)
    for kind, values in report["types"].items():
        values["errors"] = {name: counts.get(kind, Counter())[name] for name in ERROR_KINDS}
    report["overall"] = entity_scores(gold, predicted, strict=strict)
    atomic_write(directory / "entity_report.json", json.dumps(report, indent=2) + "\n")
    lines.sort(key=lambda item: -item[0])
    path = directory / "ner_errors.jsonl"
    atomic_write(path, "".join(json.dumps(line, ensure_ascii=False) + "\n" for _, line in lines))
    return path


def _per_type_report(gold, predicted, *, strict: bool) -> dict[str, Any]:
    from seqeval.metrics import classification_report

    kwargs: dict[str, Any] = {"zero_division": 0, "output_dict": True}
    if strict:
        kwargs.update(mode="strict", scheme=strict_scheme(gold, predicted))
    raw = classification_report(gold, predicted, **kwargs)
    types = {
        kind: {
            "precision": float(v["precision"]),
            "recall": float(v["recall"]),
            "f1": float(v["f1-score"]),
            "support": int(v["support"]),
        }
        for kind, v in raw.items()
        if not kind.endswith(" avg")
    }
    return {"types": types}


def _span(entity: Entity, words: list[str]) -> dict[str, Any]:
    kind, start, end = entity
    return {"type": kind, "start": start, "end": end + 1, "text": " ".join(words[start : end + 1])}


def _readable(error: dict[str, Any], words: list[str]) -> dict[str, Any]:
    shown: dict[str, Any] = {"kind": error["kind"]}
    for side in ("gold", "predicted"):
        if side in error:
            shown[side] = _span(error[side], words)
    return shown
