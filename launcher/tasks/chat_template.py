"""Chat templates: which one renders a run's conversations, and which tokens of a rendered conversation are trained.

The template is the tokenizer's own (`tokenizer.chat_template`), or the recipe's: a named built-in for models
without one, a .jinja file or a Jinja text. It is set on the tokenizer, so the run saves it with its model and
`ftl generate`/`ftl predict` render prompts exactly as training did.

Masks work for any template, without `{% generation %}` tags (most templates lack them): for each assistant
message i, the conversation up to message i rendered with the generation prompt ends where the reply starts,
and the conversation up to and including message i ends after the reply's end-of-turn text. The characters in
between (trailing whitespace after the end-of-turn left out) are the trained span; a token is trained when it
overlaps a trained span (offsets of a fast tokenizer): a token that merges the reply's first word with the
template's space before it (" Hello" after "assistant:") is the one the model must produce, so it is trained. So the template's scaffolding ("<|im_start|>assistant\\n")
and every system and user token are never trained, and the reply's content and its end-of-turn token always are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ftl.launcher.errors import FtlError, first_line
from ftl.launcher.token_labels import IGNORE_INDEX

BUILT_IN: dict[str, str] = {
    "chatml": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
        "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
        "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    "zephyr": (
        "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    ),
}
# The text that ends a turn, per built-in (zephyr ends turns with the tokenizer's eos token).
END_OF_TURN: dict[str, str | None] = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "zephyr": None}
_KNOWN_ENDS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


@dataclass
class Span:
    """Characters [start, end) of a rendered conversation that are trained."""

    start: int
    end: int


def resolve_template(setting: str | None, tokenizer, dirs: list[Path]) -> str:
    """The Jinja text of task.chat_template (None: the tokenizer's own, which must exist)."""
    if setting is None:
        template = getattr(tokenizer, "chat_template", None)
        if isinstance(template, dict):  # several named templates: the default one
            template = template.get("default")
        if not template:
            raise FtlError(
                "task.chat_template: the tokenizer has no chat template; name one "
                f"({', '.join(BUILT_IN)}), or give a .jinja file or a Jinja text"
            )
        return template
    if setting in BUILT_IN:
        return BUILT_IN[setting]
    if "{{" in setting or "{%" in setting:
        return setting
    for folder in [Path(), *dirs]:
        path = (Path(folder) / setting).expanduser()
        if path.is_file():
            try:
                return path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise FtlError(f"task.chat_template: cannot read {path} ({first_line(exc)})") from None
    raise FtlError(
        f"task.chat_template: {setting} not found (looked in {', '.join(str(Path(d)) for d in dirs) or '.'})"
    )


_PROBE = [
    {"role": "user", "content": "ftl probe question"},
    {"role": "assistant", "content": "ftl probe reply"},
]


def template_problems(tokenizer) -> list[str]:
    """What the tokenizer's (just set) template does wrong for training and generation, found by rendering a
    probe conversation: a template that drops the assistant's content is refused (nothing could be trained);
    one without a generation prompt, or with nothing that ends an assistant turn, is returned as warnings."""
    reply = _PROBE[1]["content"]
    try:
        text = render(tokenizer, _PROBE)
        asked = render(tokenizer, _PROBE[:1])
        prompted = render(tokenizer, _PROBE[:1], generation_prompt=True)
    except FtlError:  # a template that wants other roles (a system turn first): the data's rows will tell
        return []
    if reply not in text:
        raise FtlError(
            "task.chat_template: the template does not render the assistant's messages (a probe reply is missing "
            "from the rendered conversation), so no reply could be trained; fix the template"
        )
    problems = []
    start = text.index(reply)
    header = text[len(asked) : start] if text.startswith(asked) else ""
    if header.strip() and prompted == asked:  # an assistant header that generation would go without
        problems.append(
            "task.chat_template: the template ignores add_generation_prompt, so generation (the run's generations, "
            f"ftl generate, ftl predict) does not start an assistant turn ({header.strip()!r})"
        )
    tail = text[start + len(reply) :]
    ends = [*_KNOWN_ENDS, *([tokenizer.eos_token] if tokenizer.eos_token else [])]
    if not any(end in tail for end in ends):
        problems.append(
            "task.chat_template: nothing ends an assistant turn (no end-of-turn marker or eos token after the "
            "reply), so the model does not learn to stop; see the built-in chatml"
        )
    return problems


def use_template(tokenizer, template: str) -> None:
    """Render with `template` from now on (and save it with the tokenizer)."""
    tokenizer.chat_template = template


def end_of_turn_ids(tokenizer, template: str) -> list[int]:
    """Token ids that end an assistant turn: the template's end-of-turn marker when it is one token, and eos."""
    ids: list[int] = []
    for marker in _KNOWN_ENDS:
        if marker in template:
            found = tokenizer.convert_tokens_to_ids(marker)
            if isinstance(found, int) and found != tokenizer.unk_token_id and found is not None:
                ids.append(found)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return list(dict.fromkeys(ids))


def render(tokenizer, messages: list[dict], *, generation_prompt: bool = False) -> str:
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
    except Exception as exc:  # jinja2's TemplateError, or raise_exception() inside the template
        raise FtlError(
            f"the chat template cannot render a conversation of roles {', '.join(m['role'] for m in messages)} "
            f"({first_line(exc)}); fix the template (task.chat_template) or the data"
        ) from None


def trained_spans(tokenizer, messages: list[dict], train_on: str) -> tuple[str, list[Span]]:
    """The rendered conversation and the character spans of the assistant replies in the loss."""
    text = render(tokenizer, messages)
    replies = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if train_on == "last_assistant_turn":
        replies = replies[-1:]
    replies = [i for i in replies if messages[i].get("weight") != 0]  # weight 0: out of the loss (axolotl's)
    spans = []
    for i in replies:
        before = render(tokenizer, messages[:i], generation_prompt=True)
        upto = render(tokenizer, messages[: i + 1])
        if not (text.startswith(upto) and upto.startswith(before)):
            start = text.find(messages[i]["content"].strip(), len(before) if text.startswith(before) else 0)
            if start < 0:
                raise FtlError(
                    "the chat template renders a conversation differently from its beginning (e.g. it rewrites "
                    "earlier turns), so the assistant replies cannot be found; use another task.chat_template"
                )
            spans.append(Span(start, _end_of_reply(text, start + len(messages[i]["content"].strip()))))
            continue
        spans.append(Span(len(before), len(upto.rstrip())))
    return text, spans


def _end_of_reply(text: str, end: int) -> int:
    """After a reply found by its content: include an end-of-turn marker right behind it."""
    for marker in _KNOWN_ENDS:
        if text.startswith(marker, end):
            return end + len(marker)
    return end


def encode(tokenizer, messages: list[dict], train_on: str, max_length: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one conversation, cut to max_length; labels are IGNORE_INDEX off the trained spans."""
    text, spans = trained_spans(tokenizer, messages, train_on)
    if not getattr(tokenizer, "is_fast", True):
        raise FtlError(
            "task.type chat needs a fast tokenizer (its token offsets place the masks); the model's tokenizer is a "
            "slow one: give model.tokenizer a folder with a tokenizer.json"
        )
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])[:max_length]
    offsets = list(encoded["offset_mapping"])[:max_length]
    labels = [
        token if end > start and any(start < s.end and end > s.start for s in spans) else IGNORE_INDEX
        for token, (start, end) in zip(ids, offsets, strict=True)
    ]
    return ids, labels


def show_masking(tokenizer, ids: list[int], labels: list[int], *, colour: bool) -> str:
    """The conversation with its trained tokens marked: [[...]] around trained runs, or green on a terminal."""
    parts: list[str] = []
    run: list[int] = []
    trained = False

    def flush() -> None:
        if not run:
            return
        piece = tokenizer.decode(run)
        if trained:
            piece = f"[green]{_escape(piece)}[/]" if colour else f"[[{piece}]]"
        elif colour:
            piece = _escape(piece)
        parts.append(piece)

    for token, label in zip(ids, labels, strict=True):
        is_trained = label != IGNORE_INDEX
        if is_trained != trained:
            flush()
            run, trained = [], is_trained
        run.append(token)
    flush()
    return "".join(parts)


def _escape(text: str) -> str:
    return text.replace("[", r"\[")
