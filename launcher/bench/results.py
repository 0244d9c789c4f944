"""Bench numbers: a cell's timing records -> throughput, step times, memory, FLOPs and MFU; CSV, Markdown, JSON.

Throughput counts the timed steps only (after the warm-up): tokens/s = Σ non-pad tokens of every process over
the timed steps ÷ rank 0's wall time of those steps. Devices: GPUs (one per Ray worker, or those of a
single process) on CUDA; on CPU one device per machine, since every worker of a machine shares its cores
and the probe measured all of them.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ftl.launcher import markdown
from ftl.launcher.bench.matrix import Cell, Dimension
from ftl.launcher.bench.peak import Peak, matmul_dtype
from ftl.launcher.flops import FlopCounts, mfu, model_flops, trainable_flops

MIB = 1024**2


@dataclass
class CellResult:
    cell: str
    settings: dict[str, str]
    status: str  # ok | failed | timeout | interrupted | pending
    reason: str = ""
    device: str = ""
    device_name: str = ""
    devices: int = 0
    workers: int = 0
    threads: int = 0  # torch threads of all workers (on CPU, how much of the machine the cell used)
    precision: str = ""
    timed_steps: int = 0
    seconds: float = 0.0
    tokens: int = 0
    rows: int = 0
    non_pad_fraction: float | None = None  # real tokens / positions computed (padding included)
    tokens_per_s: float | None = None
    tokens_per_s_per_device: float | None = None
    samples_per_s: float | None = None
    step_p50_s: float | None = None
    step_p95_s: float | None = None
    peak_memory_mib: float | None = None
    memory_kind: str = ""
    tflops_6n: float | None = None  # achieved, all devices
    tflops_trainable: float | None = None
    peak_tflops: float | None = None  # per device
    peak_source: str = ""
    mfu_6n: float | None = None
    mfu_trainable: float | None = None
    wall_s: float | None = None
    flop_counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def percentile(values: list[float], q: float) -> float:
    """numpy's percentile (linear interpolation between closest ranks), q in [0, 100]."""
    if not values:
        raise ValueError("percentile of nothing")
    return float(np.percentile(values, q))


def read_timings(cell_dir: Path) -> list[dict[str, Any]]:
    timings = [json.loads(p.read_text()) for p in sorted(cell_dir.glob("timing-rank*.json"))]
    return sorted(timings, key=lambda t: t["rank"])


def summarise(cell: Cell, timings: list[dict[str, Any]], peak_of) -> CellResult:
    """Numbers of a finished cell. `peak_of(device, device_name, dtype) -> Peak` gives the per-device peak."""
    result = CellResult(cell.name, dict(cell.settings), "ok")
    if not timings:
        return _failed(result, "the cell finished without timing records (see its cell.log)")
    first = timings[0]
    warmup, steps = first["warmup"], first["steps"]
    timed = [[r for r in t["records"] if r["step"] > warmup] for t in timings]
    if len(timed[0]) < steps:
        return _failed(result, f"trained {len(timed[0])} of {steps} timed steps after {warmup} warm-up steps")
    durations = [r["seconds"] for r in timed[0]]
    result.seconds = sum(durations)
    result.timed_steps = len(durations)
    result.tokens = sum(r["tokens"] for records in timed for r in records)
    result.rows = sum(r["rows"] for records in timed for r in records)
    squares = sum(r["tokens_squared"] for records in timed for r in records)
    slots = sum(r.get("slots", 0) for records in timed for r in records)
    result.non_pad_fraction = result.tokens / slots if slots else None
    result.device, result.device_name, result.precision = (
        first["device"],
        first["device_name"],
        first["precision"],
    )
    result.workers = len(timings)
    result.threads = sum(t.get("torch_threads", 0) for t in timings)
    if first["device"] == "cuda":
        result.devices = sum(t["gpus"] for t in timings)
    else:
        result.devices = len({t["host"] for t in timings})
    result.tokens_per_s = result.tokens / result.seconds
    result.tokens_per_s_per_device = result.tokens_per_s / result.devices
    result.samples_per_s = result.rows / result.seconds
    result.step_p50_s = percentile(durations, 50)
    result.step_p95_s = percentile(durations, 95)
    result.peak_memory_mib = max(t["memory_peak_bytes"] for t in timings) / MIB
    result.memory_kind = first["memory_kind"] + (" (largest worker)" if len(timings) > 1 else "")
    counts = FlopCounts(**first["flop_counts"])
    result.flop_counts = counts.as_dict()
    flops_6n = model_flops(counts, result.tokens, squares)
    flops_trainable = trainable_flops(counts, result.tokens, squares)
    result.tflops_6n = flops_6n / result.seconds / 1e12
    result.tflops_trainable = flops_trainable / result.seconds / 1e12
    dtype = matmul_dtype(
        first.get("compute_dtype", first["precision"]), first["device"], first.get("allow_tf32", False)
    )
    peak: Peak = peak_of(first["device"], first["device_name"], dtype)
    result.peak_tflops, result.peak_source = peak.tflops, peak.source
    result.mfu_6n = mfu(flops_6n, result.seconds, peak.flops, result.devices)
    result.mfu_trainable = mfu(flops_trainable, result.seconds, peak.flops, result.devices)
    return result


