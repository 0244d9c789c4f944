"""The live table of a bench (rich, on a terminal), or one line per cell event otherwise (logs, CI)."""

from __future__ import annotations

import time

from rich.markup import escape

from ftl.launcher.bench.results import CellResult
from ftl.launcher.console import console

_STATUS = {
    "pending": "[dim]pending[/]",
    "running": "[cyan]running[/]",
    "ok": "[green]done[/]",
    "failed": "[red]failed[/]",
    "timeout": "[red]timeout[/]",
    "interrupted": "[yellow]interrupted[/]",
}


class BenchTable:
    def __init__(self, results: list[CellResult], keys: list[str], *, title: str) -> None:
        self.results, self.keys, self.title = results, keys, title
        self.steps: dict[int, str] = {}
        self._started = time.monotonic()
        self._live = None
        if console.is_terminal:
            from rich.live import Live

            self._live = Live(self._render(), console=console, refresh_per_second=2, transient=False)
            self._live.start()

    def update(self, position: int, result: CellResult) -> None:
        self.results[position] = result
        if self._live is not None:
            self._live.update(self._render())
            return
        label = escape(", ".join(f"{k}={v}" for k, v in result.settings.items()) or "the recipe")
        if result.status == "running":
            self._say(f"{result.cell} ({label}): running")
        elif result.ok:
            self._say(
                f"{result.cell} ({label}): {result.tokens_per_s:,.0f} tokens/s, {result.samples_per_s:,.1f} samples/s, "
                f"step p50 {result.step_p50_s:.3f}s p95 {result.step_p95_s:.3f}s, peak {result.peak_memory_mib:,.0f} MiB, "
                f"MFU {_pct(result.mfu_6n)} (6N) / {_pct(result.mfu_trainable)} (trainable)"
            )
        elif result.status != "pending":
            self._say(f"[red]{result.cell} ({label}): {result.status}[/]: {escape(result.reason)}")

    def progress(self, position: int, progress: dict) -> None:
        text = f"{progress.get('step', 0)}/{progress.get('total', '?')}"
        if self.steps.get(position) != text:
            self.steps[position] = text
            if self._live is not None:
                self._live.update(self._render())

    def close(self) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.stop()
            self._live = None

    def _say(self, message: str) -> None:
        console.print(f"[dim]{time.monotonic() - self._started:6.0f}s[/] {message}", soft_wrap=True)

    def _render(self):
        from rich.table import Table

        table = Table(title=self.title, title_justify="left")
        columns = ["cell", *[k.rsplit(".", 1)[-1] for k in self.keys], "status", "step", "tokens/s"]
        columns += ["tok/s/dev", "samples/s", "non-pad", "p50 s", "p95 s", "peak MiB", "MFU 6N", "MFU train"]
        for column in columns:
            table.add_column(
                column, justify="left" if column in ("cell", "status") else "right", no_wrap=True
            )
        for position, r in enumerate(self.results):
            status = _STATUS.get(r.status, r.status)
            if not r.ok and r.reason:
                status += f" [dim]{escape(r.reason[:60])}[/]"
            table.add_row(
                r.cell,
                *[escape(r.settings.get(k, "")) for k in self.keys],
                status,
                self.steps.get(position, "-") if r.status == "running" else "-",
                _n(r.tokens_per_s),
                _n(r.tokens_per_s_per_device),
                _n(r.samples_per_s, 1),
                "-" if r.non_pad_fraction is None else f"{100 * r.non_pad_fraction:.1f}%",
                _n(r.step_p50_s, 3),
                _n(r.step_p95_s, 3),
                _n(r.peak_memory_mib),
                _pct(r.mfu_6n),
                _pct(r.mfu_trainable),
            )
        return table


def _n(value, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _pct(value) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}%" if value >= 0.001 else f"{100 * value:.4f}%"
