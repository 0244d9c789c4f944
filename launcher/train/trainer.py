"""ftl's HF Trainer: the stock training loop with the few behaviours a recipe needs on top.

* Evaluation and prediction read rows longest first (far less padding) and put the results back in row
  order before metrics, so predictions line up with the rows they were made for (misclassified examples,
  NER errors, QA answers); see `eval_order.py`. (HF 5's own `group_by_length` evaluation shuffles rows.)
* A layer schedule (discriminative learning rates, gradual unfreezing; see `layer_schedule.py`): one optimizer
  group per layer depth (and weight decay or not), each with its own learning rate, and the run's scheduler
  gated per group until the group is unfrozen. The groups' learning rates are logged as `lr/<group>`.
* Class-weighted loss for classification tasks (`task.class_weights`).
* Atomic checkpoints (checkpoints.py): HF writes each checkpoint into a staging folder that becomes
  `checkpoint-N` only once sealed; a full disk is one line saying which checkpoint is kept.
* Non-finite losses (guard.py, `train.nan_policy`): every micro-batch's loss is shown to the guard.
"""

from __future__ import annotations

import os
from pathlib import Path

from transformers import Seq2SeqTrainer, Trainer

from ftl.launcher.train import checkpoints
from ftl.launcher.train.deepspeed_config import wants_cpu_adam
from ftl.launcher.train.eval_order import LongestFirstSampler, in_row_order, row_lengths, sampler_of
from ftl.launcher.train.guard import NonFiniteGuard
from ftl.launcher.train.layer_schedule import LayerSchedule


