"""The Trainer callback that times a bench cell: one record per optimizer step, written per process.

A step's time is the wall time between the ends of two consecutive optimizer steps (the first from the
start of training), so it holds everything a step costs: loading and collating the batch, forward, backward,
the optimizer, logging; on CUDA the device is synchronised before the clock is read. Work is counted where
the model sees it, by a forward pre-hook: rows, real (non-pad) tokens from the attention mask (every token of
a packed block without one), the padded positions computed (`slots`), and Σ ℓ² for the attention FLOPs, accumulated on the device and read once per
step. Memory: `torch.cuda.max_memory_allocated` from the start of training on CUDA; on CPU the peak resident
set of this process and its children, sampled every 20 ms during training.

Each process (rank) writes `timing-rank<r>.json` into the cell directory at the end of training, and rank 0
keeps `progress.json` current for the live table.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ftl.launcher.bench.peak import compute_dtype
from ftl.launcher.files import atomic_write
from ftl.launcher.flops import flop_counts
from ftl.launcher.token_labels import IGNORE_INDEX


class StepTimer(TrainerCallback):
    """Picklable before training starts (Ray ships it to every worker); state is made in on_train_begin."""

    def __init__(self, cell_dir: str | Path, *, warmup: int, steps: int) -> None:
        self.cell_dir = str(cell_dir)
        self.warmup, self.steps = warmup, steps

    # ---- Trainer events -------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        import torch

        self._rank = int(os.environ.get("RANK", "0"))
        self._cuda = args.device.type == "cuda"
        self._device = args.device
        self._records: list[dict[str, Any]] = []
        self._tokens = self._squares = None
        self._rows = self._slots = 0
        self._handle = model.register_forward_pre_hook(self._count, with_kwargs=True)
        self._info = {
            "rank": self._rank,
            "world_size": args.world_size,
            "host": socket.gethostname(),
            "device": "cuda" if self._cuda else "cpu",
            "device_name": _device_name(self._cuda, args.device),
            "gpus": max(args.n_gpu, 1) if self._cuda else 0,
            "precision": "bf16" if args.bf16 else ("fp16" if args.fp16 else "fp32"),
            # the matmuls' dtype: a quantized (QLoRA) model computes in its compute dtype, whatever the precision
            "compute_dtype": compute_dtype(
                "bf16" if args.bf16 else ("fp16" if args.fp16 else "fp32"),
                getattr(getattr(model, "config", None), "quantization_config", None),
            ),
            "allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "torch_threads": torch.get_num_threads(),
            "flop_counts": flop_counts(model).as_dict(),
        }
        self._memory = _MemoryPeak(self._cuda, args.device)
        self._last = self._now()

    def on_step_end(self, args, state, control, **kwargs):
        now = self._now()
        tokens = int(self._tokens.item()) if self._tokens is not None else 0
        squares = int(self._squares.item()) if self._squares is not None else 0
        self._records.append(
            {
                "step": state.global_step,
                "seconds": now - self._last,
                "rows": self._rows,
                "slots": self._slots,
                "tokens": tokens,
                "tokens_squared": squares,
            }
        )
        self._tokens = self._squares = None
        self._rows = self._slots = 0
        if self._rank == 0:
            total = self.warmup + self.steps
            atomic_write(
                Path(self.cell_dir) / "progress.json",
                json.dumps({"step": state.global_step, "total": total}),
            )
        self._last = self._now()  # the progress write is not part of the next step

    def on_train_end(self, args, state, control, **kwargs):
        self._handle.remove()
        payload = {
            **self._info,
            "warmup": self.warmup,
            "steps": self.steps,
            "memory_kind": self._memory.kind,
            "memory_peak_bytes": self._memory.stop(),
            "records": self._records,
        }
        atomic_write(Path(self.cell_dir) / f"timing-rank{self._rank}.json", json.dumps(payload, indent=1))

    # ---- helpers --------------------------------------------------------------------------------
    def _now(self) -> float:
        if self._cuda:
            import torch

            torch.cuda.synchronize(self._device)
        return time.perf_counter()

    def _count(self, module, args, kwargs):
        if not module.training:
            return
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids", args[0] if args else None)
        positions = kwargs.get("position_ids")
        if mask is not None and mask.dim() == 2:
            lengths = mask.sum(dim=1)
            self._slots += int(mask.numel())
        elif (
            ids is not None
            and positions is not None
            and positions.dim() == 2
            and positions.shape == ids.shape
        ):
            lengths = _packed_example_lengths(ids, positions, kwargs.get("labels"))
            self._slots += int(ids.numel())
        elif ids is not None:
            import torch

            lengths = torch.full((ids.shape[0],), ids.shape[-1], device=ids.device, dtype=torch.long)
            self._slots += int(ids.shape[0] * ids.shape[-1])
        else:
            return
        lengths = lengths.to(dtype=_int64())
        tokens, squares = lengths.sum(), (lengths * lengths).sum()
        self._tokens = tokens if self._tokens is None else self._tokens + tokens
        self._squares = squares if self._squares is None else self._squares + squares
        self._rows += int(lengths.shape[0])


def _packed_example_lengths(ids, positions, labels):
    """The examples' lengths in rows packed with restarting position ids (data/packing.py): each block from a
    position 0 to the next is an example; a row's last block is padding when its labels are all IGNORE_INDEX and its
    tokens all the same (the pad token)."""
    import torch

    lengths = []
    for row in range(ids.shape[0]):
        starts = (positions[row] == 0).nonzero().flatten().tolist() or [0]
        bounds = [*starts, ids.shape[1]]
        for a, b in zip(bounds, bounds[1:], strict=False):
            padding = (
                b == ids.shape[1]
                and a > 0
                and labels is not None
                and bool((labels[row, a:b] == IGNORE_INDEX).all())
                and bool((ids[row, a:b] == ids[row, a]).all())
            )
            if not padding:
                lengths.append(b - a)
    return torch.tensor(lengths, device=ids.device, dtype=torch.long)


def _int64():
    import torch

    return torch.int64


def _device_name(cuda: bool, device) -> str:
    if cuda:
        import torch

        return torch.cuda.get_device_name(device)
    import platform

    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            model = next(
                (line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), ""
            )
    except OSError:
        pass
    return f"{model or platform.processor() or 'cpu'} ({os.cpu_count()} cores)"


class _MemoryPeak:
    """Peak device memory (CUDA allocator) or peak RSS of this process tree (CPU, sampled by a thread)."""

    def __init__(self, cuda: bool, device) -> None:
        self.cuda, self.device = cuda, device
        if cuda:
            import torch

            torch.cuda.reset_peak_memory_stats(device)
            self.kind = "cuda max allocated"
            return
        import psutil

        self.kind = "RSS of the process tree"
        self._process = psutil.Process()
        self._peak = 0
        self._running = True
        self._thread = threading.Thread(target=self._sample, name="ftl-bench-rss", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil

        children: list = []
        refreshed = 0.0
        while self._running:
            now = time.monotonic()
            if now - refreshed > 1.0:  # listing children scans /proc: once a second is enough
                children = self._process.children(recursive=True)
                refreshed = now
            total = self._process.memory_info().rss
            for child in children:
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    continue
            self._peak = max(self._peak, total)
            time.sleep(0.02)

    def stop(self) -> int:
        if self.cuda:
            import torch

            return int(torch.cuda.max_memory_allocated(self.device))
        self._running = False
        self._thread.join(timeout=1.0)
        return int(max(self._peak, self._process.memory_info().rss))
