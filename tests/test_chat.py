"""task.type chat: conversations read from every format, assistant-only masks for several templates, truncation,
ftl check's masking preview, and a tiny run whose ftl generate/predict render with the run's template."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from ftl.launcher.errors import FtlError
from tests.conftest import TINY_LLAMA, jsonl_rows

IM_END = "<|im_end|>"
CONVERSATION = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris, of course."},
]
SYSTEM = {"role": "system", "content": "Answer briefly."}


LLAMA3_TOKENS = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def trained_text(tokenizer, messages, template: str | None = None, train_on="all_assistant_turns", limit=512):
    from ftl.launcher.tasks import chat_template

    if template == "llama3":  # as in a Llama-3 tokenizer, its markers are single special tokens
        tokenizer.add_special_tokens({"additional_special_tokens": LLAMA3_TOKENS})
    if template is not None:
        tokenizer.chat_template = chat_template.BUILT_IN.get(template, template)
    ids, labels = chat_template.encode(tokenizer, messages, train_on, limit)
    assert len(ids) == len(labels)
    trained = [t for t, label in zip(ids, labels, strict=True) if label != -100]
    assert all(label in (-100, t) for t, label in zip(ids, labels, strict=True))
    return tokenizer.decode(trained), tokenizer.decode(
        [t for t, lab in zip(ids, labels, strict=True) if lab == -100]
    )


# ---- masks ----------------------------------------------------------------------------------------------------
def test_chatml_masks_exactly_the_replies_and_their_end_of_turn(tokenizer):
    trained, untrained = trained_text(tokenizer, CONVERSATION)  # the tokenizer's own ChatML template
    assert trained == f"Hello!{IM_END}Paris, of course.{IM_END}"
    assert "Hi there" in untrained and "Capital of France?" in untrained
    assert "<|im_start|>assistant\n" in untrained  # scaffolding is never trained
    assert "You are a helpful AI assistant" in untrained  # the template's own default system prompt


def test_llama3_style_template_masks_the_replies_and_eot(tokenizer):
    trained, untrained = trained_text(tokenizer, CONVERSATION, "llama3")
    assert trained == "Hello!<|eot_id|>Paris, of course.<|eot_id|>"
    assert "<|start_header_id|>assistant<|end_header_id|>" in untrained


def test_a_system_prompt_is_never_trained(tokenizer):
    for template in ("chatml", "llama3", "zephyr"):
        trained, untrained = trained_text(tokenizer, [SYSTEM, *CONVERSATION], template)
        end = {"chatml": IM_END, "llama3": "<|eot_id|>", "zephyr": tokenizer.eos_token}[template]
        assert trained == f"Hello!{end}Paris, of course.{end}", template
        assert "Answer briefly." in untrained


def test_last_assistant_turn_only(tokenizer):
    trained, _ = trained_text(tokenizer, CONVERSATION, train_on="last_assistant_turn")
    assert trained == f"Paris, of course.{IM_END}"


def test_a_reply_of_weight_0_is_not_trained(tmp_path, tokenizer):
    """axolotl's per-message weight: 0 keeps a turn out of the loss; 1 (or no weight) trains it."""
    weighted = [{**m, "weight": 0} if m["content"] == "Hello!" else m for m in CONVERSATION]
    path = jsonl_rows(tmp_path / "w.jsonl", [{"messages": weighted}, {"messages": CONVERSATION}])
    read, _ = _read(path)
    trained, untrained = trained_text(tokenizer, read[0])
    assert trained == f"Paris, of course.{IM_END}" and "Hello!" in untrained
    assert trained_text(tokenizer, read[1])[0] == f"Hello!{IM_END}Paris, of course.{IM_END}"
    bad = [{**CONVERSATION[0], "weight": 0.5}, CONVERSATION[1]]
    with pytest.raises(
        FtlError, match=r"w2.jsonl:1: message 1 \(user\) in 'messages' has weight 0.5; a weight"
    ):
        _read(jsonl_rows(tmp_path / "w2.jsonl", [{"messages": bad}]))


