"""What the side-by-side benchmarks share: the machine they ran on, interleaved repeats, the SST-2 subset,
the step timer, and writing results/<name>.{json,md,csv}.

Every comparison runs in one process: each contender is a function that trains and returns its measured
numbers; contenders alternate within each repeat (the order rotates, so none is always first) and the report
uses medians, plus two cross-checks for a shared machine: the median of the per-repeat ratios (each pair
measured minutes apart, so slow changes in the machine's load cancel) and a best-of estimate (each step's
fastest time over the repeats). Throughput counts the timed steps only (after warm-up steps), non-pad tokens.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
RESULTS = REPO / "benchmarks" / "results"
SHARED_DATA = REPO.parent / "shared" / "data"


def machine() -> dict[str, Any]:
    """Where the numbers came from: host, CPU or GPUs, memory, load, versions, commit."""
    import psutil
    import torch

    from ftl.launcher.bench.timer import _device_name
    from ftl.launcher.train.rundir import git_sha

    cuda = torch.cuda.is_available()
    versions = {}
    for package in ("torch", "transformers", "accelerate", "datasets", "deepspeed"):
        try:
            from importlib import metadata

            versions[package] = metadata.version(package)
        except Exception:  # noqa: BLE001 - a missing optional package is simply not listed
            continue
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": _device_name(False, None),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "versions": versions,
        "git": git_sha(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def machine_line(info: dict[str, Any]) -> str:
    device = ", ".join(info["gpus"]) if info["gpus"] else info["cpu"]
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    return (
        f"{info['host']}: {device}, {info['torch_threads']} torch threads, {info['memory_gib']} GiB RAM, "
        f"{info['platform']}; load average (1/5/15 min) {info['load_average_at_start']} at start, "
        f"{info.get('load_average_at_end', '?')} at end (a shared machine); {versions}; git {info['git']}; {info['date']}"
    )


def interleaved(
    contenders: dict[str, Callable[[], dict[str, Any]]], repeats: int, *, log=print
) -> dict[str, list[dict[str, Any]]]:
    """Run every contender `repeats` times, alternating, the order rotating each repeat."""
    names = list(contenders)
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            result = contenders[name]()
            result["wall_s"] = round(time.perf_counter() - started, 1)
            samples[name].append(result)
            shown = ", ".join(
                f"{k} {v:,.4g}" for k, v in result.items() if isinstance(v, float) and k != "tokens"
            )
            log(f"repeat {repeat + 1}/{repeats} {name}: {shown}")
    return samples


def medians(samples: dict[str, list[dict[str, Any]]], key: str) -> dict[str, float]:
    return {name: statistics.median(s[key] for s in runs) for name, runs in samples.items()}


def best_of(samples: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """Noise-robust tokens/s: every repeat of a contender trains the same batches in the same order (same seed),
    so for each step take its fastest time over the repeats (a busy neighbour only ever slows a step down),
    then Σ tokens / Σ fastest times."""
    best = {}
    for name, runs in samples.items():
        if any(run["step_tokens"] != runs[0]["step_tokens"] for run in runs):
            raise RuntimeError(f"{name}: repeats trained different batches; best-of needs identical ones")
        fastest = [min(times) for times in zip(*(run["step_seconds"] for run in runs), strict=True)]
        best[name] = sum(runs[0]["step_tokens"]) / sum(fastest)
    return best


def paired_ratio(samples: dict[str, list[dict[str, Any]]], key: str, a: str, b: str) -> float:
    """Median over repeats of a's value / b's value in the same repeat."""
    return statistics.median(x[key] / y[key] for x, y in zip(samples[a], samples[b], strict=True))


def timed_numbers(timing: dict[str, Any]) -> dict[str, float]:
    """tokens/s, samples/s, non-pad share and step times of one StepTimer record file (timed steps only)."""
    from ftl.launcher.bench.matrix import Cell
    from ftl.launcher.bench.peak import Peak
    from ftl.launcher.bench.results import summarise

    result = summarise(Cell(1, ()), [timing], lambda *a: Peak(None, "fp32", "not used"))
    if not result.ok:
        raise RuntimeError(result.reason)
    timed = [r for r in timing["records"] if r["step"] > timing["warmup"]]
    return {
        "tokens_per_s": result.tokens_per_s,
        "samples_per_s": result.samples_per_s,
        "non_pad_fraction": result.non_pad_fraction,
        "step_p50_s": result.step_p50_s,
        "timed_seconds": result.seconds,
        "tokens": float(result.tokens),
        "step_seconds": [r["seconds"] for r in timed],
        "step_tokens": [r["tokens"] for r in timed],
    }


def read_timing(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "timing-rank0.json").read_text())


def write_sst2_subset(directory: Path, rows: int, seed: int) -> tuple[Path, Path]:
    """A fixed SST-2 subset (train) and a small validation file, shared by every contender."""
    import datasets

    source = SHARED_DATA / "sst2" / "train.tsv"
    full = datasets.load_dataset("csv", data_files=str(source), delimiter="\t", quoting=3, split="train")
    full = full.shuffle(seed=seed)
    train, val = full.select(range(rows)), full.select(range(rows, rows + 256))
    paths = directory / "train.tsv", directory / "val.tsv"
    for part, path in zip((train, val), paths, strict=True):
        path.write_text(
            "sentence\tlabel\n"
            + "".join(f"{s}\t{y}\n" for s, y in zip(part["sentence"], part["label"], strict=True))
        )
    return paths


def write_results(
    name: str, report: dict[str, Any], markdown: list[str], rows: list[dict[str, Any]], out: Path = RESULTS
) -> None:
    """results/<name>.json (everything), .md (the table and the verdict), .csv (one row per run)."""
    out.mkdir(parents=True, exist_ok=True)
    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    (out / f"{name}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    text = "\n".join([*markdown, "", f"Machine: {machine_line(report['machine'])}."]) + "\n"
    (out / f"{name}.md").write_text(text)
    if rows:
        columns = list(dict.fromkeys(key for row in rows for key in row))
        with (out / f"{name}.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    print(text)


def run_rows(samples: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [
        {"contender": name, "repeat": index + 1, **{k: v for k, v in run.items() if not isinstance(v, list)}}
        for name, runs in samples.items()
        for index, run in enumerate(runs)
    ]


def runs_text(runs: list[dict[str, Any]], key: str = "tokens_per_s") -> str:
    return ", ".join(f"{run[key]:,.0f}" for run in runs)
