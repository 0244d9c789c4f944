"""Training several tasks on one encoder: the task-homogeneous batches of `launcher.data.multitask`, and
per-task evaluation combined into one score."""

from __future__ import annotations

import numpy as np
from transformers import Trainer

from ftl.launcher.data.multitask import EpochDataLoader, TaskBatchSampler, TaskView
from ftl.launcher.train.trainer import FtlTrainerMixin


class MultiTaskTrainer(FtlTrainerMixin, Trainer):
    """Trains on task-homogeneous batches; evaluates every task and reports eval_<task>_<metric> and
    eval_score (the mean of the tasks' main metrics) in one log line and one callback event."""

    multitask = None  # set by the task: names, sub-tasks, evaluation splits, sampling settings

    def get_train_dataloader(self):
        spec = self.multitask
        sampler = TaskBatchSampler(
            [len(s) for s in self.train_dataset.splits],
            self.args.per_device_train_batch_size,
            spec.probabilities,
            seed=self.args.seed,
            rank=self.args.process_index,
            world_size=self.args.world_size,
        )
        return EpochDataLoader(
            self.train_dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )

    def evaluate(
        self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        spec = self.multitask
        metrics: dict[str, float] = {}
        main_scores, losses = [], []
        saved = self.compute_metrics, self.preprocess_logits_for_metrics
        try:
            for index, (name, task) in enumerate(spec.tasks.items()):
                dataset = TaskView(spec.validation[name], index)
                self.compute_metrics = task.compute_metrics(spec.validation[name], self.processing_class)
                self.preprocess_logits_for_metrics = task.preprocess_logits_for_metrics()
                output = self.evaluation_loop(
                    self.get_eval_dataloader(dataset),
                    description=f"Evaluation {name}",
                    ignore_keys=ignore_keys,
                    metric_key_prefix=f"{metric_key_prefix}_{name}",
                )
                metrics.update(output.metrics)
                main_scores.append(output.metrics[f"{metric_key_prefix}_{name}_{task.config.main_metric}"])
                losses.append(output.metrics.get(f"{metric_key_prefix}_{name}_loss", float("nan")))
        finally:
            self.compute_metrics, self.preprocess_logits_for_metrics = saved
        metrics[f"{metric_key_prefix}_score"] = float(np.mean(main_scores))
        metrics[f"{metric_key_prefix}_loss"] = float(np.mean(losses))
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics
