"""Multi-task fine-tuning: one encoder, a head per task (sequence or token classification), each task with its
own data, labels, metrics and error files.

Each task's data is prepared exactly as in a single-task run of that task (same cache), the datasets are
trained on together by `launcher.train.multitask` (batches of one task at a time: `launcher.data.multitask`), and the run directory holds the shared model plus, per
task, validation-<task>.jsonl and its error analysis in <task>/.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftl.launcher.data.prepare import PreparedData, prepare_data
from ftl.launcher.data.sources import load_source
from ftl.launcher.errors import FtlError, did_you_mean, one_of
from ftl.launcher.files import atomic_write
from ftl.launcher.model.load import LoadedModel, ModelSpec, full_weights, model_config
from ftl.launcher.model.locate import locate_model
from ftl.launcher.recipe.data import DataSection
from ftl.launcher.tasks.base import Predictions, Task
from ftl.launcher.tasks.classification import SequenceClassification
from ftl.launcher.tasks.token_classification import TokenClassification

# The tasks a head can serve: their Task and the kind of head they need.
_HEADS = {
    "sequence_classification": (SequenceClassification, "sequence"),
    "token_classification": (TokenClassification, "token"),
}


@dataclass
class MultiTaskSpec:
    """What the multi-task trainer needs: the tasks in order, their validation splits, the sampling."""

    tasks: dict[str, Task]
    validation: dict[str, Any]
    probabilities: list[float] = field(default_factory=list)


class MultiTask(Task):
    auto_model = "AutoModel"
    trainer_kind = "multitask"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.tasks: dict[str, Task] = {
            name: _HEADS[sub.task.type][0](sub.task) for name, sub in config.tasks.items()
        }

    # ---- data -----------------------------------------------------------------------------------
    def prepare(self, data: DataSection | None, tokenizer, *, dirs: list[Path], log) -> PreparedData:
        """Each task's own `data:` prepared as its single-task run would (same cache)."""
        from ftl.launcher.data.multitask import MultiTaskDataset

        prepared = {}
        for name, task in self.tasks.items():
            sub_data = self.config.tasks[name].data
            prepared[name] = prepare_data(sub_data, task, tokenizer, dirs=dirs, log=log)
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
            files_fingerprint=hashlib.sha256(
                "|".join(p.files_fingerprint for p in prepared.values()).encode()
            ).hexdigest()[:16],
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
        for name, task in self.tasks.items():
            lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in task.export_rows(rows[name]))
            atomic_write(directory / f"validation-{name}.jsonl", lines)

    # ---- model and training ---------------------------------------------------------------------
    def build_model(
        self, spec: ModelSpec, tokenizer, base_dir: Path | None, *, meta: bool = False
    ) -> LoadedModel:
        from ftl.launcher.model import multitask_model  # torch and transformers: only when a model is built

        section = spec.section
        location = locate_model(section, list(spec.dirs))
        encoder_config = model_config(section, self, location, tokenizer)
        heads = {
            name: {
                "kind": _HEADS[sub.task.type][1],
                "labels": self.tasks[name].label_names(),
                "loss_weight": sub.loss_weight,
            }
            for name, sub in self.config.tasks.items()
        }
        load_kwargs: dict[str, Any] = {"seed": spec.seed}
        if location.kind != "config":
            load_kwargs = {
                **location.hf_kwargs(),
                "revision": section.revision,
                "trust_remote_code": section.trust_remote_code,
            }
        if meta:
            import torch

            for name, sub in self.config.tasks.items():  # label names from the data when the recipe has none
                if self.tasks[name].label_names() is None:
                    where = f"task.tasks.{name}.data.train"
                    self.tasks[name].fit(load_source(sub.data.train, list(spec.dirs), where))
                    heads[name]["labels"] = self.tasks[name].label_names()
            with torch.device("meta"):
                config = multitask_model.MultiTaskConfig(encoder_config.to_dict(), heads, self.config.dropout)
                model = multitask_model.MultiTaskModel(config)
        else:  # built whole: the heads are initialised around the encoder, which zero.Init would have cut up
            with full_weights():
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
        from ftl.launcher.model.multitask_model import MultiTaskModel  # torch and transformers

        return MultiTaskModel

    def collator(self, tokenizer):
        from ftl.launcher.data.multitask import MultiTaskCollator

        return MultiTaskCollator([task.collator(tokenizer) for task in self.tasks.values()])

    def configure_trainer(self, trainer, data) -> None:
        from ftl.launcher.data.multitask import task_probabilities

        sizes = [len(split) for split in data.train.splits]
        trainer.multitask = MultiTaskSpec(
            self.tasks,
            data.validation,
            task_probabilities(sizes, self.config.sampling, self.config.temperature),
        )

    def write_predictions(self, trainer, dataset, raw_rows, directory: Path) -> Predictions | None:
        """Each task's error analysis in <run>/<task>/ (predicting with that task's head)."""
        from ftl.launcher.data.multitask import TaskView

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
