"""Resuming a ZeRO checkpoint on a different number of workers, through DeepSpeed's universal checkpoints."""

from __future__ import annotations

import re
from argparse import Namespace
from pathlib import Path

from ftl.launcher.console import log
from ftl.launcher.errors import FtlError

_OPTIM_FILE = re.compile(r".*zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt$")


def saved_world_size(checkpoint: Path) -> tuple[str, int] | None:
    """(tag, data-parallel size) of the DeepSpeed state in an HF checkpoint folder, or None if there is none."""
    latest = checkpoint / "latest"
    if not latest.is_file():
        return None
    tag = latest.read_text().strip()
    ranks = {
        int(m.group(1))
        for p in (checkpoint / tag).glob("*optim_states.pt")
        if (m := _OPTIM_FILE.match(p.name))
    }
    return (tag, len(ranks)) if ranks else None


def universal_for(checkpoint: Path, workers: int) -> dict | None:
    """DeepSpeed config additions for resuming `checkpoint` on `workers` workers (None: load it as it is)."""
    saved = saved_world_size(checkpoint)
    if saved is None or saved[1] == workers:
        return None
    tag, size = saved
    universal = f"{tag}_universal"
    if not (checkpoint / universal).is_dir():
        log(
            f"re-sharding {checkpoint.name} from {size} to {workers} worker(s) (DeepSpeed universal checkpoint)"
        )
        from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

        try:
            ds_to_universal(
                Namespace(
                    input_folder=str(checkpoint / tag),
                    output_folder=str(checkpoint / universal),
                    num_extract_workers=1,
                    num_merge_workers=1,
                    keep_temp_folder=False,
                    strict=True,
                    inject_missing_state=True,
                )
            )
        except Exception as exc:  # the converter raises assertions and OSErrors alike
            raise FtlError(
                f"--resume: cannot re-shard {checkpoint} from {size} to {workers} workers ({exc}); resume with "
                f"distributed.workers={size}"
            ) from None
    (checkpoint / "latest_universal").write_text(universal)
    return {"checkpoint": {"load_universal": True}}


def universal_files(checkpoint: Path) -> list[str]:
    """The names a re-sharding added to a checkpoint folder (the universal copy and its pointer)."""
    pointer = checkpoint / "latest_universal"
    return [pointer.read_text().strip(), pointer.name] if pointer.is_file() else []
