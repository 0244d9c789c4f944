"""PNG charts of a bench: tokens/s, MFU (both conventions) and peak memory per cell; failed cells marked."""

from __future__ import annotations

from pathlib import Path

from ftl.launcher.bench.results import CellResult


def write_charts(folder: Path, results: list[CellResult], title: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [_label(r) for r in results]
    charts = {
        "tokens_per_s.png": (
            "non-pad tokens/s (all devices)",
            [("tokens/s", [r.tokens_per_s for r in results])],
        ),
        "mfu.png": (
            "MFU (%)",
            [
                ("6N + attention", [_percent(r.mfu_6n) for r in results]),
                ("trainable-aware", [_percent(r.mfu_trainable) for r in results]),
            ],
        ),
        "memory.png": ("peak memory (MiB)", [("peak", [r.peak_memory_mib for r in results])]),
    }
    written = []
    for name, (ylabel, series) in charts.items():
        figure, axes = plt.subplots(figsize=(max(6.0, 1.3 * len(results) + 2), 4.5))
        width = 0.8 / len(series)
        for index, (legend, values) in enumerate(series):
            xs = [i + (index - (len(series) - 1) / 2) * width for i in range(len(results))]
            bars = axes.bar(xs, [v or 0.0 for v in values], width=width, label=legend)
            for bar, value, result in zip(bars, values, results, strict=True):
                text = _mark(result, value)
                axes.annotate(
                    text,
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                    color="black" if result.ok else "firebrick",
                )
        axes.set_xticks(range(len(results)))
        axes.set_xticklabels(labels, fontsize=8)
        axes.set_ylabel(ylabel)
        axes.set_title(f"{title}: {ylabel}", fontsize=10)
        axes.margins(y=0.15)
        if len(series) > 1:
            axes.legend(fontsize=8)
        figure.tight_layout()
        path = folder / name
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written


def _label(result: CellResult) -> str:
    values = "\n".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in result.settings.items())
    return f"{result.cell}\n{values}" if values else result.cell


def _percent(value: float | None) -> float | None:
    return None if value is None else 100 * value


def _mark(result: CellResult, value: float | None) -> str:
    if not result.ok:
        return result.status
    if value is None:
        return "n/a"
    return f"{value:,.3g}"
