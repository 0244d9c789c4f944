"""Recipe sections for each task (the `task:` block), chosen by `task.type`.

Each task adds one class here (its settings) and one module in `launcher/tasks/` (its behaviour).
This module stays free of heavy imports so that `ftl check` starts fast.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from ftl.launcher.errors import did_you_mean
from ftl.launcher.recipe.data import DataSection
from ftl.launcher.recipe.section import Section


def _label_names(value: Any) -> Any:
    """Label names are text: YAML integers (labels: [0, 1]) are the names '0' and '1'; YAML's booleans (an
    unquoted yes, no, on, off) are refused, since the name written is lost."""
    if not isinstance(value, list):
        return value
    flag = next((v for v in value if isinstance(v, bool)), None)
    if flag is not None:
        raise ValueError(
            f"YAML reads unquoted yes/no/on/off/true/false as the boolean {str(flag).lower()}; quote label names "
            "such as 'yes' and 'no'"
        )
    return [str(v) if isinstance(v, int) else v for v in value]


LabelNames = Annotated[list[str] | None, BeforeValidator(_label_names)]


class SequenceClassificationTask(Section):
    """Sentence or sentence-pair classification (sentiment, NLI, topic, ...)."""

    type: Literal["sequence_classification"]
    metrics: ClassVar[dict[str, str]] = {"accuracy": "max", "f1_macro": "max", "loss": "min"}
    main_metric: ClassVar[str] = "accuracy"
    text_column: str = Field("text", description="Column holding the text to classify.")
    text_pair_column: str | None = Field(
        None, description="Second text column for pair tasks (NLI, paraphrase)."
    )
    label_column: str = Field("label", description="Column holding the label (a name or an integer id).")
    labels: LabelNames = Field(
        None,
        min_length=2,
        description="Label names in id order. Integer labels in the data index this list, unless the names are "
        "integers themselves (labels: ['5', '7']: a 5 in the data is the name '5'); string labels must be among "
        "these names. Derived from the training data (sorted; integers numerically) when absent.",
    )
    max_length: int = Field(128, gt=0, description="Token limit per example; longer inputs are truncated.")
    class_weights: Literal["balanced"] | list[float] | None = Field(
        None,
        description="Weight the loss per class against imbalance: 'balanced' (rows / (classes x rows of the "
        "class), from the training labels) or one weight per label, in label order.",
    )


class GenerationSettings(Section):
    """How text is generated for evaluation (ROUGE) and generations files."""

    max_new_tokens: int = Field(64, gt=0, description="Longest generated text, in tokens.")
    num_beams: int = Field(1, ge=1, description="Beam search width (1: greedy or sampling).")
    do_sample: bool = Field(False, description="Sample instead of picking the most likely token.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (with do_sample).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (with do_sample).")
    top_k: int = Field(
        50, ge=0, description="Sample among the k most likely tokens (with do_sample; 0: all)."
    )
    repetition_penalty: float = Field(1.0, gt=0, description="Penalty for repeating tokens (1: none).")
    no_repeat_ngram_size: int = Field(0, ge=0, description="Never repeat an n-gram of this size (0: off).")
    length_penalty: float = Field(1.0, description="Beam search: >1 favours longer, <1 shorter outputs.")

    def config_kwargs(self) -> dict:
        """Keyword arguments of transformers.GenerationConfig (sampling settings only when sampling)."""
        kwargs = self.model_dump()
        if not self.do_sample:
            for key in ("temperature", "top_p", "top_k"):
                kwargs.pop(key)
        if self.num_beams == 1:
            kwargs.pop("length_penalty")
        return kwargs


REFERENCE_FREE_LOSSES = ("simpo", "orpo")  # preference losses that take no reference model
ROUGE_METRICS = {"rouge1": "max", "rouge2": "max", "rougeL": "max", "rougeLsum": "max"}


class Seq2SeqTask(Section):
    """Encoder-decoder generation (summarisation, translation): ROUGE of generated text at each evaluation."""

    type: Literal["seq2seq"]
    metrics: ClassVar[dict[str, str]] = {**ROUGE_METRICS, "gen_length": "min", "loss": "min"}
    main_metric: ClassVar[str] = "rougeL"
    source_column: str = Field("document", description="Column holding the input text.")
    target_column: str = Field("summary", description="Column holding the text to learn to generate.")
    references_column: str | None = Field(
        None,
        description="Column holding a list of reference texts for evaluation (ROUGE takes the best over them); "
        "default: the target alone.",
    )
    source_prefix: str = Field("", description="Text put before every input (e.g. 'summarize: ' for T5).")
    max_source_length: int = Field(512, gt=0, description="Token limit of the input; longer inputs are cut.")
    max_target_length: int = Field(64, gt=0, description="Token limit of the training targets.")
    generation: GenerationSettings = Field(default_factory=GenerationSettings)


class CausalLMTask(Section):
    """Next-token language-model fine-tuning on raw text."""

    type: Literal["causal_lm"]
    metrics: ClassVar[dict[str, str]] = {"perplexity": "min", "loss": "min"}
    after_training: ClassVar[tuple[str, ...]] = tuple(ROUGE_METRICS)  # of task.generate_rows generations
    main_metric: ClassVar[str] = "perplexity"
    text_column: str = Field("text", description="Column holding the text.")
    max_length: int = Field(512, gt=1, description="Block size in tokens for training sequences.")
    packing: bool | Literal["examples", "stream"] | None = Field(
        None,
        description="examples (or true): several whole examples share a row of up to max_length tokens, each "
        "attending only to itself (position ids restart per example; the model's attention builds one causal "
        "block per example) and never predicted from the one before it. stream: concatenate all rows into one "
        "token stream cut into full blocks of max_length (examples attend to each other: for paragraphs of one "
        "text, e.g. a book). false: one example per row, padded per batch. Default: examples.",
    )
    add_eos: bool = Field(
        True,
        description="When packing, end each row with the end-of-sequence token (rows are documents); when false, "
        "stream packing joins rows with a blank line (rows are paragraphs of one text, e.g. a book) and "
        "examples packing ends them with nothing.",
    )
    prompt_template: str | None = Field(
        None,
        description="Instruction tuning: the prompt of each row, with {column} fields, e.g. 'Summarise:\n{document}"
        "\nTL;DR:'. The model learns response_column after it; the prompt's tokens are left out of the loss.",
    )
    response_column: str | None = Field(
        None, description="Column holding the text to learn after the prompt (needs prompt_template)."
    )
    references_column: str | None = Field(
        None, description="Column holding a list of references for ROUGE (default: the response alone)."
    )
    generate_rows: int = Field(
        100,
        ge=0,
        description="With a prompt template: after training, generate for this many validation rows and report "
        "ROUGE against the responses (0: skip).",
    )
    generation: GenerationSettings = Field(default_factory=GenerationSettings)

    @model_validator(mode="after")
    def _prompt_and_response_together(self) -> CausalLMTask:
        if (self.prompt_template is None) != (self.response_column is None):
            raise ValueError("prompt_template and response_column go together (instruction tuning)")
        if self.prompt_template is not None:
            if "{" not in self.prompt_template:
                raise ValueError("prompt_template needs at least one {column} field")
            if self.packing == "stream":
                raise ValueError(
                    "packing: stream cuts prompts from their responses: use packing: examples (or false) with a "
                    "prompt_template"
                )
        return self

    @property
    def instruction_tuning(self) -> bool:
        return self.response_column is not None

    @property
    def packing_mode(self) -> Literal["examples", "stream"] | None:
        """How rows are packed: 'examples' (true and the default), 'stream', or None (packing: false)."""
        if self.packing is None or self.packing is True:
            return "examples"
        return self.packing or None

    @property
    def packs(self) -> bool:
        """Whether rows are cut into full blocks of max_length (stream packing: every row the same length)."""
        return self.packing_mode == "stream"


CHAT_TEMPLATE_NAMES: tuple[str, ...] = ("chatml", "llama3", "zephyr")
CHAT_ROLES: tuple[str, ...] = ("system", "user", "assistant")
DEFAULT_ROLE_MAP: dict[str, str] = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}


class ChatTask(Section):
    """Supervised fine-tuning of a causal LM on multi-turn conversations, rendered with a chat template; the loss
    covers the assistant turns only (their content and end-of-turn token), never system/user text or the
    template's scaffolding. Perplexity is on assistant tokens."""

    type: Literal["chat"]
    metrics: ClassVar[dict[str, str]] = {"perplexity": "min", "loss": "min"}
    after_training: ClassVar[tuple[str, ...]] = tuple(ROUGE_METRICS)  # of task.generate_rows generations
    main_metric: ClassVar[str] = "perplexity"
    format: Literal["auto", "messages", "sharegpt", "prompt_completion"] = Field(
        "auto",
        description="How rows hold conversations: messages (OpenAI-style list of {role, content}), sharegpt "
        "(list of {from, value}, roles mapped by role_map), prompt_completion (a prompt and its completion, each "
        "a text or a list of messages); auto: the first of these whose column the data has.",
    )
    messages_column: str = Field("messages", description="Column holding the messages (format: messages).")
    conversations_column: str = Field(
        "conversations", description="Column holding the ShareGPT turns (format: sharegpt)."
    )
    prompt_column: str = Field("prompt", description="Column holding the prompt (format: prompt_completion).")
    completion_column: str = Field(
        "completion", description="Column holding the completion (format: prompt_completion)."
    )
    role_map: dict[str, Literal["system", "user", "assistant"]] = Field(
        default_factory=dict,
        description="ShareGPT speaker names -> roles, added to the defaults (human/user -> user, gpt/assistant "
        "-> assistant, system -> system).",
    )
    chat_template: str | None = Field(
        None,
        description="How conversations are rendered: null: the tokenizer's own template; a named built-in for "
        f"models without one ({', '.join(CHAT_TEMPLATE_NAMES)}); a path to a .jinja file (relative to the "
        "recipe); or a Jinja template itself. The run saves it with its tokenizer, so ftl generate/predict render "
        "prompts the same way.",
    )
    train_on: Literal["all_assistant_turns", "last_assistant_turn"] = Field(
        "all_assistant_turns", description="Which assistant turns are in the loss."
    )
    system_prompt: str | None = Field(
        None, description="A system message put first in every conversation that has none."
    )
    max_length: int = Field(
        1024,
        gt=1,
        description="Token limit per conversation; longer ones are cut at the end (a conversation left with no "
        "assistant token is dropped and counted).",
    )
    packing: bool = Field(
        False,
        description="true: several whole conversations share a row of up to max_length tokens, each attending "
        "only to itself (position ids restart per conversation; the model's attention builds one causal block per "
        "conversation, checked on the model before training); train.batch_size then counts packed rows. false: "
        "one conversation per row, padded per batch.",
    )
    generate_rows: int = Field(
        32,
        ge=0,
        description="After training, generate the last assistant reply of this many validation dialogues "
        "(generations.jsonl, ROUGE against the reply; 0: skip).",
    )
    generation: GenerationSettings = Field(default_factory=GenerationSettings)

    @property
    def packing_mode(self) -> Literal["examples"] | None:
        """'examples' when conversations are packed (the only packing that keeps them whole), else None."""
        return "examples" if self.packing else None

    @field_validator("chat_template")
    @classmethod
    def _template_kind(cls, value: str | None) -> str | None:
        return _template_setting(value)


