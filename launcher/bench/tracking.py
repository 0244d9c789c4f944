"""`ftl bench` in the recipe's trackers (log.trackers: mlflow, wandb): a parent run for the bench and a child run
per cell (its matrix values as parameters; throughput, MFU, step times and memory as metrics), so that scaling
runs can be compared in the trackers' UIs. The parent also logs each cell's numbers at step = the cell's number,
a curve across the matrix. The cells' own training tracks nothing (matrix.bench_overrides).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftl.launcher.bench.results import CellResult
from ftl.launcher.recipe.loader import LoadedRecipe
from ftl.launcher.track.params import flat_params
from ftl.launcher.track.session import Tracking, external_trackers
from ftl.launcher.track.spec import RunSpec

# the numbers of a cell that become metrics (CellResult fields)
METRICS = (
    "tokens_per_s",
    "tokens_per_s_per_device",
    "samples_per_s",
    "mfu_6n",
    "mfu_trainable",
    "tflops_6n",
    "tflops_trainable",
    "step_p50_s",
    "step_p95_s",
    "peak_memory_mib",
    "non_pad_fraction",
    "wall_s",
)


class BenchTracking:
    def __init__(self, loaded: LoadedRecipe, output: Path, settings: dict[str, Any]) -> None:
        """loaded: the recipe with the bench's overrides but without the bench's fixed settings (those switch
        every tracker off for the cells)."""
        self.log = loaded.recipe.log
        self.recipe_name = loaded.recipe.name
        self.output = output
        self.parent: Tracking | None = None
        if external_trackers(self.log):
            name = loaded.recipe.name
            spec = RunSpec(
                name=f"bench-{name}",
                kind="bench",
                recipe=name,
                params={
                    **flat_params(loaded.recipe.model_dump(mode="json", exclude={"extends"})),
                    **flat_params({"bench": settings}),
                },
                tags={"ftl.output": str(output.resolve())},
                group=f"bench-{name}-{output.resolve().name}",
            )
            self.parent = Tracking.open(self.log, output, spec)
            self.parent.wait()

    def cell(self, position: int, result: CellResult, cell_dir: Path) -> None:
        """One finished (or failed) cell: its child run, and its numbers on the parent at step `position`."""
        if self.parent is None:
            return
        numbers = {
            name: float(getattr(result, name)) for name in METRICS if getattr(result, name) is not None
        }
        spec = RunSpec(
            name=result.cell,
            kind="cell",
            recipe=self.recipe_name,
            params={**result.settings, "devices": result.devices, "workers": result.workers},
            tags={"ftl.status": result.status, "ftl.reason": result.reason, "ftl.device": result.device_name},
        )
        child = Tracking.open(self.log, cell_dir, spec, parent=self.parent.parent_for_children("bench"))
        if numbers:
            child.metrics(numbers, position)
        child.finish(status="FINISHED" if result.ok else "FAILED")
        if numbers:
            self.parent.metrics(numbers, position)

    def finish(self, files: list[Path], *, interrupted: bool = False) -> None:
        if self.parent is not None:
            status = "KILLED" if interrupted else "FINISHED"
            self.parent.finish(files=[path for path in files if path.exists()], status=status)