def test_a_template_given_as_jinja_text(tokenizer):
    template = (
        "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n\n{% endfor %}"
        "{% if add_generation_prompt %}### assistant: {% endif %}"
    )
    trained, _ = trained_text(tokenizer, CONVERSATION, template)
    # no end-of-turn token in this template: the content alone; the token merging the template's space with the
    # reply's first word is trained (the model has to produce it)
    assert trained == " Hello! Paris, of course."


def test_a_template_file_is_found_beside_the_recipe_and_its_end_of_turn_stops_generation(tmp_path, tokenizer):
    from ftl.launcher.tasks import chat_template

    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "mine.jinja").write_text(chat_template.BUILT_IN["chatml"])
    found = chat_template.resolve_template("templates/mine.jinja", tokenizer, [tmp_path])
    assert found == chat_template.BUILT_IN["chatml"]
    assert chat_template.end_of_turn_ids(tokenizer, found)[0] == tokenizer.convert_tokens_to_ids(IM_END)
    with pytest.raises(FtlError, match="task.chat_template: other.jinja not found"):
        chat_template.resolve_template("other.jinja", tokenizer, [tmp_path])


def test_truncation_keeps_masks_aligned_and_drops_rows_without_a_reply(tokenizer):
    import datasets

    from ftl.launcher.recipe.tasks import ChatTask
    from ftl.launcher.tasks.chat import Chat

    long = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]
    task = Chat(ChatTask(type="chat", max_length=40))
    rows = datasets.Dataset.from_dict({"messages": [CONVERSATION, long]})
    encoded = task.tokenize(rows, tokenizer, "train")
    assert len(encoded) == 1 and task.dropped["train"] == 1
    assert len(encoded[0]["input_ids"]) == len(encoded[0]["labels"]) == encoded[0]["length"] <= 40
    with pytest.raises(FtlError, match="nothing is left to train on; raise task.max_length"):
        task.tokenize(datasets.Dataset.from_dict({"messages": [long]}), tokenizer, "validation")


