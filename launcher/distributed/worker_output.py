"""Where a distributed run's output goes: each worker's full output to <run>/logs/worker-<rank>.log (on its own
node), and only rank 0's ftl lines (progress, tables, the summary) to the driver's console, through a Ray queue.
So the console of a 2-worker run reads like a single-process one: no per-worker prefixes, no library warnings
repeated per rank, no Ray internals; a failure ends in ftl's one line naming the log files.
"""

from __future__ import annotations

import io
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ftl.launcher.console import console

LOG_FOLDER = "logs"


def worker_log(run: Path, rank: int) -> Path:
    return run / LOG_FOLDER / f"worker-{rank}.log"


class RelayedLines(io.TextIOBase):
    """A text stream for rank 0's console: every line goes to its log file and, whole, onto the driver's queue."""

    def __init__(self, queue: Any, also) -> None:
        self.queue, self.also, self.pending = queue, also, ""

    def write(self, text: str) -> int:
        self.also.write(text)
        if self.queue is None:
            return len(text)
        self.pending += text
        while "\n" in self.pending:
            line, self.pending = self.pending.split("\n", 1)
            try:
                self.queue.put_nowait(line)
            except Exception as exc:  # noqa: BLE001 - the driver (and its queue) went away: keep training
                self.also.write(f"[ftl: lines no longer reach the driver's console: {type(exc).__name__}]\n")
                self.queue = None
                break
        return len(text)

    def flush(self) -> None:
        self.also.flush()

    def isatty(self) -> bool:
        return False


def send_output_to_log(path: Path, relay_queue: Any = None) -> None:
    """In a worker: its stdout and stderr (Python's and native libraries') into `path`; ftl's console lines too,
    and with `relay_queue` (rank 0) also onto the driver's console."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    log_file = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - open for the worker's life
    os.dup2(log_file.fileno(), 1)
    os.dup2(log_file.fileno(), 2)
    console.file = RelayedLines(relay_queue, log_file) if relay_queue is not None else log_file


class ConsoleRelay:
    """On the driver: a Ray queue that rank 0 puts its console lines on, printed here as they arrive."""

    def __init__(self) -> None:
        import ray
        from ray.util.queue import Queue
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        # on the driver's node: a lost worker node must not take the console with it
        self.queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._print, name="ftl-console-relay", daemon=True)

    def __enter__(self) -> ConsoleRelay:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._drain()
        self.queue.shutdown(force=True)

    def _print(self) -> None:
        from ray.exceptions import ActorDiedError
        from ray.util.queue import Empty

        while not self._stop.is_set():
            try:
                line = self.queue.get(timeout=0.5)
            except Empty:
                continue
            except ActorDiedError:  # the queue went away with the cluster: nothing more comes
                return
            except Exception:  # noqa: BLE001 - a node lost meanwhile makes calls fail for a moment; go on
                time.sleep(0.5)
                continue
            _show(line)

    def _drain(self) -> None:
        try:
            while not self.queue.empty():
                _show(self.queue.get_nowait())
        except Exception:  # noqa: BLE001 - as above
            return


def _show(line: str) -> None:
    console.file.write(line + "\n")
    console.file.flush()