def _template_setting(value: str | None) -> str | None:
    """task.chat_template: null, a named built-in, a .jinja file or a Jinja text."""
    if value is None or value in CHAT_TEMPLATE_NAMES or "{{" in value or "{%" in value:
        return value
    if value.endswith((".jinja", ".j2", ".jinja2")):
        return value
    raise ValueError(
        f"'{value}' is no named template ({', '.join(CHAT_TEMPLATE_NAMES)}){did_you_mean(value, CHAT_TEMPLATE_NAMES)}, "
        "no .jinja file and no Jinja template (which holds {{ or {%)"
    )


def _loss_alias(value: Any) -> Any:
    """dpo, as axolotl and torchtune name it, is DPO's sigmoid loss (TRL's loss_type name, which ftl keeps)."""
    return "sigmoid" if value == "dpo" else value


PreferenceLoss = Annotated[Literal["sigmoid", "robust", "ipo", "simpo", "orpo"], BeforeValidator(_loss_alias)]


class PreferenceTask(Section):
    """Preference tuning (DPO and relatives) of a causal LM on chosen/rejected pairs: each pair's prompt and its
    two replies are rendered with the chat template as the chat task renders them; the loss compares the
    sequence log-probabilities of the replies (under the policy and, except for SimPO and ORPO, a frozen reference)."""

    type: Literal["preference"]
    metrics: ClassVar[dict[str, str]] = {
        "reward_accuracy": "max",
        "reward_margin": "max",
        "logps_chosen": "max",
        "logps_rejected": "min",
        "loss": "min",
    }
    main_metric: ClassVar[str] = "reward_accuracy"
    prompt_column: str = Field(
        "prompt", description="Column holding the prompt: a text (one user message) or a list of messages."
    )
    chosen_column: str = Field(
        "chosen", description="Column holding the preferred reply: a text or a list of one assistant message."
    )
    rejected_column: str = Field(
        "rejected", description="Column holding the other reply: a text or a list of one assistant message."
    )
    role_map: dict[str, Literal["system", "user", "assistant"]] = Field(
        default_factory=dict,
        description="Speaker names -> roles, added to the defaults (as in task.type chat).",
    )
    chat_template: str | None = Field(
        None,
        description="How prompts and replies are rendered: null: the tokenizer's own template; a named built-in "
        f"({', '.join(CHAT_TEMPLATE_NAMES)}); a .jinja file (relative to the recipe); or a Jinja template.",
    )
    system_prompt: str | None = Field(
        None, description="A system message put first in every prompt that has none."
    )
    loss: PreferenceLoss = Field(
        "sigmoid",
        description="sigmoid (or dpo): DPO (Rafailov et al. 2023); robust: robust DPO (Chowdhury et al. 2024), "
        "DPO made unbiased for labels flipped with probability label_smoothing; ipo: IPO (Azar et al. 2023, on "
        "per-token mean log-ratios as TRL computes it); simpo: SimPO (Meng et al. 2024), reference-free, on "
        "per-token mean log-probs with the target margin simpo_gamma; orpo: ORPO (Hong et al. 2024), "
        "reference-free, the chosen reply's NLL plus beta times an odds-ratio loss (SFT and preference in one stage).",
    )
    beta: float = Field(
        0.1,
        ge=1e-4,  # below, every reward rounds to 0 and reward accuracy reads 0
        le=100,
        description="DPO's beta (how far from the reference the policy may move; 0.1 is usual); IPO's tau; "
        "SimPO's reward scale (about 2 in its paper); ORPO's lambda, the weight of its odds-ratio term (0.1 in "
        "its paper and TRL).",
    )
    simpo_gamma: float = Field(
        0.5, ge=0, le=100, description="SimPO's target reward margin gamma (loss: simpo)."
    )
    label_smoothing: float = Field(
        0.0,
        ge=0,
        le=0.45,  # the robust loss divides by 1 - 2 * label_smoothing
        description="loss robust: the assumed probability that a pair's preference label is flipped (noisy "
        "human labels; 0.1 in the robust DPO paper and TRL's docs); 0 is DPO.",
    )
    reference: Literal["auto", "adapters_disabled", "copy", "precomputed"] = Field(
        "auto",
        description="The frozen reference model: adapters_disabled (with lora: the base model with the adapters "
        "switched off, no second copy); copy (a frozen copy of the starting model in memory); precomputed (the "
        "starting model's log-probs of every pair, computed once before training: no copy held); auto: "
        "adapters_disabled with lora, else copy. SimPO and ORPO need none.",
    )
    max_length: int = Field(
        512,
        gt=1,
        description="Token limit of prompt + reply; longer pairs lose the end of the reply (a reply left with no "
        "token drops the pair, counted).",
    )
    max_prompt_length: int = Field(
        256,
        gt=0,
        description="Token limit of the prompt; longer prompts lose their beginning (the last turn stays).",
    )
    generation: GenerationSettings = Field(
        default_factory=GenerationSettings,
        description="How ftl generate / ftl predict write replies with the tuned model (as a chat model).",
    )

    @property
    def reference_free(self) -> bool:
        """The loss needs no reference model (SimPO, ORPO)."""
        return self.loss in REFERENCE_FREE_LOSSES

    @field_validator("chat_template")
    @classmethod
    def _template_kind(cls, value: str | None) -> str | None:
        return _template_setting(value)

    @model_validator(mode="after")
    def _smoothing_is_read(self) -> PreferenceTask:
        if self.label_smoothing and self.loss != "robust":
            raise ValueError(
                f"label_smoothing is read by loss robust only (loss {self.loss} would ignore it): set task.loss: "
                "robust, or remove task.label_smoothing"
            )
        return self

    @model_validator(mode="after")
    def _prompt_fits(self) -> PreferenceTask:
        if self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"max_prompt_length {self.max_prompt_length} must be less than max_length {self.max_length} "
                "(the reply needs room)"
            )
        return self


