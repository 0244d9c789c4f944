"""The recipe: one pydantic model per section, strict everywhere (`extra="forbid"`).

Defaults live here and only here; every other part of ftl reads a validated `Recipe`.
Cross-section rules (settings that are valid alone but not together) live in `rules.py`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from ftl.launcher.recipe.data import DataSection
from ftl.launcher.recipe.log import LogSection
from ftl.launcher.recipe.scaling import DistributedSection, LoraSection, QuantizationSection
from ftl.launcher.recipe.search import TuneSection
from ftl.launcher.recipe.section import BATCH_MAX, EPOCHS_MAX, STEPS_MAX, WORKERS_MAX, Section, Seed
from ftl.launcher.recipe.stages import StageSection
from ftl.launcher.recipe.tasks import TaskSection

Beta = Annotated[float, Field(ge=0, lt=1)]


class ModelSection(Section):
    """Which pretrained model to start from, and where to find it."""

    name_or_path: str | None = Field(
        None,
        description="A hub id (org/name), a local directory, a .gguf file, or package:NAME[/sub/path] for a "
        "model shipped inside an installed Python package.",
    )
    local_copies: list[str] = Field(
        default_factory=list,
        description="Local copies of the same model (directories, .gguf files, package:NAME), tried in order "
        "before name_or_path. Lets one recipe run offline here and from the hub elsewhere.",
    )
    gguf_file: str | None = Field(None, description="GGUF file name inside the model directory or package.")
    config: dict[str, Any] | None = Field(
        None,
        description="Build a randomly initialised model from this config instead (model_type plus its "
        "settings, e.g. {model_type: bert, hidden_size: 64}). Needs a tokenizer.",
    )
    tokenizer: str | None = Field(
        None, description="Where to load the tokenizer from, when not the model's own."
    )
    config_overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Settings of the model's config to change before its weights load (each must be a setting "
        "the config has), e.g. {attention_probs_dropout_prob: 0.0}: without attention dropout BERT-style "
        "models train ~20 % faster on CPU, where dropout takes PyTorch's slow attention path.",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of a hub model.")
    trust_remote_code: bool = Field(
        False, description="Run model code shipped with a hub model. Off by default."
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] | None = Field(
        None,
        description="The attention kernel: sdpa (PyTorch's fused attention), eager (plain matmuls; needed to "
        "output attention weights), flash_attention_2 (needs the flash-attn package and a CUDA GPU). Default: "
        "the model's own choice (sdpa where it supports it). All three keep packed examples apart.",
    )

    @model_validator(mode="after")
    def _needs_a_source(self) -> ModelSection:
        if not self.name_or_path and not self.local_copies and not self.config:
            raise ValueError(
                "give name_or_path (a hub id, directory or package:NAME), local_copies, or config"
            )
        if self.config is not None and "model_type" not in self.config:
            raise ValueError("config needs a model_type (e.g. bert, gpt2, llama)")
        return self


class GradualUnfreezing(Section):
    """ULMFiT's gradual unfreezing: train the head first, then add one layer group from the top at a time."""

    every_steps: int | None = Field(
        None, gt=0, description="Unfreeze the next group every N optimizer steps."
    )
    every_epochs: float | None = Field(None, gt=0, description="Unfreeze the next group every N epochs.")

    @model_validator(mode="after")
    def _one_interval(self) -> GradualUnfreezing:
        if (self.every_steps is None) == (self.every_epochs is None):
            raise ValueError("give exactly one of every_steps or every_epochs")
        return self


class FreezeSection(Section):
    """Which parameters stay fixed. Everything not frozen here is trained."""

    embeddings: bool = Field(False, description="Freeze the input embeddings (and position/type embeddings).")
    bottom_layers: int = Field(0, ge=0, description="Freeze the first N transformer layers.")
    layers: list[int | str] = Field(
        default_factory=list,
        description="Freeze these layers: indexes (negative counts from the top) or ranges like '0-3'.",
    )
    patterns: list[str] = Field(
        default_factory=list, description="Freeze parameters whose name matches a regex."
    )
    head_only: bool = Field(False, description="Train only the task head; freeze the whole backbone.")
    gradual: GradualUnfreezing | None = Field(
        None,
        description="Start with the head (and the parts above the layers) trainable and unfreeze one more layer "
        "group from the top at each interval: the top layer, the next one, ..., finally the embeddings. Settings "
        "above still freeze their parameters for the whole run.",
    )

    @property
    def freezes_by_part(self) -> bool:
        """Any setting other than head_only is set."""
        return bool(self.embeddings or self.bottom_layers or self.layers or self.patterns)

    @field_validator("patterns")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        import re

        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"'{pattern}' is not a valid regular expression ({exc})") from None
        return patterns


class EarlyStopping(Section):
    patience: int = Field(3, ge=1, description="Stop after this many evaluations without improvement.")
    min_delta: float = Field(
        0.0, ge=0, description="Smallest change of the metric that counts as improvement."
    )


