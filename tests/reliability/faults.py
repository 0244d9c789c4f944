"""Faults at exact points of a real `ftl run`: SIGKILL during a step or inside a checkpoint save, a full disk,
a NaN loss.

A killed run needs a process of its own. Starting Python, torch and transformers takes seconds, so the children
are forked from a multiprocessing fork server that imported them once (nothing else is shared: each child
gets its environment, working directory and arguments, and writes its output to a log file).
"""

from __future__ import annotations

import errno
import math
import multiprocessing
import os
import signal
from pathlib import Path

import torch
from transformers import Trainer

import ftl.launcher.cli  # noqa: F401 - imported once in the fork server
from ftl.launcher.train import checkpoints

_context = None


def run_in_child(
    argv: list[str], fault: tuple | None, *, env: dict, cwd: Path, log: Path, umask: int = 0o022
) -> int:
    """Exit code of `ftl argv` in a fresh process with `fault` installed (-9 when it killed itself)."""
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload([__name__])
    child = _context.Process(target=_child, args=(argv, fault, env, str(cwd), str(log), umask))
    child.start()
    child.join(timeout=600)
    if child.is_alive():
        child.kill()
        raise TimeoutError(f"ftl {' '.join(argv)} did not end; see {log}")
    return child.exitcode


def _child(argv, fault, env, cwd, log, umask) -> None:
    os.umask(umask)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    descriptor = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(descriptor, 1)
    os.dup2(descriptor, 2)
    if fault is not None:
        install(*fault)
    from ftl.launcher.cli import main

    code = main(argv)
    os._exit(code)  # no atexit work of the fork server's modules


def install(kind: str, step: int, detail: str = "optimizer.pt") -> None:
    """Patch this process so that it fails at `step`:

    kill-step   SIGKILL before the forward pass of optimizer step `step`
    kill-write  SIGKILL half-way through writing `detail` of checkpoint-`step`
    kill-seal   SIGKILL after checkpoint-`step` is sealed, before it gets its name
    enospc      writing `detail` of checkpoint-`step` fails: no space left on the device
    nan         the loss of step `step` (and the `detail` steps after it, e.g. '2') is NaN
    """
    if kind == "kill-step":
        _before_step(step, lambda: os.kill(os.getpid(), signal.SIGKILL))
    elif kind in ("kill-write", "enospc"):
        torch.save = failing_torch_save(kind, step, detail)
    elif kind == "kill-seal":
        publish = checkpoints.publish

        def publish_then_die(staged: Path, final: Path) -> None:
            if final.name == f"checkpoint-{step}":
                os.kill(os.getpid(), signal.SIGKILL)
            publish(staged, final)

        checkpoints.publish = publish_then_die
    elif kind == "nan":
        Trainer.compute_loss = nan_losses(range(step, step + 1 + int(detail if detail.isdigit() else 0)))
    else:
        raise ValueError(kind)


def nan_losses(steps):
    """Trainer.compute_loss, but the loss of these optimizer steps (1-based) is NaN: so are their gradients."""
    steps = set(steps)
    compute_loss = Trainer.compute_loss

    def poisoned(self, model, inputs, *args, **kwargs):
        result = compute_loss(self, model, inputs, *args, **kwargs)
        if self.model.training and self.state.global_step + 1 in steps:
            if isinstance(result, tuple):
                return (result[0] * math.nan, *result[1:])
            return result * math.nan
        return result

    return poisoned


def _before_step(step: int, action) -> None:
    training_step = Trainer.training_step

    def patched(self, *args, **kwargs):
        if self.state.global_step + 1 == step:
            action()
        return training_step(self, *args, **kwargs)

    Trainer.training_step = patched


def failing_torch_save(kind: str, step: int, name: str):
    """torch.save, but writing `name` of checkpoint-`step` fails: SIGKILL half-way (kill-write) or ENOSPC."""
    save = torch.save

    def patched(obj, f, *args, **kwargs):
        path = Path(str(f))
        if path.name == name and path.parent.name == f"checkpoint-{step}":
            if kind == "enospc":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            save(obj, f, *args, **kwargs)
            with path.open("r+b") as stream:  # what the disk holds half-way through the write
                stream.truncate(path.stat().st_size // 2)
            os.kill(os.getpid(), signal.SIGKILL)
        return save(obj, f, *args, **kwargs)

    return patched
