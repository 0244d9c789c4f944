"""One bench cell, in its own process: `python -m ftl.launcher.bench.cell SPEC.json`.

Loads the recipe with the cell's overrides, trains `warmup + steps` optimizer steps through the same Run as
`ftl run` (in this process, or on Ray Train workers when the cell scales out) with the StepTimer attached,
and writes `cell.json`: {"status": "ok"} or {"status": "failed", "reason": <one line>}. A crash that kills
the process leaves no cell.json; the parent records that from the exit code and the log.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

from ftl.launcher.console import quiet_library_notices
from ftl.launcher.errors import FtlError, first_line
from ftl.launcher.files import atomic_write
from ftl.launcher.recipe import load_recipe


def run_cell(spec: dict) -> dict:
    cell_dir = Path(spec["cell_dir"])
    try:
        from ftl.launcher.bench.timer import StepTimer
        from ftl.launcher.run import run_recipe

        loaded = load_recipe(spec["recipe"], spec["overrides"])
        timer = StepTimer(cell_dir, warmup=spec["warmup"], steps=spec["steps"])
        run_recipe(loaded, Path(spec["run_dir"]), train_only=True, callbacks=[timer])
        return {"status": "ok"}
    except FtlError as exc:  # also a Ray Train worker's crash, re-raised by the launcher as one line
        return {"status": "failed", "reason": _out_of_memory(str(exc), exc)}
    except Exception as exc:  # noqa: BLE001 - any crash of the cell is its result, reported in one line
        traceback.print_exc()
        return {"status": "failed", "reason": _out_of_memory(f"{type(exc).__name__}: {first_line(exc)}", exc)}


def _out_of_memory(reason: str, exc: BaseException) -> str:
    """Name an out-of-memory failure as such, whatever layer reported it."""
    if "out of memory" in reason.lower() or type(exc).__name__ == "OutOfMemoryError":
        return f"out of memory: {reason}"
    return reason


def main(argv: list[str]) -> int:
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")

    quiet_library_notices()
    spec = json.loads(Path(argv[0]).read_text())
    result = run_cell(spec)

    atomic_write(Path(spec["cell_dir"]) / "cell.json", json.dumps(result))
    ray = sys.modules.get("ray")  # a cell that scaled out started a private local Ray: stop it cleanly
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