def _failed(result: CellResult, reason: str) -> CellResult:
    result.status, result.reason = "failed", reason
    return result


# ---- files ---------------------------------------------------------------------------------------
CSV_COLUMNS = [
    "status",
    "reason",
    "device",
    "device_name",
    "devices",
    "workers",
    "threads",
    "precision",
    "timed_steps",
    "seconds",
    "tokens",
    "rows",
    "non_pad_fraction",
    "tokens_per_s",
    "tokens_per_s_per_device",
    "samples_per_s",
    "step_p50_s",
    "step_p95_s",
    "peak_memory_mib",
    "memory_kind",
    "tflops_6n",
    "tflops_trainable",
    "peak_tflops",
    "peak_source",
    "mfu_6n",
    "mfu_trainable",
    "wall_s",
]


def write_csv(path: Path, results: list[CellResult], dimensions: list[Dimension]) -> None:
    keys = [d.key for d in dimensions]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["cell", *keys, *CSV_COLUMNS])
        for result in results:
            row = asdict(result)
            writer.writerow(
                [
                    result.cell,
                    *[result.settings.get(k, "") for k in keys],
                    *[_csv(row[c]) for c in CSV_COLUMNS],
                ]
            )


def _csv(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.10g}"
    return value


def write_json(path: Path, results: list[CellResult], context: dict[str, Any]) -> None:
    payload = {**context, "cells": [asdict(r) for r in results]}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")


def write_markdown(
    path: Path, results: list[CellResult], dimensions: list[Dimension], context: dict[str, Any]
) -> None:
    keys = [d.key for d in dimensions]
    lines = [
        f"# ftl bench: {context['recipe_name']}",
        "",
        f"- command: `{context['command']}`",
        f"- date: {context['date']}; {context['warmup']} warm-up + {context['steps']} timed optimizer steps per cell, "
        "each cell in its own process",
        f"- set by bench in every cell: `{context.get('bench_settings', '')}` (evaluations and checkpoints of the "
        "schedule are cancelled, no model is written)",
        f"- machine: {context['machine']}",
        f"- device: {context['devices'] or 'no cell ran'}",
        f"- peak used for MFU: {context['peaks'] or 'none'}",
        f"- versions: {context['versions']}",
        "",
        "",
    ]
    headers = [
        "cell",
        *keys,
        "status",
        "devices",
        "tokens/s",
        "tokens/s/device",
        "samples/s",
        "non-pad",
        "step p50 s",
        "step p95 s",
        "peak MiB",
        "TFLOP/s (6N)",
        "MFU 6N",
        "MFU trainable",
    ]
    rows = [
        [
            r.cell,
            *(f"`{r.settings.get(k, '')}`" for k in keys),
            r.status if r.ok else f"**{r.status}**",
            _devices(r),
            _n(r.tokens_per_s),
            _n(r.tokens_per_s_per_device),
            _n(r.samples_per_s, 1),
            _pct(r.non_pad_fraction),
            _n(r.step_p50_s, 3),
            _n(r.step_p95_s, 3),
            _n(r.peak_memory_mib),
            _g(r.tflops_6n),
            _pct(r.mfu_6n),
            _pct(r.mfu_trainable),
        ]
        for r in results
    ]
    lines.append(markdown.table(headers, rows, align=["left"] * (len(keys) + 3) + ["right"] * 11))
    failures = [r for r in results if not r.ok]
    if failures:
        lines += ["", "Cells that did not finish:", ""]
        lines += [f"- {r.cell} ({_settings(r)}): {r.status}: {r.reason}" for r in failures]
    lines += [
        "",
        "tokens/s counts non-pad tokens of the timed steps only, over all processes (non-pad: their share of the "
        "positions computed, padding included); step times are wall times "
        "between the ends of consecutive optimizer steps (rank 0). Peak memory: "
        + (
            "; ".join(
                sorted({r.memory_kind.removesuffix(" (largest worker)") for r in results if r.memory_kind})
            )
            or "CUDA max allocated per GPU, or the RSS of the process tree on CPU"
        )
        + " (the largest worker's), during training. MFU 6N: (6N + 12·L·H·Q·ℓ) FLOPs per non-pad token (PaLM, Appendix B); MFU trainable: "
        "the FLOPs a step with frozen layers or adapters really needs (launcher/flops.py). Charts: tokens_per_s.png, "
        "mfu.png, memory.png.",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _devices(result: CellResult) -> str:
    """'8 GPU (8 workers)', '1 CPU (2 workers, 2 threads)': on CPU the device is the machine its workers share."""
    if not result.devices:
        return "-"
    workers = f"{result.workers} workers" if result.workers > 1 else ""
    if result.device == "cuda":
        return f"{result.devices} GPU" + (f" ({workers})" if workers else "")
    threads = f"{result.threads} thread{'s' if result.threads != 1 else ''}"
    return f"{result.devices} CPU ({', '.join(x for x in (workers, threads) if x)})"


def _settings(result: CellResult) -> str:
    return ", ".join(f"{k}={v}" for k, v in result.settings.items()) or "the recipe"


def _n(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _g(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _pct(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f} %" if value >= 0.001 else f"{100 * value:.4f} %"
