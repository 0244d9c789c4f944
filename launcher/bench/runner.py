"""`ftl bench`: every cell of the matrix in its own process, one after another; a live table; the results.

Each cell trains `warmup + steps` optimizer steps of the real recipe with the cell's overrides and the bench
settings (matrix.bench_overrides: train.max_steps, no early stopping, no evaluation before training, no
TensorBoard or progress bar, no retries), through `run_recipe(train_only=True)`: the schedule's evaluations
and checkpoints are cancelled and no final model is written, in a scratch run directory that is removed
afterwards. A cell that fails (a crash, out of memory, killed, over --cell-timeout) is recorded with a
one-line reason and the matrix goes on. Output: <output>/results.csv, results.md, results.json, PNG charts,
and cells/<cell>/ (cell.log, timing records).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from ftl.launcher.bench.charts import write_charts
from ftl.launcher.bench.matrix import (
    Cell,
    bench_overrides,
    expand,
    parse_dimensions,
    split_arguments,
    validate,
)
from ftl.launcher.bench.peak import Peak, cpu_probe, given_peak, gpu_peak
from ftl.launcher.bench.results import (
    CellResult,
    read_timings,
    summarise,
    write_csv,
    write_json,
    write_markdown,
)
from ftl.launcher.bench.table import BenchTable
from ftl.launcher.bench.tracking import BenchTracking
from ftl.launcher.console import log
from ftl.launcher.errors import FtlError
from ftl.launcher.files import make_dir
from ftl.launcher.recipe.loader import load_recipe
from ftl.launcher.train.rundir import git_sha


def run_bench(
    recipe: Path,
    arguments: list[str],
    *,
    steps: int,
    warmup: int,
    output: Path | None = None,
    peak_tflops: float | None = None,
    probe_seconds: float = 3.0,
    cell_timeout: float | None = None,
) -> list[CellResult]:
    overrides, tokens = split_arguments(arguments)
    dimensions = parse_dimensions(tokens)
    cells = expand(dimensions)
    fixed = bench_overrides(warmup, steps)
    loaded = validate(recipe, overrides, dimensions, cells, fixed)
    bench_params = {"steps": steps, "warmup": warmup, "matrix": {d.key: list(d.values) for d in dimensions}}
    name = loaded[cells[0].name].recipe.name
    output = output or Path("bench") / name
    _claim(output)
    log(
        f"[bold]ftl bench[/] {name}: {len(cells)} cell(s), {warmup} warm-up + {steps} timed steps each; "
        f"results in {output}"
    )
    peaks = _Peaks(peak_tflops, probe_seconds)
    tracking = BenchTracking(
        load_recipe(recipe, overrides), output, bench_params
    )  # log.trackers: mlflow, wandb
    results = [CellResult(cell.name, dict(cell.settings), "pending") for cell in cells]
    table = BenchTable(results, [d.key for d in dimensions], title=f"ftl bench {name}")
    started = datetime.now(timezone.utc)
    command = " ".join(["ftl bench", str(recipe), *arguments, f"--warmup {warmup} --steps {steps}"])
    settings = " ".join(fixed)
    try:
        for position, cell in enumerate(cells):
            spec = {
                "recipe": str(recipe.resolve()),
                "overrides": [*overrides, *cell.overrides, *fixed],
                "cell_dir": str((output / "cells" / cell.name).resolve()),
                "run_dir": str((output / "cells" / cell.name / "run").resolve()),
                "warmup": warmup,
                "steps": steps,
            }
            results[position] = _run_cell(cell, spec, table, peaks, cell_timeout)
            table.update(position, results[position])
            tracking.cell(cell.index, results[position], Path(spec["cell_dir"]))
    except KeyboardInterrupt:
        for position, result in enumerate(results):
            if result.status in ("pending", "running"):
                result.status, result.reason = "interrupted", "ftl bench was interrupted"
                table.update(position, result)
        table.close()
        _write(
            output,
            results,
            dimensions,
            _context(name, command, settings, warmup, steps, started, results, peaks),
        )
        tracking.finish(_outputs(output), interrupted=True)
        raise
    table.close()
    _write(
        output, results, dimensions, _context(name, command, settings, warmup, steps, started, results, peaks)
    )
    tracking.finish(_outputs(output))
    failed = [r for r in results if not r.ok]
    if failed and len(failed) == len(results):
        raise FtlError(
            f"every cell failed ({failed[0].cell}: {failed[0].reason}); see {output / 'results.md'} and the "
            "cells' cell.log"
        )
    if failed:
        log(f"[yellow]{len(failed)} of {len(results)} cells failed[/]; their reasons are in results.md")
    sys.stdout.write(f"{output / 'results.csv'}\n")
    return results


def _outputs(output: Path) -> list[Path]:
    return [output / name for name in ("results.md", "results.csv", "results.json")]


def _claim(output: Path) -> None:
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise FtlError(f"--output: {output} already holds files; choose another --output or remove it")
    make_dir(output, "--output")


class _Peaks:
    """Peak FLOPs/s per device: --peak-tflops, the GPU table, or the CPU probe (measured once per dtype,
    between cells, so that nothing of the bench competes with it)."""

    def __init__(self, given_tflops: float | None, probe_seconds: float) -> None:
        self.given, self.probe_seconds = given_tflops, probe_seconds
        self.used: dict[str, Peak] = {}

    def __call__(self, device: str, device_name: str, dtype: str) -> Peak:
        key = f"{device_name} {dtype}"
        if key not in self.used:
            if self.given is not None:
                self.used[key] = given_peak(self.given, dtype)
            elif device == "cuda":
                self.used[key] = gpu_peak(device_name, dtype)
            else:
                log(f"measuring this CPU's {dtype} matmul peak for {self.probe_seconds:g}s")
                self.used[key] = cpu_probe(dtype, self.probe_seconds)
        return self.used[key]

    def describe(self) -> str:
        return "; ".join(
            f"{p.tflops:.4g} TFLOPS per device ({p.source})" if p.tflops else p.source
            for p in self.used.values()
        )


def _run_cell(cell: Cell, spec: dict, table: BenchTable, peaks: _Peaks, timeout: float | None) -> CellResult:
    cell_dir = Path(spec["cell_dir"])
    cell_dir.mkdir(parents=True, exist_ok=True)
    (cell_dir / "spec.json").write_text(json.dumps(spec, indent=1))
    result = CellResult(cell.name, dict(cell.settings), "running")
    table.update(cell.index - 1, result)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    with (cell_dir / "cell.log").open("wb") as cell_log:
        process = subprocess.Popen(
            [sys.executable, "-m", "ftl.launcher.bench.cell", str(cell_dir / "spec.json")],
            stdout=cell_log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            timed_out = _wait(process, cell_dir, table, cell.index - 1, result, started, timeout)
        except BaseException:
            _kill_tree(process)
            raise
    shutil.rmtree(spec["run_dir"], ignore_errors=True)
    wall = time.monotonic() - started
    outcome = _outcome(cell_dir, process.returncode, timed_out, timeout)
    if outcome["status"] == "ok":
        result = summarise(cell, read_timings(cell_dir), peaks)
    else:
        result = CellResult(cell.name, dict(cell.settings), outcome["status"], outcome["reason"])
    result.wall_s = wall
    return result


def _wait(process, cell_dir: Path, table, position: int, result, started: float, timeout) -> bool:
    """Wait for the cell, showing its progress; True when it ran over the timeout (and was killed)."""
    progress = cell_dir / "progress.json"
    while process.poll() is None:
        time.sleep(0.5)
        if timeout is not None and time.monotonic() - started > timeout:
            _kill_tree(process)
            return True
        if progress.exists():
            try:
                table.progress(position, json.loads(progress.read_text()))
            except (ValueError, OSError):
                continue
    return False


def _kill_tree(process) -> None:
    """SIGKILL the cell process and everything it started (a local Ray, its workers, data loaders)."""
    import contextlib

    import psutil

    try:
        family = [psutil.Process(process.pid)]
    except psutil.Error:
        return
    with contextlib.suppress(psutil.Error):
        family += family[0].children(recursive=True)
    for member in family:
        with contextlib.suppress(psutil.Error):
            member.kill()
    process.wait()
    psutil.wait_procs(family, timeout=30)


def _outcome(cell_dir: Path, returncode: int, timed_out: bool, timeout: float | None) -> dict[str, str]:
    if timed_out:
        return {"status": "timeout", "reason": f"killed after --cell-timeout {timeout:g}s"}
    written = cell_dir / "cell.json"
    if written.exists():
        return json.loads(written.read_text())
    if returncode < 0:
        reason = f"killed by signal {-returncode}"
        if -returncode == 9:
            reason += " (the kernel's out-of-memory killer sends SIGKILL)"
    else:
        reason = f"exited with code {returncode}"
    return {"status": "failed", "reason": f"{reason}; last log line: {_last_line(cell_dir / 'cell.log')}"}


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "-"
    return lines[-1][:300] if lines else "-"


def _write(output: Path, results: list[CellResult], dimensions, context: dict) -> None:
    write_csv(output / "results.csv", results, dimensions)
    write_markdown(output / "results.md", results, dimensions, context)
    write_json(output / "results.json", results, context)
    try:
        write_charts(output, results, context["recipe_name"])
    except Exception as exc:  # noqa: BLE001 - a chart must never cost the bench its other outputs
        log(f"[yellow]charts skipped: {exc}[/]")
    log(f"results: {output / 'results.md'}, results.csv, results.json, tokens_per_s.png, mfu.png, memory.png")


def _context(
    name: str,
    command: str,
    settings: str,
    warmup: int,
    steps: int,
    started,
    results: list[CellResult],
    peaks: _Peaks,
) -> dict:
    from importlib import metadata

    versions = {}
    for package in ("ftl", "torch", "transformers", "deepspeed", "ray", "peft"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    version_text = ", ".join(f"{k} {v}" for k, v in versions.items()) + f"; git {git_sha() or 'unknown'}"
    devices = sorted({f"{r.device_name}" for r in results if r.device_name})
    return {
        "recipe_name": name,
        "command": command,
        "bench_settings": settings,
        "date": started.isoformat(timespec="seconds"),
        "warmup": warmup,
        "steps": steps,
        "machine": _machine(),
        "devices": "; ".join(devices),
        "peaks": peaks.describe(),
        "versions": version_text,
    }


def _machine() -> str:
    import psutil

    memory = psutil.virtual_memory().total / 1024**3
    return (
        f"{socket.gethostname()}, {platform.platform()}, {os.cpu_count()} CPUs, {memory:.0f} GiB RAM, "
        f"Python {platform.python_version()}"
    )
