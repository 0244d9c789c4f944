"""Non-finite losses (train.nan_policy): a step whose loss is NaN or infinite is never applied to the weights.

The Trainer hands every micro-batch's loss to `observe`. Before the optimizer step all workers agree whether
the step was bad (one tiny all-reduce; HF already synchronises on the loss every step to filter its logs); a
bad step's gradients are dropped, so the optimizer leaves the weights as they were. With `stop` the run ends
after `max_bad_steps` bad steps in a row, without saving or evaluating the poisoned state: its last good
checkpoint stays the newest one. With `skip` training goes on; the count lands in metrics.json.
Under DeepSpeed the engine applies gradients inside backward, so only `stop` at the first bad step is allowed
(rules.py): the run stops before anything of that step is saved.
"""

from __future__ import annotations

import math

from transformers import TrainerCallback

from ftl.launcher.console import log


class NonFiniteGuard(TrainerCallback):
    def __init__(self, policy: str, max_bad_steps: int | None) -> None:
        self.policy = policy
        self.limit = max_bad_steps or 1
        self.skipped = 0
        self.in_a_row = 0
        self.stopped: str | None = None  # the reason, once the run was stopped
        self._bad_micro_batch = False
        self._bad_step = False
        self._loss = math.nan

    def observe(self, loss) -> None:
        import torch

        if not bool(torch.isfinite(loss).all()):
            self._bad_micro_batch = True
            self._loss = float(loss.float().sum())

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self._bad_step = _on_any_worker(self._bad_micro_batch, args)
        self._bad_micro_batch = False
        if self._bad_step and model is not None:
            for parameter in model.parameters():
                parameter.grad = None  # the optimizer skips parameters without a gradient

    def on_step_end(self, args, state, control, **kwargs):
        if not self._bad_step:
            self.in_a_row = 0
            return control
        self._bad_step = False
        self.skipped += 1
        self.in_a_row += 1
        if state.is_world_process_zero:
            log(
                f"[bold yellow]warning[/]: step {state.global_step}: the loss is {self._loss}; the step was not "
                f"applied ({self.in_a_row} in a row, train.nan_policy {self.policy})"
            )
        if self.policy == "stop" and self.in_a_row >= self.limit:
            self.stopped = (
                f"train.nan_policy: the loss was {self._loss} for {self.in_a_row} step(s) in a row (up to step "
                f"{state.global_step}; train.max_bad_steps {self.limit}), so the run stopped"
            )
            return self._cancel(control)
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        return self._cancel(control) if self.stopped else control

    @staticmethod
    def _cancel(control):
        control.should_training_stop = True
        control.should_save = False
        control.should_evaluate = False
        control.should_log = False
        return control


def _on_any_worker(flag: bool, args) -> bool:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=args.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item() > 0)