class TokenClassificationTask(Section):
    """Tagging every word (NER, POS): BIO tags per word, entity-level precision/recall/F1 with seqeval."""

    type: Literal["token_classification"]
    metrics: ClassVar[dict[str, str]] = {
        "f1": "max",
        "precision": "max",
        "recall": "max",
        "accuracy": "max",
        "loss": "min",
    }
    main_metric: ClassVar[str] = "f1"
    tokens_column: str = Field("tokens", description="Column holding each row's words (a list of strings).")
    tags_column: str = Field(
        "tags", description="Column holding one tag per word (names like B-person, or ids into labels)."
    )
    labels: LabelNames = Field(
        None,
        min_length=2,
        description="Tag names in id order (integer tags index this list). Derived from the training data when "
        "absent: O first, then the others sorted.",
    )
    label_all_subwords: bool = Field(
        False,
        description="Train on every subword of a word (continuation subwords of B-X get I-X); default: only the "
        "first subword carries the word's tag. Evaluation always scores one prediction per word.",
    )
    strict: bool = Field(
        False,
        description="Score entities in seqeval's strict IOB2 mode (an entity must start with B-); default: the "
        "conlleval convention, where a stray I-X also starts an entity.",
    )
    max_length: int = Field(
        256, gt=0, description="Token limit per sentence; words beyond it are not scored."
    )
    class_weights: Literal["balanced"] | list[float] | None = Field(
        None,
        description="Weight the loss per class against imbalance: 'balanced' (tags / (tag kinds x tags of the kind), from the training labels) or one weight per tag, in label order.",
    )


