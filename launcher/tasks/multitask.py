"""Multi-task fine-tuning: one encoder, a head per task (sequence or token classification), each task with its
own data, labels, metrics and error files.

Each task's data is prepared exactly as in a single-task run of that task (same cache), the datasets are
trained on together by `launcher.train.multitask`, and the run directory holds the shared model plus, per
task, validation-<task>.jsonl and its error analysis in <task>/.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftl.launcher.errors import FtlError
from ftl.launcher.tasks.base import Predictions, Task

_HEAD_KINDS = {"sequence_classification": "sequence", "token_classification": "token"}


@dataclass
class MultiTaskSpec:
    """What the multi-task trainer needs: the tasks in order, their validation splits, the sampling."""

    tasks: dict[str, Task]
    validation: dict[str, Any]
    probabilities: list[float] = field(default_factory=list)


class MultiTask(Task):
    auto_model = "AutoModel"

    def __init__(self, config: Any) -> None:
        from ftl.launcher.tasks.registry import task_for

        super().__init__(config)
        self.tasks = {name: task_for(sub.task) for name, sub in config.tasks.items()}

    def sub_recipe(self, loaded, name: str):
        """A single-task recipe for one task: the shared sections with that task's task and data."""
        from ftl.launcher.recipe.loader import LoadedRecipe

        sub = self.config.tasks[name]
        recipe = loaded.recipe.model_copy(update={"task": sub.task, "data": sub.data, "tune": None})
        prefix = ("task", "tasks", name)
        origins = {path[3:]: origin for path, origin in loaded.origins.items() if path[:3] == prefix}
        return LoadedRecipe(recipe, loaded.path, {**loaded.origins, **origins}, dirs=loaded.search_dirs)

    # ---- data -----------------------------------------------------------------------------------
    def prepare(self, loaded, tokenizer, log):
        from ftl.launcher.data.prepare import PreparedData, prepare_data
        from ftl.launcher.train.multitask import MultiTaskDataset

        prepared = {}
        for name, task in self.tasks.items():
            prepared[name] = prepare_data(self.sub_recipe(loaded, name), task, tokenizer, log=log)
            stats = prepared[name].stats
            log(
                f"task {name}: train {stats['train']['rows']:,} rows, validation {stats['validation']['rows']:,} rows "
                f"({prepared[name].sources['validation']})"
            )
        fingerprint = hashlib.sha256("|".join(p.fingerprint for p in prepared.values()).encode()).hexdigest()[
            :20
        ]
        total = {
            split: {
                "rows": sum(p.stats[split]["rows"] for p in prepared.values()),
                "tokens": sum(p.stats[split]["tokens"] for p in prepared.values()),
            }
            for split in ("train", "validation")
        }
        return PreparedData(
            train=MultiTaskDataset([p.train for p in prepared.values()]),
            validation={name: p.validation for name, p in prepared.items()},
            validation_rows={name: p.validation_rows for name, p in prepared.items()},
            fingerprint=fingerprint,
            sources={
                f"{name}.{split}": p.sources[split] for name, p in prepared.items() for split in p.sources
            }
            | {"validation": f"{len(prepared)} tasks"},
            stats={**total, "tasks": {name: p.stats for name, p in prepared.items()}},
            seconds=sum(p.seconds for p in prepared.values()),
            from_cache=all(p.from_cache for p in prepared.values()),
        )

    def tokenize(self, dataset, tokenizer, split: str):
        raise FtlError("multitask: data is tokenised per task (task.tasks.<name>)")

    def label_names(self) -> list[str] | None:
        return None

    def state(self) -> dict[str, Any]:
        return {"tasks": {name: task.state() for name, task in self.tasks.items()}}

    def restore(self, state: dict[str, Any]) -> None:
        for name, task in self.tasks.items():
            task.restore(state["tasks"][name])

    def write_validation_rows(self, directory: Path, rows) -> None:
        from ftl.launcher.train.rundir import atomic_write

        for name, task in self.tasks.items():
            lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in task.export_rows(rows[name]))
            atomic_write(directory / f"validation-{name}.jsonl", lines)

    # ---- model and training ---------------------------------------------------------------------
    def build_model(self, loaded, tokenizer, base_dir: Path | None, *, meta: bool = False):
        from ftl.launcher.model import multitask_model
        from ftl.launcher.model.load import LoadedModel, model_config
        from ftl.launcher.model.locate import locate_model

        recipe = loaded.recipe
        location = locate_model(recipe.model, loaded.search_dirs)
        encoder_config = model_config(loaded, self, location, tokenizer)
        heads = {
            name: {
                "kind": _HEAD_KINDS[sub.task.type],
                "labels": self.tasks[name].label_names(),
                "loss_weight": sub.loss_weight,
            }
            for name, sub in self.config.tasks.items()
        }
        load_kwargs: dict[str, Any] = {"seed": recipe.seed}
        if location.kind != "config":
            load_kwargs = {
                **location.hf_kwargs(),
                "revision": recipe.model.revision,
                "trust_remote_code": recipe.model.trust_remote_code,
            }
        if meta:
            import torch

            for name, sub in self.config.tasks.items():  # label names from the data when the recipe has none
                if self.tasks[name].label_names() is None:
                    from ftl.launcher.data.sources import load_source

                    where = f"task.tasks.{name}.data.train"
                    self.tasks[name].fit(load_source(sub.data.train, loaded.search_dirs, where))
                    heads[name]["labels"] = self.tasks[name].label_names()
            with torch.device("meta"):
                config = multitask_model.MultiTaskConfig(encoder_config.to_dict(), heads, self.config.dropout)
                model = multitask_model.MultiTaskModel(config)
        else:
            model = multitask_model.build(
                None if location.kind == "config" else location.path,
                encoder_config,
                heads,
                self.config.dropout,
                load_kwargs,
            )
        head_names = [name for name, _ in model.named_parameters() if name.startswith("heads.")]
        return LoadedModel(model, location, head_names)

    def model_class(self):
        from ftl.launcher.model.multitask_model import MultiTaskModel

        return MultiTaskModel

    def collator(self, tokenizer):
        from ftl.launcher.train.multitask import MultiTaskCollator

        return MultiTaskCollator([task.collator(tokenizer) for task in self.tasks.values()])

    def trainer_class(self) -> type:
        from ftl.launcher.train.multitask import MultiTaskTrainer

        return MultiTaskTrainer

    def configure_trainer(self, trainer, data) -> None:
        from ftl.launcher.train.multitask import task_probabilities

        sizes = [len(split) for split in data.train.splits]
        trainer.multitask = MultiTaskSpec(
            self.tasks,
            data.validation,
            task_probabilities(sizes, self.config.sampling, self.config.temperature),
        )

    def write_predictions(self, trainer, dataset, raw_rows, directory: Path) -> Predictions | None:
        """Each task's error analysis in <run>/<task>/ (predicting with that task's head)."""
        from ftl.launcher.train.multitask import TaskView

        written = None
        saved = trainer.preprocess_logits_for_metrics
        try:
            for index, (name, task) in enumerate(self.tasks.items()):
                folder = directory / name
                folder.mkdir(exist_ok=True)
                trainer.preprocess_logits_for_metrics = task.preprocess_logits_for_metrics()
                found = task.write_predictions(
                    trainer, TaskView(dataset[name], index), raw_rows[name], folder
                )
                written = written or (Predictions(folder) if found else None)
        finally:
            trainer.preprocess_logits_for_metrics = saved
        return written

    # ---- using the trained model ------------------------------------------------------------------
    def prediction_task(self, name: str | None) -> Task:
        """The task named by --task, predicting with its own head."""
        from ftl.launcher.errors import did_you_mean, one_of

        names = list(self.tasks)
        if name is None:
            raise FtlError(
                f"--task: this multitask run has the tasks {one_of(names)}; choose one, e.g. --task {names[0]}"
            )
        if name not in self.tasks:
            raise FtlError(
                f"--task: no task '{name}' in this run{did_you_mean(name, names)}; its tasks: {one_of(names)}"
            )
        return HeadOf(self.tasks[name], name)


class HeadOf:
    """One task of a multi-task run for prediction: its rows and fields, run through its own head. The head is
    chosen by name: a saved model's config lists its heads in sorted order, not the recipe's."""

    def __init__(self, task: Task, name: str) -> None:
        self.task, self.name = task, name
        self.config = task.config

    def plain_text_column(self) -> str | None:
        return self.task.plain_text_column()

    def encode_for_prediction(self, raw, tokenizer):
        inputs = self.task.encode_for_prediction(raw, tokenizer)
        inputs.constant_inputs["task_id"] = lambda model: model.task_names.index(self.name)
        return inputs

    def predictions_to_rows(self, inputs, outputs, tokenizer):
        return self.task.predictions_to_rows(inputs, outputs, tokenizer)
