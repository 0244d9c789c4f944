"""One rich console for human output (stderr); stdout stays clean for machine-readable results."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from rich.console import Console

console = Console(stderr=True, highlight=False)
out = Console(highlight=False, soft_wrap=True)
if not console.is_terminal and console.width <= 80:
    console.width = 160  # logs and CI: tables need not fit an 80-column default


_recorders: list[list[str]] = []


def log(message: str) -> None:
    for lines in _recorders:
        lines.append(message)
    console.print(message, soft_wrap=True)


@contextlib.contextmanager
def recording() -> Iterator[list[str]]:
    """The messages `log` prints inside the block, in order (they are printed as well)."""
    lines: list[str] = []
    _recorders.append(lines)
    try:
        yield lines
    finally:
        _recorders.remove(lines)


# Loggers of notices that libraries print while being imported or per checkpoint (optional kernels, the CPU
# accelerator, "checkpoint created"); ftl reports what matters itself.
_NOISY_LOGGERS = {
    "bitsandbytes": logging.ERROR,
    "kernels": logging.ERROR,  # hub kernels for bitsandbytes: 'Skipping publisher trust check' when offline
    "DeepSpeed": logging.ERROR,
    "ray.train": logging.WARNING,
    "ray.tune": logging.WARNING,
}


def quiet_library_notices() -> None:
    """Call first in every process ftl starts (the CLI, Ray Tune trials, Ray Train workers)."""
    for name, level in _NOISY_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
