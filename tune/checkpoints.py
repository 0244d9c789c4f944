"""A trial's checkpoints through Ray Tune: what a restarted trial resumes from, and PBT's borrowed weights.

Every checkpoint a trial writes is also reported to Tune, which keeps it in the search's storage. When Tune
restarts a trial (after a failure, or PBT after exploiting a better trial), the checkpoint Tune hands back is
the truth: it is put into the trial's run directory as checkpoint-<step> and newer local ones are dropped.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

from transformers import TrainerCallback

from ftl.launcher.train.checkpoints import publish, seal
from ftl.launcher.train.rundir import RunDir

_STATE = "trainer_state.json"


def adopt_checkpoint(rundir: RunDir, source: Path) -> Path:
    """Make the checkpoint folder `source` the newest checkpoint of `rundir`; returns where it now lives."""
    state = json.loads((source / _STATE).read_text())
    target = rundir.checkpoints / f"checkpoint-{state['global_step']}"
    for stale in rundir.checkpoints.glob(".adopt-*"):  # left by a process killed while copying
        shutil.rmtree(stale, ignore_errors=True)
    for local in rundir.checkpoints.glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", local.name)
        if match and int(match.group(1)) > state["global_step"]:
            shutil.rmtree(local, ignore_errors=True)
    if target.exists() and _same_state(target, source):
        return target
    rundir.checkpoints.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".adopt-", dir=rundir.checkpoints))
    shutil.copytree(source, staging, dirs_exist_ok=True)
    best = state.get("best_model_checkpoint")
    if best and Path(best).resolve().parent != rundir.checkpoints.resolve():
        # another trial's best checkpoint (PBT): this trial tracks its own best from here on
        state["best_model_checkpoint"] = None
        state["best_metric"] = None
        (staging / _STATE).write_text(json.dumps(state, indent=2))
    seal(
        staging, state["global_step"]
    )  # a complete checkpoint of this run now (see launcher/train/checkpoints.py)
    publish(staging, target)
    return target


def _same_state(a: Path, b: Path) -> bool:
    try:
        return (a / _STATE).read_bytes() == (b / _STATE).read_bytes()
    except OSError:
        return False


class OptimizerSettingsRefresh(TrainerCallback):
    """Apply the recipe's lr and weight decay to an optimizer restored from a checkpoint.

    HF restores the optimizer and scheduler state with the values they were saved with; after PBT perturbs a
    trial's hyperparameters they must change. Applied once, before the first step of the session: the scheduler's
    base learning rates become train.lr (the schedule's position is kept), and the decayed parameter group
    gets train.weight_decay. train.max_grad_norm is read from the training arguments, which are rebuilt anyway.
    """

    def __init__(self, lr: float, weight_decay: float) -> None:
        self.lr = lr
        self.weight_decay = weight_decay
        self._applied = False

    def on_step_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        if self._applied or optimizer is None:
            return
        self._applied = True
        groups = optimizer.param_groups
        # groups may have learning rates of their own (train.layer_lr_decay): scale them all alike, so the
        # top group (factor 1) gets train.lr and the others keep their ratios to it
        old = [group.get("initial_lr", group["lr"]) for group in groups]
        bases = [self.lr * value / max(old) if max(old) > 0 else self.lr for value in old]
        if lr_scheduler is not None and hasattr(lr_scheduler, "base_lrs"):
            lr_scheduler.base_lrs = list(bases)
            factors = [fn(lr_scheduler.last_epoch) for fn in getattr(lr_scheduler, "lr_lambdas", [])]
        else:
            factors = []
        for index, group in enumerate(groups):
            group["initial_lr"] = bases[index]
            group["lr"] = bases[index] * (factors[index] if index < len(factors) else 1.0)
            if group.get("weight_decay", 0.0) != 0.0 or index == 0:
                group["weight_decay"] = self.weight_decay
