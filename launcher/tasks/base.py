"""What a task must provide so that the Run, evaluation and the data pipeline can stay task-agnostic.

A new task is one module in this package with a `Task` subclass, registered in `registry.py`, plus its
recipe section in `launcher/recipe/tasks.py`.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftl.launcher.data.cells import usable_text
from ftl.launcher.data.prepare import PreparedData, prepare_data
from ftl.launcher.data.sources import RawData
from ftl.launcher.errors import FtlError, did_you_mean, one_of
from ftl.launcher.files import atomic_write
from ftl.launcher.model.load import LoadedModel, ModelSpec, load_model
from ftl.launcher.recipe.data import DataSection
from ftl.launcher.tasks.prediction import PredictionInputs, PromptSettings, unsupported

# RawData.what of a file a finished run reads (ftl eval --data, ftl predict --data): its errors cannot suggest
# recipe changes, only changes to the file (or training again)
EVAL_FILE = "--data"


@dataclass
class Predictions:
    """What `write_predictions` wrote, and numbers only predicting yields (e.g. ROUGE of generated text)."""

    path: Path
    metrics: dict[str, float] = field(default_factory=dict)


class Task(ABC):
    """Behaviour of one task type, configured by its recipe section."""

    #: HF auto class name in `transformers`, e.g. "AutoModelForSequenceClassification".
    auto_model: str
    #: The model's loss divides by the number of items HF passes in (token-level LM losses). Only then may the
    #: Trainer weight the loss by tokens across workers; per-example mean losses must not be rescaled.
    loss_counts_items: bool = False
    #: peft TaskType name for LoRA adapters on this task's model.
    peft_task_type: str = "FEATURE_EXTRACTION"
    #: Evaluation generates text (Seq2SeqTrainer with predict_with_generate) instead of one forward pass.
    generates_in_evaluation: bool = False
    #: The training loop this task needs; the train layer maps it to a Trainer class (train/trainers.py):
    #: "plain", "seq2seq" (generating evaluation), "masked_lm" (decodes only masked positions), "multitask",
    #: "preference" (a loss over chosen/rejected pairs and a reference model).
    trainer_kind: str = "plain"

    def __init__(self, config: Any) -> None:
        self.config = config

    # ---- the run's building blocks (a multi-task run replaces them) ------------------------------
    def prepare(self, data: DataSection | None, tokenizer, *, dirs: list[Path], log) -> PreparedData:
        """Tokenised train and validation splits of the recipe's `data:` (cached); relative paths in `dirs`."""
        return prepare_data(data, self, tokenizer, dirs=dirs, log=log)

    def build_model(
        self, spec: ModelSpec, tokenizer, base_dir: Path | None, *, meta: bool = False
    ) -> LoadedModel:
        """The model to fine-tune (pretrained, quantized and with adapters as the spec says); meta=True: shapes
        only, on the meta device (for `ftl check` and `ftl plan`)."""
        return load_model(spec, self, tokenizer, base_dir=base_dir, meta=meta)

    def configure_trainer(self, trainer, data) -> None:  # noqa: B027 - optional hook
        """Give the trainer what this task's training and evaluation need beyond the datasets."""

    def configure_evaluation(self, trainer, trained) -> None:  # noqa: B027 - optional hook
        """`ftl eval`: give the trainer what scoring a file needs beyond the trained model (`trained`: the
        finished run, use/trained.py)."""

    def write_validation_rows(self, directory: Path, rows) -> None:
        """validation.jsonl: the exact validation rows, in the recipe's columns, for `ftl eval --data`."""
        exported = self.export_rows(rows)
        atomic_write(
            directory / "validation.jsonl",
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in exported),
        )

    # ---- data -----------------------------------------------------------------------------------
    @property
    def split_method(self) -> str:
        """The validation-split method used for 'auto'."""
        return "tail"

    def stratify_column(self) -> str | None:
        """Column whose values a stratified split keeps in proportion (None: not supported)."""
        return None

    def check_columns(self, raw: RawData) -> None:
        columns = raw.dataset.column_names
        for key, column in self.column_keys().items():
            if column is not None and column not in columns:
                raise FtlError(
                    f"{raw.what} ({raw.description}): no column '{column}' (task.{key}){did_you_mean(column, columns)}; "
                    f"columns are: {one_of(columns)}"
                )

    def column_keys(self) -> dict[str, str | None]:
        """task.<key> -> column name, for the columns this task reads."""
        return {}

    @staticmethod
    def rows_with_text(raw: RawData, column: str, keep_columns: tuple[str, ...] = ()):
        """The rows whose `column` holds non-blank text, with only that column and `keep_columns`."""
        dataset = raw.dataset.select_columns([column, *(c for c in keep_columns if c != column)])
        texts = dataset[column]
        keep = usable_text(raw, column, "task.text_column", texts)
        if not keep:
            raise FtlError(f"{raw.what} ({raw.description}): every row has an empty '{column}'")
        return dataset.select(keep) if len(keep) != len(texts) else dataset

    def fit(self, train: RawData) -> None:  # noqa: B027 - optional hook
        """Learn what the task needs from the training rows (e.g. label names) before encoding."""

    def encode_raw(self, raw: RawData, keep_columns: tuple[str, ...] = ()):
        """Validate and normalise the raw rows (e.g. label names -> ids); returns a Dataset.

        `keep_columns` are carried through unchanged (e.g. the group column of group-aware folds).
        """
        self.check_columns(raw)
        return raw.dataset

    @abstractmethod
    def tokenize(self, dataset, tokenizer, split: str):
        """Turn normalised rows into model inputs."""

    def cache_identity(self) -> dict[str, Any]:
        """Everything besides the data and tokenizer that changes the tokenised result."""
        return self.config.model_dump(mode="json")

    # ---- model ----------------------------------------------------------------------------------
    def model_class(self):
        import transformers

        return getattr(transformers, self.auto_model)

    def config_overrides(self) -> dict[str, Any]:
        """Settings passed to the model config (e.g. num_labels)."""
        return {}

    def configure_model(self, model, tokenizer) -> None:  # noqa: B027 - optional hook
        """Adjust a loaded model for the task (e.g. its generation settings)."""

    # ---- training and evaluation -----------------------------------------------------------------
    @abstractmethod
    def collator(self, tokenizer):
        """Batch builder (dynamic padding)."""

    def compute_metrics(self, dataset=None, tokenizer=None):
        """Callable(EvalPrediction) -> dict for the HF Trainer, or None. `dataset` is the tokenised evaluation
        split the predictions will come from, in order (tasks whose metrics need more than the labels read it,
        and the tokenizer to read generated text)."""
        return None

    def preprocess_logits_for_metrics(self):
        return None

    def label_names(self) -> list[str] | None:
        return None

    def state(self) -> dict[str, Any]:
        """What must be stored with a trained model to evaluate it later (e.g. label names)."""
        return {}

    def restore(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Inverse of `state`."""

    def export_rows(self, rows) -> list[dict[str, Any]]:
        """Normalised rows back in the recipe's own columns, so `ftl eval --data` can read them again."""
        return rows.to_list()

    def write_predictions(self, trainer, dataset, raw_rows, directory: Path) -> Predictions | None:
        """Write the evaluation split's predictions for error analysis (called on every worker: predicting is
        collective; rank 0 writes). Returns the file written and any metrics found on the way."""
        return None

    # ---- using the trained model (ftl predict, ftl generate) ---------------------------------------
    def prediction_task(self, name: str | None) -> Task:
        """The task whose head predicts (a multitask run: the one named by --task)."""
        if name is not None:
            raise FtlError(
                f"--task: only multitask runs have several tasks to choose from; this is a {self.config.type} run "
                "(leave out --task)"
            )
        return self

    def plain_text_column(self) -> str | None:
        """The column a plain-text file's lines fill for prediction (None: the task reads several columns)."""
        return None

    def use_tokenizer(self, tokenizer) -> None:  # noqa: B027 - optional hook
        """A finished run's tokenizer, given before prompts are made (e.g. a chat run renders with it)."""

    def check_preview(self, rows, tokenizer, dirs: list[Path], *, colour: bool = False) -> list[str]:
        """ftl check: lines showing how the first training rows are encoded (e.g. which tokens are trained)."""
        return []

    def encode_for_prediction(self, raw: RawData, tokenizer) -> PredictionInputs:
        """The rows of a file (no labels needed) as features or prompts for the prediction loop; raises an
        FtlError naming the missing column when the file lacks one the task reads."""
        raise unsupported(self.config.type, "ftl predict")

    def predictions_to_rows(self, inputs: PredictionInputs, outputs: list, tokenizer) -> list[dict[str, Any]]:
        """Prediction fields for every input row (in order), from the loop's outputs: per feature a tuple of
        arrays (inputs.outputs), or per prompt the generated text. Skipped rows get the fields set to None."""
        raise unsupported(self.config.type, "ftl predict")

    def generation_prompt(self, prompt: str | dict[str, Any], *, raw: bool = False) -> str:
        """`ftl generate`: the model input for one prompt (a text, or the fields of the run's prompt template);
        raw: the text as it is, without template or prefix."""
        raise unsupported(self.config.type, "ftl generate")

    def generation_defaults(self) -> PromptSettings:
        """The run's generation settings and how many prompt tokens the model takes."""
        raise unsupported(self.config.type, "ftl generate")

    def dataset_stats(self, dataset, tokenizer) -> dict[str, Any]:
        """Token counts of a tokenised split (reported in the log and manifest)."""
        if "attention_mask" in dataset.column_names:
            lengths = [sum(mask) for mask in dataset["attention_mask"]]
        else:
            lengths = [len(ids) for ids in dataset["input_ids"]]
        return {"rows": len(dataset), "tokens": int(sum(lengths))}


class LabelledTask(Task):
    """A task whose head picks one of a fixed set of labels (per text or per word): the label names come from
    task.labels or the training data (`fit`), are stored with the model, and size the model's head."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._names: list[str] | None = list(config.labels) if config.labels else None

    def label_names(self) -> list[str] | None:
        return self._names

    def state(self) -> dict[str, Any]:
        return {"label_names": self._names}

    def restore(self, state: dict[str, Any]) -> None:
        self._names = state["label_names"]

    def config_overrides(self) -> dict[str, Any]:
        names = self._names or []
        return {
            "num_labels": len(names),
            "id2label": dict(enumerate(names)),
            "label2id": {name: i for i, name in enumerate(names)},
        }
