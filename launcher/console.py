"""One rich console for human output (stderr); stdout stays clean for machine-readable results."""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=True, highlight=False)
out = Console(highlight=False, soft_wrap=True)


def log(message: str) -> None:
    console.print(message, soft_wrap=True)