class TrainSection(Section):
    """The optimisation loop (one process; the distributed section scales it out)."""

    epochs: float = Field(
        1.0,
        gt=0,
        le=EPOCHS_MAX,
        description="Passes over the training data (ignored when max_steps is set).",
    )
    max_steps: int | None = Field(
        None, gt=0, le=STEPS_MAX, description="Stop after this many optimizer steps."
    )
    batch_size: int = Field(
        16, gt=0, le=BATCH_MAX, description="Examples per forward pass (micro batch) per device."
    )
    grad_accum_steps: int = Field(
        1, gt=0, le=BATCH_MAX, description="Micro batches accumulated per optimizer step."
    )
    lr: float = Field(5e-5, gt=0, description="Peak learning rate of AdamW.")
    weight_decay: float = Field(
        0.01, ge=0, description="AdamW decoupled weight decay (not on biases and norms)."
    )
    adam_betas: tuple[Beta, Beta] = Field((0.9, 0.999), description="AdamW beta1, beta2 (each in [0, 1)).")
    adam_eps: float = Field(1e-8, gt=0)
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="Learning-rate schedule after warmup."
    )
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Warmup as a share of the total steps.")
    warmup_steps: int | None = Field(
        None, ge=0, le=STEPS_MAX, description="Warmup in steps (overrides warmup_ratio)."
    )
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip gradients to this norm; null disables.")
    layer_lr_decay: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Discriminative learning rates: a layer group at depth d from the top trains at lr x decay^d "
        "(head 0, top layer 1, ..., embeddings deepest). E.g. 0.9.",
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="bf16 needs a CPU or an Ampere+ GPU; fp16 (with loss scaling) needs a CUDA GPU."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available, else CPU.")
    group_by_length: bool = Field(
        True, description="Batch examples of similar length together (less padding); classification only."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward to save memory."
    )
    checkpoint_every_steps: int | None = Field(
        None, gt=0, le=STEPS_MAX, description="Save a checkpoint every N steps; default: at every evaluation."
    )
    keep_checkpoints: int = Field(2, ge=1, description="Keep the newest K checkpoints (plus the best one).")
    early_stopping: EarlyStopping | None = Field(None, description="Stop when eval.metric stops improving.")
    nan_policy: Literal["stop", "skip"] = Field(
        "stop",
        description="A step whose loss is NaN or infinite is never applied to the weights. stop: the run stops "
        "with an error after max_bad_steps such steps in a row, keeping its last good checkpoint; skip: such steps "
        "are skipped (counted in metrics.json as skipped_steps) and training goes on.",
    )
    max_bad_steps: int | None = Field(
        None,
        ge=1,
        description="With nan_policy stop: consecutive non-finite steps before the run stops (default 1).",
    )
    log_every_steps: int = Field(
        10, gt=0, le=STEPS_MAX, description="Log loss and learning rate every N steps."
    )
    dataloader_workers: int = Field(0, ge=0, le=WORKERS_MAX, description="Worker processes per data loader.")


class EvalSection(Section):
    every_steps: int | None = Field(
        None, gt=0, le=STEPS_MAX, description="Evaluate every N steps; default once per epoch."
    )
    metric: str | None = Field(
        None,
        description="Metric for best-model selection and early stopping; default: the task's main metric.",
    )
    select_best: bool = Field(True, description="At the end, keep the weights of the best evaluation.")
    before_training: bool = Field(False, description="Also evaluate the untouched model before training.")
    batch_size: int = Field(64, gt=0, le=BATCH_MAX, description="Examples per evaluation batch.")
    save_predictions: bool = Field(
        True, description="Write predictions (misclassified examples) to the run dir."
    )


class Recipe(Section):
    """A complete fine-tuning recipe."""

    name: str = Field(
        ..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Run name (letters, digits, . _ -)."
    )
    description: str = ""
    extends: str | list[str] | None = Field(
        None, description="Base recipe file(s) this one is merged onto (resolved when loading)."
    )
    seed: Seed = Field(42, description="Seed for model initialisation, data order and dropout.")
    model: ModelSection
    task: TaskSection | None = Field(None, description="What to train for (required, unless stages give it).")
    data: DataSection | None = Field(
        None, description="Training and evaluation data (required, unless stages give it)."
    )
    freeze: FreezeSection = Field(default_factory=FreezeSection)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    log: LogSection = Field(default_factory=LogSection)
    distributed: DistributedSection = Field(default_factory=DistributedSection)
    quantization: QuantizationSection | None = Field(None, description="Load the base model in 4 or 8 bits.")
    lora: LoraSection | None = Field(None, description="Train low-rank adapters instead of the full weights.")
    tune: TuneSection | None = Field(
        None, description="Hyperparameter search and cross-validation (ftl tune, ftl cv); ftl run ignores it."
    )
    stages: list[StageSection] | None = Field(
        None,
        min_length=1,
        description="Run several stages in order, each from the previous stage's model (e.g. masked-LM "
        "pretraining on the task's text, then the classifier); each stage's sections merge onto the recipe's.",
    )

    @model_validator(mode="before")
    @classmethod
    def _empty_sections_take_their_defaults(cls, data: Any) -> Any:
        """`freeze:` with every key commented out is YAML's null: the section's defaults, as if it were absent."""
        if isinstance(data, dict):
            defaulted = ("freeze", "train", "eval", "log", "distributed")
            return {k: v for k, v in data.items() if not (k in defaulted and v is None)}
        return data

    @model_validator(mode="after")
    def _task_and_data_unless_staged(self) -> Recipe:
        if self.stages is None:
            if self.task is None:
                raise ValueError("missing required key 'task'")
            multitask = self.task.type == "multitask"
            if self.data is None and not multitask:
                raise ValueError("missing required key 'data'")
            if self.data is not None and multitask:
                raise ValueError(
                    "a multitask recipe gives data per task (task.tasks.<name>.data); remove data"
                )
        return self