def test_a_template_that_cannot_train_or_generate_is_named(tokenizer):
    from ftl.launcher.tasks import chat_template

    for name in chat_template.BUILT_IN:  # the built-ins, and the tokenizer's own ChatML, are sound
        chat_template.use_template(tokenizer, chat_template.BUILT_IN[name])
        assert chat_template.template_problems(tokenizer) == [], name
    mistral = (  # the reply follows [/INST] directly: no generation prompt is needed
        "{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}[INST] {{ m.content }} [/INST]"
        "{% else %}{{ m.content }}{{ eos_token }}{% endif %}{% endfor %}"
    )
    chat_template.use_template(tokenizer, mistral)
    assert chat_template.template_problems(tokenizer) == []
    chat_template.use_template(
        tokenizer, "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    )
    problems = chat_template.template_problems(tokenizer)
    assert len(problems) == 2
    assert "ignores add_generation_prompt" in problems[0] and "does not learn to stop" in problems[1]
    chat_template.use_template(
        tokenizer, "{% for m in messages %}{% if m.role == 'user' %}{{ m.content }}{% endif %}{% endfor %}"
    )
    with pytest.raises(FtlError, match="the template does not render the assistant's messages"):
        chat_template.template_problems(tokenizer)


# ---- formats --------------------------------------------------------------------------------------------------
def _read(path: Path, **settings):
    from ftl.launcher.data.sources import load_file
    from ftl.launcher.recipe.tasks import ChatTask
    from ftl.launcher.tasks.chat import Chat

    task = Chat(ChatTask(type="chat", **settings))
    return task.encode_raw(load_file(path, "data.train"))["messages"], task


def test_every_format_reads_to_the_same_messages(tmp_path):
    speakers = {"user": "human", "assistant": "gpt", "system": "system"}
    conversation = [SYSTEM, *CONVERSATION]
    files = {
        "messages": jsonl_rows(tmp_path / "m.jsonl", [{"messages": conversation}]),
        "sharegpt": jsonl_rows(
            tmp_path / "s.jsonl",
            [{"conversations": [{"from": speakers[m["role"]], "value": m["content"]} for m in conversation]}],
        ),
        "prompt_completion": jsonl_rows(
            tmp_path / "p.jsonl", [{"prompt": conversation[:-1], "completion": conversation[-1]["content"]}]
        ),
    }
    for fmt, path in files.items():
        for setting in ("auto", fmt):
            read, task = _read(path, format=setting)
            assert read == [conversation], (fmt, setting)
            assert task._format == fmt
    as_json_text = jsonl_rows(
        tmp_path / "j.jsonl", [{"messages": json.dumps(conversation)}]
    )  # json.dumps'd lists
    assert _read(as_json_text)[0] == [conversation]
    with (tmp_path / "c.csv").open("w", newline="") as handle:  # a list column exported to CSV
        csv.writer(handle).writerows([["messages"], [json.dumps(conversation)]])
    assert _read(tmp_path / "c.csv")[0] == [conversation]
    text_pair = jsonl_rows(tmp_path / "t.jsonl", [{"question": "Hi there", "answer": "Hello!"}])
    read, _ = _read(text_pair, prompt_column="question", completion_column="answer", system_prompt="Be kind.")
    assert read == [[{"role": "system", "content": "Be kind."}, *CONVERSATION[:2]]]


def test_role_map_adds_speaker_names(tmp_path):
    path = jsonl_rows(
        tmp_path / "s.jsonl",
        [{"conversations": [{"from": "person", "value": "Hi there"}, {"from": "bot", "value": "Hello!"}]}],
    )
    with pytest.raises(FtlError, match=r"s.jsonl:1: message 1 has the unknown role 'person'"):
        _read(path)
    read, _ = _read(path, role_map={"person": "user", "bot": "assistant"})
    assert read == [CONVERSATION[:2]]


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ([], "empty conversation"),
        ([{"role": "usr", "content": "x"}], "unknown role 'usr' (did you mean 'user'?)"),
        ([CONVERSATION[0], CONVERSATION[0]], "message 2 is 'user' after 'user'"),
        (
            [CONVERSATION[0], {"role": "assistant", "content": " "}],
            "message 2 (assistant) in 'messages' has empty content",
        ),
        ([CONVERSATION[0], CONVERSATION[1], SYSTEM], "message 3 is a system message"),
        (CONVERSATION[:3], "the last message is 'user'"),
    ],
)
def test_each_bad_row_is_one_line_naming_file_and_row(tmp_path, messages, expected):
    path = jsonl_rows(tmp_path / "bad.jsonl", [{"messages": CONVERSATION}, {"messages": messages}])
    with pytest.raises(FtlError) as caught:
        _read(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:2: ") and expected in message and "\n" not in message


def test_content_parts_read_as_their_text_and_other_content_is_named(tmp_path):
    parts = [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello!"}]},
    ]
    read, _ = _read(jsonl_rows(tmp_path / "p.jsonl", [{"messages": parts}]))
    assert read == [[{"role": "user", "content": "Hi\nthere"}, CONVERSATION[1]]]
    image = [{"role": "user", "content": [{"type": "image", "url": "x.png"}]}, CONVERSATION[1]]
    number = [{"role": "user", "content": 42}, {"role": "assistant", "content": 43}]
    for name, messages, expected in (
        ("i", image, "message 1 (user) in 'messages': content part 1 is 'image'; ftl tunes text"),
        ("n", number, "message 1 (user) in 'messages' has content of type int (42), not text"),
    ):
        path = jsonl_rows(tmp_path / f"{name}.jsonl", [{"messages": messages}])
        with pytest.raises(FtlError) as caught:
            _read(path)
        assert str(caught.value).startswith(f"{path}:1: ") and expected in str(caught.value)


def test_schema_refuses_an_unknown_template_name():
    from pydantic import ValidationError

    from ftl.launcher.recipe.tasks import ChatTask

    with pytest.raises(ValidationError, match="did you mean 'chatml'"):
        ChatTask(type="chat", chat_template="chatlm")
    assert ChatTask(type="chat", chat_template="templates/mine.jinja").chat_template == "templates/mine.jinja"


# ---- a tiny run -----------------------------------------------------------------------------------------------
def write_chat_recipe(folder: Path, tokenizer_dir: Path, **task) -> Path:
    rows = []
    for i in range(40):
        city = ["paris", "rome", "oslo", "lisbon"][i % 4]
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"Where is trip {i}?"},
                    {"role": "assistant", "content": f"Trip {i} goes to {city}."},
                    {"role": "user", "content": "And then?"},
                    {"role": "assistant", "content": f"Back from {city}."},
                ]
            }
        )
    jsonl_rows(folder / "chat.jsonl", rows)
    recipe = {
        "name": "tiny-chat",
        "seed": 5,
        "model": {"config": TINY_LLAMA, "tokenizer": str(tokenizer_dir)},
        "task": {
            "type": "chat",
            "max_length": 96,
            "generate_rows": 3,
            "generation": {"max_new_tokens": 6},
            **task,
        },
        "data": {"train": "chat.jsonl", "validation_split": {"fraction": 0.2, "method": "tail"}},
        "train": {"max_steps": 8, "batch_size": 8, "lr": 3e-3},
        "eval": {"every_steps": 4, "before_training": True},
        "log": {"progress": False, "tensorboard": False},
    }
    path = folder / "tiny-chat.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_check_shows_the_masking_of_the_first_conversation(tmp_path, chat_tokenizer_dir, capsys):
    from ftl.launcher.cli import main

    recipe = write_chat_recipe(tmp_path, chat_tokenizer_dir)  # the tokenizer's own ChatML template
    assert main(["check", str(recipe)]) == 0
    err = capsys.readouterr().err
    assert "first conversation:" in err and "trained (in [[...]])" in err
    assert "<|im_start|>assistant\n[[Trip 0 goes to paris.<|im_end|>]]\n<|im_start|>user" in err
    assert "[[Back from paris.<|im_end|>]]" in err
    assert "[[Where" not in err