class QuestionAnsweringTask(Section):
    """Extractive QA (SQuAD): the answer is a span of the context; long contexts are cut into overlapping
    windows, and the best span over all windows within max_answer_length tokens wins."""

    type: Literal["question_answering"]
    metrics: ClassVar[dict[str, str]] = {"f1": "max", "exact_match": "max", "loss": "min"}
    main_metric: ClassVar[str] = "f1"
    question_column: str = Field("question", description="Column holding the question.")
    context_column: str = Field("context", description="Column holding the passage the answer is taken from.")
    answers_column: str = Field(
        "answers",
        description="Column holding the gold answers as {text: [...], answer_start: [...]} (character offsets "
        "into the context), as in SQuAD and the hub's squad datasets.",
    )
    id_column: str | None = Field("id", description="Column identifying each question (for error files).")
    max_length: int = Field(384, gt=32, description="Tokens per window (question + part of the context).")
    doc_stride: int = Field(128, gt=0, description="Tokens shared by consecutive windows of a long context.")
    max_answer_length: int = Field(30, gt=0, description="Longest answer considered, in tokens.")
    n_best: int = Field(20, gt=0, description="Start and end candidates considered per window.")
    allow_unanswerable: bool = Field(
        False,
        description="SQuAD 2.0: a question may have no answer in the context (predict one when the empty "
        "answer scores higher than every span).",
    )

    @model_validator(mode="after")
    def _stride_fits(self) -> QuestionAnsweringTask:
        if self.doc_stride >= self.max_length // 2:
            raise ValueError(
                f"doc_stride {self.doc_stride} must be less than half of max_length {self.max_length}"
            )
        return self


