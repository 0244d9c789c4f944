"""One rich console for human output (stderr); stdout stays clean for machine-readable results."""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=True, highlight=False)
out = Console(highlight=False, soft_wrap=True)
if not console.is_terminal and console.width <= 80:
    console.width = 160  # logs and CI: tables need not fit an 80-column default


def log(message: str) -> None:
    console.print(message, soft_wrap=True)