def test_check_tokenises_as_the_run_does(tmp_path, chat_tokenizer_dir, capsys):
    from ftl.launcher.cli import main

    recipe = write_chat_recipe(tmp_path, chat_tokenizer_dir, max_length=8)  # no reply starts within 8 tokens
    assert main(["check", str(recipe)]) == 2
    assert "nothing is left to train on; raise task.max_length" in " ".join(capsys.readouterr().err.split())


def test_run_then_generate_and_predict_use_the_template(tmp_path, chat_tokenizer_dir, capsys):
    from transformers import AutoTokenizer

    from ftl.launcher.cli import main

    recipe = write_chat_recipe(
        tmp_path, chat_tokenizer_dir, chat_template="chatml", system_prompt="Be brief."
    )
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--output", str(out)]) == 0
    before = json.loads((out / "metrics_before.json").read_text())
    after = json.loads((out / "metrics.json").read_text())
    assert "eval_perplexity" in before and after["eval_perplexity"] < before["eval_perplexity"]
    generations = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(generations) == 3
    assert all(g["source"].endswith("<|im_start|>assistant\n") for g in generations)
    assert all(g["source"].startswith("<|im_start|>system\nBe brief.<|im_end|>") for g in generations)

    saved = AutoTokenizer.from_pretrained(str(out / "model"))
    from ftl.launcher.tasks.chat_template import BUILT_IN

    assert saved.chat_template == BUILT_IN["chatml"]  # the recipe's template travels with the model

    capsys.readouterr()
    assert main(["generate", str(out), "--prompt", "Where is trip 3?", "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert row["input"] == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhere is trip 3?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert IM_END not in row["generated"]

    from ftl.launcher.use.trained import open_trained

    trained = open_trained(out)
    settings = trained.task.generation_defaults()
    assert settings.stop_token_ids[0] == saved.convert_tokens_to_ids(IM_END)
    assert settings.add_special_tokens is False

    prompts = jsonl_rows(
        tmp_path / "ask.jsonl",
        [{"messages": [{"role": "user", "content": "Where is trip 1?"}]}, {"messages": CONVERSATION}],
    )
    assert main(["predict", str(out), "--data", str(prompts), "--output", str(tmp_path / "pred.jsonl")]) == 0
    predicted = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert len(predicted) == 2 and all(isinstance(p["generated"], str) for p in predicted)


@pytest.mark.slow
def test_a_chat_run_killed_mid_way_resumes_to_the_uninterrupted_result(tmp_path, chat_tokenizer_dir):
    """SIGKILL before step 5 of 8 (checkpoints every 2), then --resume: the weights and metrics of the run that was
    never interrupted, bitwise."""
    import torch

    from tests.reliability.conftest import child_env, weights
    from tests.reliability.faults import run_in_child

    recipe = write_chat_recipe(tmp_path, chat_tokenizer_dir, chat_template="chatml")
    data = yaml.safe_load(recipe.read_text())
    data["train"].update(checkpoint_every_steps=2, keep_checkpoints=2, log_every_steps=1, warmup_ratio=0.0)
    data["eval"].update(select_best=False)
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    env = child_env(tmp_path / "ftl-cache")
    whole, killed, log = tmp_path / "whole", tmp_path / "killed", tmp_path / "log"
    assert (
        run_in_child(["run", str(recipe), "--output", str(whole)], None, env=env, cwd=tmp_path, log=log) == 0
    )
    command = ["run", str(recipe), "--output", str(killed)]
    assert run_in_child(command, ("kill-step", 5), env=env, cwd=tmp_path, log=log) == -9, log.read_text()
    assert not (killed / "metrics.json").exists()
    assert (killed / "checkpoints" / "checkpoint-4").is_dir()
    assert run_in_child([*command, "--resume"], None, env=env, cwd=tmp_path, log=log) == 0, log.read_text()
    expected, resumed = weights(whole), weights(killed)
    assert resumed.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(resumed[name], tensor), name
    assert json.loads((killed / "metrics.json").read_text()) == json.loads(
        (whole / "metrics.json").read_text()
    )
    assert (killed / "model" / "chat_template.jinja").read_text() == (
        whole / "model" / "chat_template.jinja"
    ).read_text()


# ---- packing -------------------------------------------------------------------------------------------------
def _chat_task(**settings):
    from ftl.launcher.recipe.tasks import ChatTask
    from ftl.launcher.tasks.chat import Chat

    return Chat(ChatTask(type="chat", **settings))


def test_packed_conversations_have_the_losses_they_have_alone(tokenizer):
    """Whole conversations packed into rows: each one's loss on its assistant tokens equals its loss in a batch
    of its own (fp32, 1e-5), and the assistant masks survive packing unchanged."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from ftl.launcher.tasks.chat import MESSAGES
    from tests.test_packing import _loss_alone, _per_example_losses

    conversations = [
        [{"role": "user", "content": f"Question {i}: " + "why " * (i % 5)}]
        + [{"role": "assistant", "content": f"Answer {i} " + "because " * (i % 3)}]
        + ([{"role": "user", "content": "More?"}, {"role": "assistant", "content": "No."}] if i % 2 else [])
        for i in range(12)
    ]
    dataset = datasets.Dataset.from_dict({MESSAGES: conversations})
    alone_rows = _chat_task(max_length=96).tokenize(dataset, tokenizer, "train")
    packed_task = _chat_task(max_length=96, packing=True)
    packed = packed_task.tokenize(dataset, tokenizer, "train")
    assert len(packed) < len(alone_rows) and sum(packed["examples"]) == len(alone_rows)
    assert packed_task.dataset_stats(packed, tokenizer)["trained_tokens"] == sum(
        sum(label != -100 for label in row) for row in alone_rows["labels"]
    )

    settings = {k: v for k, v in TINY_LLAMA.items() if k != "model_type"}
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        LlamaConfig(**settings, vocab_size=len(tokenizer)), attn_implementation="sdpa", dtype=torch.float32
    ).eval()
    packed_task.configure_model(model, tokenizer)  # the probe passes for llama
    batch = packed_task.collator(tokenizer)(packed.to_list())
    assert "attention_mask" not in batch
    with torch.no_grad():
        per_example = _per_example_losses(model(**batch).logits, batch)
    alone = {}
    for row in alone_rows.to_list():
        total, count = _loss_alone(model, row)
        alone[tuple(row["input_ids"])] = total / count
    order = []
    for row in packed.to_list():
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["input_ids"])]
        order += [tuple(row["input_ids"][a:b]) for a, b in zip(starts, starts[1:], strict=False)]
    assert per_example == pytest.approx([alone[ids] for ids in order], abs=1e-5)


def test_chat_packing_is_off_by_default_and_refused_for_a_model_that_mixes_examples(
    tmp_path, chat_tokenizer_dir
):
    from ftl.launcher.recipe.loader import load_recipe
    from ftl.launcher.recipe.tasks import ChatTask

    assert ChatTask(type="chat").packing_mode is None
    assert ChatTask(type="chat", packing=True).packing_mode == "examples"
    recipe = write_chat_recipe(tmp_path, chat_tokenizer_dir, packing=True)
    data = yaml.safe_load(recipe.read_text())
    data["model"]["config"] = {"model_type": "bloom", "hidden_size": 32, "n_layer": 2, "n_head": 2}
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(FtlError, match="task.packing.*ignore restarting position ids"):
        load_recipe(recipe)


@pytest.mark.slow
def test_a_packed_chat_run_trains_and_reports_its_conversations(tmp_path, chat_tokenizer_dir):
    from ftl.launcher.cli import main

    recipe = write_chat_recipe(tmp_path, chat_tokenizer_dir, packing=True)
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--output", str(out)]) == 0
    before = json.loads((out / "metrics_before.json").read_text())
    after = json.loads((out / "metrics.json").read_text())
    assert after["eval_perplexity"] < before["eval_perplexity"]
    assert len((out / "generations.jsonl").read_text().splitlines()) == 3


@pytest.mark.slow
@pytest.mark.usefixtures("ray_after_module")
def test_two_zero2_workers_train_a_chat_model_as_one_worker_does(tmp_path, chat_tokenizer_dir):
    """Two Ray Train workers (gloo, DeepSpeed ZeRO-2, 4 conversations each) take the same steps as one worker with
    all 8: the loss is averaged over the assistant tokens of both workers' batches, not per worker. Tolerance:
    rel 1e-3 on every logged loss (gloo all-reduce order and fp32 summation differ)."""
    from ftl.launcher.cli import main

    recipe = write_chat_recipe(tmp_path, chat_tokenizer_dir, chat_template="chatml", generate_rows=0)
    data = yaml.safe_load(recipe.read_text())
    data["train"].update(max_steps=4, log_every_steps=1, warmup_ratio=0.0, group_by_length=False)
    data["eval"].update(every_steps=4, before_training=False)
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))

    def losses(run: Path) -> list[float]:
        history = json.loads((run / "log_history.json").read_text())["log_history"]
        return [entry["loss"] for entry in history if "loss" in entry]

    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["run", str(recipe), "train.batch_size=8", "--output", str(one)]) == 0
    settings = ["distributed.workers=2", "distributed.zero_stage=2", "train.batch_size=4"]
    assert main(["run", str(recipe), *settings, "--output", str(two)]) == 0
    assert len(losses(one)) == 4
    assert losses(two) == pytest.approx(losses(one), rel=1e-3)
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["workers"] == 2 and manifest["deepspeed"]["zero_optimization"]["stage"] == 2
    assert json.loads((two / "metrics.json").read_text())["eval_perplexity"] == pytest.approx(
        json.loads((one / "metrics.json").read_text())["eval_perplexity"], rel=1e-3
    )
