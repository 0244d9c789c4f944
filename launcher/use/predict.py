"""`ftl predict RUN --data FILE`: a file's rows through a finished run's model, no labels needed.

The run's task reads the file with the run's own settings (columns, max_length, label names) and turns its rows
into features or prompts (`Task.encode_for_prediction`); features go through the model in batches of similar
length (longest first, in inference mode), prompts through `generation.generate`; the task turns the outputs
into prediction fields (`Task.predictions_to_rows`). Every input row gives one output row, in input order: its
own columns plus the prediction fields (rows the model could not read, e.g. an empty text, get the fields as
null and `skipped` with the reason).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftl.launcher.console import log
from ftl.launcher.data.sources import load_file
from ftl.launcher.recipe.data import DataSource
from ftl.launcher.tasks.generation import generate
from ftl.launcher.tasks.prediction import PredictionInputs
from ftl.launcher.use.output import check_output, jsonl, progress, write_text
from ftl.launcher.use.trained import open_trained


@dataclass
class PredictResult:
    rows: list[dict[str, Any]]
    skipped: int = 0
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def predict_run(
    run: Path,
    data: Path,
    *,
    output: Path | None = None,
    batch_size: int | None = None,
    task_name: str | None = None,
) -> PredictResult:
    started = time.perf_counter()
    check_output(output, [("--data", data)], run)  # before any work: never the file or run it reads
    trained = open_trained(run)
    task = trained.task.prediction_task(task_name)
    raw = load_file(data, "--data", DataSource(path=str(data), text_sample_by="line"))  # .txt: a row a line
    column = task.plain_text_column()
    if raw.format == "text" and column not in (None, "text"):  # its lines are the task's text
        raw = load_file(
            data, "--data", DataSource(path=str(data), text_sample_by="line", rename={"text": column})
        )
    inputs = task.encode_for_prediction(raw, trained.tokenizer)
    model = trained.load_model()
    size = batch_size or trained.recipe.eval.batch_size
    if inputs.prompts is not None:
        outputs = _generate(model, trained, inputs, size)
    else:
        with progress("predict", len(inputs.features)) as advance:
            outputs = forward(model, trained.tokenizer, inputs, size, advance)
    fields = task.predictions_to_rows(inputs, outputs, trained.tokenizer)
    rows = _merge(raw.dataset.to_list(), fields, inputs)
    write_text(jsonl(rows), output)
    result = PredictResult(rows, len(inputs.skipped), list(inputs.notes), time.perf_counter() - started)
    _report(result, raw.description, output)
    return result


def forward(model, tokenizer, inputs: PredictionInputs, batch_size: int, advance=None) -> list[tuple]:
    """Per feature, the outputs named by inputs.outputs as float numpy arrays (per-token outputs cut to the
    feature's own tokens), in feature order; batches hold features of similar length, longest first."""
    import torch

    features = inputs.features
    order = sorted(range(len(features)), key=lambda i: -len(features[i]["input_ids"]))
    device = next(model.parameters()).device
    results: list[tuple] = [()] * len(features)
    right = tokenizer.padding_side == "right"
    constants = {
        name: value(model) if callable(value) else value for name, value in inputs.constant_inputs.items()
    }
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            batch = tokenizer.pad([features[i] for i in chosen], padding=True, return_tensors="pt")
            batch = {key: value.to(device) for key, value in batch.items()}
            for name, value in constants.items():
                batch[name] = torch.full((len(chosen),), value, dtype=torch.long, device=device)
            produced = model(**batch)
            arrays = [produced[name].float().cpu().numpy() for name in inputs.outputs]
            width = batch["input_ids"].shape[1]
            for j, i in enumerate(chosen):
                if inputs.per_token:
                    n = len(features[i]["input_ids"])
                    cut = slice(0, n) if right else slice(width - n, width)
                    results[i] = tuple(array[j, cut] for array in arrays)
                else:
                    results[i] = tuple(array[j] for array in arrays)
            if advance is not None:
                advance(len(chosen))
    return results


def _generate(model, trained, inputs: PredictionInputs, batch_size: int) -> list[str]:
    settings = inputs.prompt_settings
    with progress("generate", len(inputs.prompts)) as advance:
        return generate(
            model,
            trained.tokenizer,
            inputs.prompts,
            settings.generation,
            max_input_length=settings.max_input_length,
            batch_size=batch_size,
            seed=trained.recipe.seed,
            keep_end=settings.keep_end,
            on_batch=advance,
            stop_token_ids=settings.stop_token_ids,
            add_special_tokens=settings.add_special_tokens,
        )


def _merge(rows: list[dict[str, Any]], fields: list[dict[str, Any]], inputs: PredictionInputs) -> list[dict]:
    """Each input row with its prediction fields (and why a row was skipped)."""
    if len(fields) != len(rows):  # a task bug, not a user error
        raise RuntimeError(f"predictions for {len(fields)} rows, but the file has {len(rows)}")
    replaced = sorted({key for key in (fields[0] if fields else {}) if rows and key in rows[0]})
    if replaced:
        log(
            f"[yellow]note[/]: the file's column(s) {', '.join(replaced)} are replaced by the prediction fields "
            "of the same name"
        )
    merged = []
    for index, (row, predicted) in enumerate(zip(rows, fields, strict=True)):
        extra = {"skipped": inputs.skipped[index]} if index in inputs.skipped else {}
        merged.append({**row, **predicted, **extra})
    return merged


def _report(result: PredictResult, source: str, output: Path | None) -> None:
    for note in result.notes:
        log(f"[yellow]note[/]: {note}")
    skipped = f" ({result.skipped} skipped: see their 'skipped' field)" if result.skipped else ""
    where = f" -> {output}" if output is not None else ""
    log(f"predicted {len(result.rows):,} rows of {source}{skipped} in {result.seconds:.1f}s{where}")