class MaskedLMTask(Section):
    """Masked-language-model training (BERT's objective), e.g. task-adaptive pretraining on the task's own text
    before fine-tuning a classifier on it (see stages:)."""

    type: Literal["masked_lm"]
    metrics: ClassVar[dict[str, str]] = {"perplexity": "min", "accuracy": "max", "loss": "min"}
    main_metric: ClassVar[str] = "perplexity"
    text_column: str = Field("text", description="Column holding the text.")
    max_length: int = Field(128, gt=2, description="Block size (packing) or token limit per row.")
    packing: bool = Field(
        True, description="Concatenate rows and cut them into full blocks of max_length tokens (no padding)."
    )
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="Share of tokens (or words) masked.")
    whole_word_masking: bool = Field(
        False, description="Mask every subword of a chosen word together (needs a fast tokenizer)."
    )


class SubTask(Section):
    """One task of a multi-task recipe: its head's task, its data, and the weight of its loss."""

    task: Annotated[SequenceClassificationTask | TokenClassificationTask, Field(discriminator="type")]
    data: DataSection
    loss_weight: float = Field(1.0, gt=0, description="Multiplies this task's loss.")


class MultiTaskTask(Section):
    """One shared encoder, one head per task; each training batch comes from one task, drawn by `sampling`.
    Metrics are reported per task (eval_<task>_<metric>), and `score` is the mean of the tasks' main metrics."""

    type: Literal["multitask"]
    main_metric: ClassVar[str] = "score"
    tasks: dict[str, SubTask] = Field(
        ..., min_length=2, description="Task name -> its task, data and weight."
    )
    sampling: Literal["proportional", "temperature", "uniform"] = Field(
        "temperature",
        description="How the task of each batch is drawn: proportional to its training rows, temperature "
        "(rows^(1/temperature): evens out large and small tasks), or uniform.",
    )
    temperature: float = Field(2.0, ge=1, description="For temperature sampling (1: proportional).")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout before each head.")

    @property
    def max_length(self) -> int:
        """The longest sequence any task's batch can hold."""
        return max(sub.task.max_length for sub in self.tasks.values())

    @property
    def metrics(self) -> dict[str, str]:
        """score, loss, and every task's metrics as <task>_<metric>."""
        found = {"score": "max", "loss": "min"}
        for name, sub in self.tasks.items():
            found.update({f"{name}_{metric}": mode for metric, mode in sub.task.metrics.items()})
        return found

    @field_validator("tasks")
    @classmethod
    def _names_are_identifiers(cls, tasks: dict[str, SubTask]) -> dict[str, SubTask]:
        for name in tasks:
            if not name.isidentifier():
                raise ValueError(f"task name '{name}' must be a word (letters, digits, _)")
        return tasks


TaskSection = Annotated[
    SequenceClassificationTask
    | TokenClassificationTask
    | QuestionAnsweringTask
    | Seq2SeqTask
    | CausalLMTask
    | ChatTask
    | PreferenceTask
    | MaskedLMTask
    | MultiTaskTask,
    Field(discriminator="type"),
]

TASK_TYPES: tuple[str, ...] = (
    "sequence_classification",
    "token_classification",
    "question_answering",
    "seq2seq",
    "causal_lm",
    "chat",
    "preference",
    "masked_lm",
    "multitask",
)

# The verbs that use a trained model, and the task types that serve each, in TASK_TYPES order. A task type
# serves a verb when its Task implements the verb's hook (tests/test_tasks.py holds the two together).
TRAINED_MODEL_VERBS: dict[str, tuple[str, ...]] = {
    "ftl predict": (
        "sequence_classification",
        "token_classification",
        "question_answering",
        "seq2seq",
        "causal_lm",
        "chat",
        "preference",
    ),
    "ftl generate": ("seq2seq", "causal_lm", "chat", "preference"),
}