class FtlTrainerMixin:
    _staging = False

    def __init__(
        self,
        *args,
        layer_schedule: LayerSchedule | None = None,
        nonfinite_guard: NonFiniteGuard | None = None,
        **kwargs,
    ) -> None:
        """HF's Trainer, plus the run's layer schedule and the guard that every micro-batch's loss is shown to
        (the guard is also one of the callbacks)."""
        self.layer_schedule = layer_schedule
        self.nonfinite_guard = nonfinite_guard
        super().__init__(*args, **kwargs)
        offload = (self.args.hf_deepspeed_config.config if self.args.deepspeed else {}).get(
            "zero_optimization", {}
        )
        self.cpu_adam = wants_cpu_adam(
            offload.get("offload_optimizer", {}).get("device", "none"), self.args.device.type
        )

    def get_optimizer_cls_and_kwargs(self, args, model=None):
        """HF's AdamW, or DeepSpeed's CPUAdam with the same settings for an optimizer offloaded from a GPU."""
        optimizer_cls, kwargs = super().get_optimizer_cls_and_kwargs(args, model)
        if not self.cpu_adam:
            return optimizer_cls, kwargs
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam, {
            "lr": kwargs["lr"],
            "betas": kwargs["betas"],
            "eps": kwargs["eps"],
            "adamw_mode": True,
        }

    def close_loggers(self) -> None:
        """Close the loggers that keep files open until the final evaluation is logged (TensorBoard)."""
        for callback in self.callback_handler.callbacks:
            close = getattr(callback, "close", None)
            if callable(close):
                close()

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.nonfinite_guard is not None:
            self.nonfinite_guard.observe(loss)
        return loss

    # ---- atomic checkpoints ---------------------------------------------------------------------------
    def _get_output_dir(self, trial) -> str:
        base = super()._get_output_dir(trial)
        return os.path.join(base, checkpoints.STAGING) if self._staging else base

    def _save_checkpoint(self, model, trial) -> None:
        from transformers.trainer_utils import rotate_checkpoints

        root = Path(super()._get_output_dir(trial))
        name = f"checkpoint-{self.state.global_step}"
        staged, final = root / checkpoints.STAGING / name, root / name
        if self.args.should_save:
            checkpoints.clear_staging(root)
        self.accelerator.wait_for_everyone()
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)  # into staged; its rotation sees only the staging folder
        except OSError as exc:
            checkpoints.clear_staging(root)
            raise checkpoints.save_failed(exc, name, root, checkpoints.newest_complete(root)) from None
        finally:
            self._staging = False
        if self.state.best_model_checkpoint == str(staged):
            self.state.best_model_checkpoint = str(final)
        self.accelerator.wait_for_everyone()  # every worker's files are in
        try:
            if self.args.should_save:
                self.state.save_to_json(str(staged / "trainer_state.json"))  # with the final best path
                checkpoints.seal(staged, self.state.global_step)
                checkpoints.publish(staged, final)
            self.accelerator.wait_for_everyone()
            if self.args.local_process_index == 0 and staged.exists():  # a node without the shared filesystem
                checkpoints.seal(staged, self.state.global_step)
                checkpoints.publish(staged, final)
        except OSError as exc:
            checkpoints.clear_staging(root)
            raise checkpoints.save_failed(exc, name, root, checkpoints.newest_complete(root)) from None
        if self.args.should_save:
            checkpoints.clear_staging(root)
            rotate_checkpoints(
                output_dir=str(root),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )

    # ---- evaluation: longest rows first, results in row order (eval_order.py) --------------------------
    def _get_eval_sampler(self, eval_dataset):
        from torch.utils.data import SequentialSampler

        args = self.args
        if eval_dataset is None or args.world_size > 1:
            return None  # distributed: HF's sharded order
        if (  # reordering needs every row's result, concatenated in one array per output
            args.batch_eval_metrics
            or args.include_for_metrics
            or not args.eval_do_concat_batches
            or args.dataloader_drop_last
        ):
            return SequentialSampler(eval_dataset)
        lengths = row_lengths(eval_dataset)
        return SequentialSampler(eval_dataset) if lengths is None else LongestFirstSampler(lengths)

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        from transformers.trainer_utils import EvalLoopOutput, EvalPrediction, denumpify_detensorize

        sampler = sampler_of(dataloader)
        if sampler is None:
            return super().evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )
        compute, self.compute_metrics = self.compute_metrics, None  # metrics only once rows are in order
        try:
            output = super().evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )
        finally:
            self.compute_metrics = compute
        predictions = in_row_order(output.predictions, sampler.order)
        labels = in_row_order(output.label_ids, sampler.order)
        metrics: dict = {}
        if compute is not None and predictions is not None and labels is not None:
            found = denumpify_detensorize(compute(EvalPrediction(predictions=predictions, label_ids=labels)))
            prefix = f"{metric_key_prefix}_"
            metrics = {(k if k.startswith(prefix) else prefix + k): v for k, v in found.items()}
        return EvalLoopOutput(
            predictions=predictions,
            label_ids=labels,
            metrics={**output.metrics, **metrics},  # HF's order: the loss first
            num_samples=output.num_samples,
        )

    # ---- layer schedule ---------------------------------------------------------------------------
    def create_optimizer(self, model=None):
        schedule = self.layer_schedule
        if schedule is None or self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        grouped: dict[tuple[int, bool], list] = {}
        for name, parameter in opt_model.named_parameters():
            if parameter.requires_grad:
                grouped.setdefault((schedule.depth_of[name], name in decay), []).append(parameter)
        groups, self._group_depths = [], []
        # by depth, the weight-decayed group of a depth first (as in HF's own grouping)
        for (depth, decays), parameters in sorted(
            grouped.items(), key=lambda item: (item[0][0], not item[0][1])
        ):
            group = schedule.groups[depth]
            groups.append(
                {
                    "params": parameters,
                    "weight_decay": self.args.weight_decay if decays else 0.0,
                    "lr": self.args.learning_rate * group.lr_factor,
                }
            )
            self._group_depths.append(depth)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        created = self.lr_scheduler is None
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        if self.layer_schedule is None or not created:
            return scheduler
        optimizer = optimizer or self.optimizer
        steps_per_epoch = self._steps_per_epoch()
        starts = [self.layer_schedule.groups[d].starts_at(steps_per_epoch) for d in self._group_depths]
        scheduler.lr_lambdas = [
            _gated(f, start) for f, start in zip(scheduler.lr_lambdas, starts, strict=True)
        ]
        for group, base, factor in zip(
            optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
        ):
            group["lr"] = base * factor(scheduler.last_epoch)  # the values of step 0 under the gates
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
        return scheduler

    def _steps_per_epoch(self) -> int:
        """Optimizer steps per epoch, as HF counts them (each worker sees ceil(rows / workers) rows)."""
        import math

        rows = math.ceil(len(self.train_dataset) / self.args.world_size)
        batches = math.ceil(rows / self.args.per_device_train_batch_size)
        return max(batches // self.args.gradient_accumulation_steps, 1)

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self.layer_schedule is not None and "loss" in logs and self.optimizer is not None:
            for depth, group in zip(self._group_depths, self.optimizer.param_groups, strict=False):
                logs[f"lr/{self.layer_schedule.groups[depth].name}"] = group["lr"]
        super().log(logs, *args, **kwargs)


def _gated(schedule, start: int):
    """The run's learning-rate schedule, multiplied by 0 before `start` (the group's unfreezing step)."""

    def factor(step: int) -> float:
        return schedule(step) if step >= start else 0.0

    return factor


class FtlTrainer(FtlTrainerMixin, Trainer):
    pass


class FtlSeq2SeqTrainer(FtlTrainerMixin, Seq2SeqTrainer):
    pass
