"""task.type preference: each loss against its formula on a hand-made batch, the reference never updated (LoRA:
adapters disabled; a frozen copy; precomputed), pairs read from TRL's conversational and plain-text formats,
bad rows as one line, and tiny runs through ftl's Run (metrics at every evaluation, ftl eval --data, resume)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from ftl.launcher.errors import FtlError
from tests.conftest import jsonl_rows, pair_rows, write_preference_recipe


# ---- the losses against their formulas ---------------------------------------------------------------------
def _batch():
    from ftl.launcher.train.preference_losses import PairLogps

    policy = PairLogps(
        torch.tensor([-10.0, -20.0, -7.0]),
        torch.tensor([-12.0, -18.0, -30.0]),
        torch.tensor([5, 10, 2]),
        torch.tensor([4, 6, 12]),
    )
    reference = PairLogps(
        torch.tensor([-11.0, -19.0, -9.0]),
        torch.tensor([-11.5, -19.0, -25.0]),
        policy.chosen_tokens,
        policy.rejected_tokens,
    )
    return policy, reference


def test_dpo_sigmoid_loss_is_the_formula():
    from ftl.launcher.train.preference_losses import preference_loss

    policy, ref = _batch()
    beta = 0.1
    losses, chosen, rejected = preference_loss("sigmoid", policy, ref, beta=beta)
    for i in range(3):
        pc, pr = float(policy.chosen[i]), float(policy.rejected[i])
        rc, rr = float(ref.chosen[i]), float(ref.rejected[i])
        z = beta * ((pc - rc) - (pr - rr))
        assert float(losses[i]) == pytest.approx(math.log(1 + math.exp(-z)), rel=1e-6)
        assert float(chosen[i]) == pytest.approx(beta * (pc - rc))
        assert float(rejected[i]) == pytest.approx(beta * (pr - rr))


def test_robust_dpo_loss_is_the_formula_and_dpo_without_flips():
    from ftl.launcher.train.preference_losses import preference_loss

    policy, ref = _batch()
    beta, eps = 0.1, 0.2
    losses, chosen, rejected = preference_loss("robust", policy, ref, beta=beta, label_smoothing=eps)
    for i in range(3):
        z = beta * (
            (float(policy.chosen[i]) - float(ref.chosen[i]))
            - (float(policy.rejected[i]) - float(ref.rejected[i]))
        )
        dpo, flipped = math.log(1 + math.exp(-z)), math.log(1 + math.exp(z))  # the loss of each label
        assert float(losses[i]) == pytest.approx(((1 - eps) * dpo - eps * flipped) / (1 - 2 * eps), rel=1e-6)
    dpo = preference_loss("sigmoid", policy, ref, beta=beta)
    assert torch.allclose(chosen, dpo[1]) and torch.allclose(rejected, dpo[2])  # DPO's implicit rewards
    assert torch.allclose(preference_loss("robust", policy, ref, beta=beta)[0], dpo[0])  # no flips: DPO


def test_label_smoothing_is_refused_where_no_loss_reads_it(tmp_path, chat_tokenizer_dir):
    from ftl.launcher.recipe.loader import load_recipe

    recipe = write_preference_recipe(tmp_path, chat_tokenizer_dir, loss="robust")
    assert load_recipe(recipe, ["task.label_smoothing=0.1"]).recipe.task.label_smoothing == 0.1
    with pytest.raises(
        FtlError, match=r"label_smoothing is read by loss robust only .*set task.loss: robust"
    ):
        load_recipe(recipe, ["task.loss=sigmoid", "task.label_smoothing=0.1"])
    with pytest.raises(FtlError, match=r"task.label_smoothing"):
        load_recipe(recipe, ["task.label_smoothing=0.5"])  # a flip rate of one half leaves no signal


def test_ipo_loss_is_the_formula_on_per_token_log_ratios():
    from ftl.launcher.train.preference_losses import preference_loss

    policy, ref = _batch()
    beta = 0.5
    losses, _, _ = preference_loss("ipo", policy, ref, beta=beta)
    for i in range(3):
        nc, nr = int(policy.chosen_tokens[i]), int(policy.rejected_tokens[i])
        h = (float(policy.chosen[i]) - float(ref.chosen[i])) / nc - (
            float(policy.rejected[i]) - float(ref.rejected[i])
        ) / nr
        assert float(losses[i]) == pytest.approx((h - 1 / (2 * beta)) ** 2, rel=1e-6)


def test_simpo_loss_is_the_formula_and_needs_no_reference():
    from ftl.launcher.train.preference_losses import preference_loss

    policy, _ = _batch()
    beta, gamma = 2.0, 0.5
    losses, chosen, rejected = preference_loss("simpo", policy, None, beta=beta, gamma=gamma)
    for i in range(3):
        c = float(policy.chosen[i]) / int(policy.chosen_tokens[i])
        r = float(policy.rejected[i]) / int(policy.rejected_tokens[i])
        z = beta * c - beta * r - gamma
        assert float(losses[i]) == pytest.approx(math.log(1 + math.exp(-z)), rel=1e-6)
        assert float(chosen[i]) == pytest.approx(beta * c)
        assert float(rejected[i]) == pytest.approx(beta * r)


def test_orpo_loss_is_the_nll_plus_the_odds_ratio_term_and_needs_no_reference(monkeypatch):
    from ftl.launcher.train.preference_losses import preference_loss

    policy, _ = _batch()
    lam = 0.25
    losses, chosen, rejected = preference_loss("orpo", policy, None, beta=lam)
    for i in range(3):
        c = float(policy.chosen[i]) / int(policy.chosen_tokens[i])  # mean log-prob of a reply token
        r = float(policy.rejected[i]) / int(policy.rejected_tokens[i])
        odds_c, odds_r = math.exp(c) / (1 - math.exp(c)), math.exp(r) / (1 - math.exp(r))  # p / (1 - p)
        l_or = -math.log(1 / (1 + 1 / (odds_c / odds_r)))  # -log sigmoid(log(odds_c / odds_r))
        assert float(losses[i]) == pytest.approx(-c + lam * l_or, rel=1e-6)
        assert float(chosen[i]) == pytest.approx(lam * c) and float(rejected[i]) == pytest.approx(lam * r)
    # TRL's ORPOTrainer computes the same odds-ratio term (its loss is the NLL minus the mean of these)
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    trl_like = type("T", (), {"beta": lam, "accelerator": type("A", (), {"device": "cpu"})()})()
    mean_c = policy.chosen / policy.chosen_tokens
    mean_r = policy.rejected / policy.rejected_tokens
    trl_terms = ORPOTrainer.odds_ratio_loss(trl_like, mean_c, mean_r)[0]
    assert torch.allclose(losses, -mean_c - trl_terms, rtol=1e-6)


def test_loss_dpo_is_read_as_the_sigmoid_loss_and_a_typo_is_named(tmp_path, chat_tokenizer_dir):
    from ftl.launcher.recipe.loader import load_recipe

    assert (
        load_recipe(write_preference_recipe(tmp_path, chat_tokenizer_dir, loss="dpo")).recipe.task.loss
        == "sigmoid"
    )
    with pytest.raises(
        FtlError, match=r"tiny-pref.yaml:\d+: task.loss: 'simpoo' is not allowed \(did you mean 'simpo'"
    ):
        load_recipe(write_preference_recipe(tmp_path, chat_tokenizer_dir, loss="simpoo"))


def test_sequence_logps_sum_only_the_reply_tokens():
    from ftl.launcher.train.preference_losses import sequence_logps

    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, -100], [-100, 1, 2, 6, 5]])
    sums, counts = sequence_logps(logits, labels)
    logp = logits.log_softmax(-1)
    expected0 = logp[0, 1, 3] + logp[0, 2, 4]  # position t predicts token t + 1
    expected1 = logp[1, 0, 1] + logp[1, 1, 2] + logp[1, 2, 6] + logp[1, 3, 5]
    assert counts.tolist() == [2, 4]
    assert float(sums[0]) == pytest.approx(float(expected0), rel=1e-5)
    assert float(sums[1]) == pytest.approx(float(expected1), rel=1e-5)


def test_the_reply_window_keeps_every_reply_token_and_gives_the_same_sums():
    from ftl.launcher.train.preference_losses import reply_window, sequence_logps

    torch.manual_seed(0)
    labels = torch.tensor(
        [
            [-100, -100, -100, -100, 3, 4, -100, -100],  # right-padded: the reply, then padding
            [-100, -100, -100, 1, 2, 6, 5, 2],
            [-100, -100, -100, -100, -100, -100, -100, -100],  # a row with nothing scored is not the earliest
        ]
    )
    keep = reply_window(labels)
    assert keep == 8 - 3 + 1  # from the position that predicts row 1's first reply token
    logits = torch.randn(3, 8, 11)
    full = sequence_logps(logits, labels)
    windowed = sequence_logps(logits[:, -keep:], labels[:, -keep:])
    assert torch.allclose(full[0], windowed[0]) and torch.equal(full[1], windowed[1])
    assert reply_window(torch.tensor([[5, 6, -100]])) == 0  # a reply from the first token: every position
    assert reply_window(torch.full((2, 4), -100)) == 0


def test_the_trainer_scores_replies_from_the_reply_window_as_from_every_logit(tmp_path, chat_tokenizer_dir):
    from ftl.launcher.train.preference_losses import reply_window, sequence_logps, split_pairs

    recipe = write_preference_recipe(tmp_path, chat_tokenizer_dir, top={"lora": {"r": 4}})
    trainer = _built(recipe, tmp_path / "run").trainer
    batch = _first_batch(trainer)
    assert 0 < reply_window(batch["labels"]) < batch["labels"].shape[1]  # the prompts are skipped
    assert trainer._takes_logits_to_keep(trainer.model)
    model = trainer.model.eval()
    with torch.no_grad():
        windowed = trainer._logps(model, batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        full = split_pairs(*sequence_logps(logits, batch["labels"]))
    assert torch.allclose(windowed.chosen, full.chosen, atol=1e-4)
    assert torch.allclose(windowed.rejected, full.rejected, atol=1e-4)
    assert torch.equal(windowed.chosen_tokens, full.chosen_tokens)


# ---- reading pairs -----------------------------------------------------------------------------------------
def _read(path: Path, **settings):
    from ftl.launcher.data.sources import load_file
    from ftl.launcher.recipe.tasks import PreferenceTask
    from ftl.launcher.tasks.preference import Preference

    task = Preference(PreferenceTask(type="preference", **settings))
    return task.encode_raw(load_file(path, "data.train")), task


def test_conversational_and_plain_pairs_read_and_encode_the_same(tmp_path, tokenizer):
    conversational, task = _read(jsonl_rows(tmp_path / "c.jsonl", pair_rows(3)))
    plain, _ = _read(jsonl_rows(tmp_path / "p.jsonl", pair_rows(3, plain=True)))
    assert conversational.to_list() == plain.to_list()
    with (tmp_path / "j.csv").open("w", newline="") as handle:  # list columns exported to CSV as JSON text
        rows = pair_rows(3)
        csv.writer(handle).writerows(
            [
                list(rows[0]),
                *([json.dumps(v) if isinstance(v, list) else v for v in r.values()] for r in rows),
            ]
        )
    assert _read(tmp_path / "j.csv")[0].to_list() == conversational.to_list()
    text_pair = [
        {**r, "prompt": "[INST] a prompt in brackets ]"} for r in pair_rows(1)
    ]  # text that only looks so
    assert _read(jsonl_rows(tmp_path / "t.jsonl", text_pair))[0][0]["prompt"][0]["content"].startswith(
        "[INST]"
    )
    assert conversational[1]["prompt"] == [{"role": "user", "content": "Where is trip 1?"}]
    assert conversational[1]["chosen"] == "Trip 1 goes to rome."
    encoded = task.tokenize(conversational, tokenizer, "train")
    ids, labels = encoded[1]["chosen_input_ids"], encoded[1]["chosen_labels"]
    scored = tokenizer.decode([t for t, label in zip(ids, labels, strict=True) if label != -100])
    assert (
        scored == "Trip 1 goes to rome.<|im_end|>"
    )  # the reply and its end of turn, as the chat task trains
    from ftl.launcher.tasks import chat_template

    messages = [*conversational[1]["prompt"], {"role": "assistant", "content": "Trip 1 goes to rome."}]
    assert (ids, labels) == chat_template.encode(tokenizer, messages, "last_assistant_turn", 512)
    rejected = tokenizer.decode(
        [
            t
            for t, lab in zip(encoded[1]["rejected_input_ids"], encoded[1]["rejected_labels"], strict=True)
            if lab != -100
        ]
    )
    assert rejected == "No idea, sorry.<|im_end|>"
    # both sides share the prompt's tokens
    start = labels.index(next(lab for lab in labels if lab != -100))
    assert encoded[1]["rejected_input_ids"][:start] == ids[:start]


def test_long_prompts_lose_their_beginning_and_long_replies_their_end(tmp_path, tokenizer):
    long_prompt = [
        {"role": "user", "content": "word " * 80},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "Last question?"},
    ]
    row = {
        "prompt": long_prompt,
        "chosen": [{"role": "assistant", "content": "yes " * 60}],
        "rejected": [{"role": "assistant", "content": "no"}],
    }
    dataset, task = _read(jsonl_rows(tmp_path / "l.jsonl", [row]), max_length=48, max_prompt_length=20)
    encoded = task.tokenize(dataset, tokenizer, "train")[0]
    for side in ("chosen", "rejected"):
        ids, labels = encoded[f"{side}_input_ids"], encoded[f"{side}_labels"]
        prompt = next(i for i, lab in enumerate(labels) if lab != -100)
        assert prompt == 20 and len(ids) <= 48
        assert "Last question?" in tokenizer.decode(ids[:prompt])
    assert len(encoded["chosen_input_ids"]) == 48


def test_pairs_whose_replies_differ_only_past_the_cut_are_dropped_and_counted(tmp_path, tokenizer, capsys):
    rows = [
        {"prompt": "Which trip?", "chosen": "word " * 30 + "paris", "rejected": "word " * 30 + "rome"},
        {"prompt": "Which trip?", "chosen": "paris", "rejected": "rome"},
    ]
    dataset, task = _read(jsonl_rows(tmp_path / "s.jsonl", rows), max_length=24, max_prompt_length=12)
    encoded = task.tokenize(dataset, tokenizer, "train")
    assert len(encoded) == 1 and "same_when_cut" not in encoded.column_names
    assert task.dropped["train"] == 1
    assert "train: dropped 1 of 2 pairs whose replies are the same once cut by task.max_length=24" in (
        capsys.readouterr().err.replace("\n", " ")
    )
    alone, task = _read(jsonl_rows(tmp_path / "a.jsonl", rows[:1]), max_length=24, max_prompt_length=12)
    with pytest.raises(FtlError, match="no pair keeps a reply token and a difference between its replies"):
        task.tokenize(alone, tokenizer, "train")


@pytest.mark.parametrize(
    "row, expected",
    [
        ({"prompt": "Hi?", "chosen": "Hello.", "rejected": "Hello."}, "are the same reply"),
        ({"prompt": "Hi?", "chosen": "Hello.", "rejected": "  "}, "'rejected' is empty"),
        ({"prompt": "Hi?", "chosen": None, "rejected": "Go away."}, "no 'chosen'"),
        ({"prompt": "Hi?", "chosen": [], "rejected": "Go away."}, "'chosen' is an empty list"),
        (
            {"prompt": "Hi?", "chosen": 42, "rejected": "Go away."},
            "'chosen' holds int (42); give a text, or a list",
        ),
        (
            {
                "prompt": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Yes?"}],
                "chosen": "Hello.",
                "rejected": "Go away.",
            },
            "ends with an assistant message; a prompt ends with the user turn",
        ),
        (
            {
                "prompt": "Hi?",
                "chosen": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}],
                "rejected": "Go away.",
            },
            "'chosen' holds 2 message(s) (user, assistant); a reply is one assistant message",
        ),
    ],
)
def test_each_bad_pair_is_one_line_naming_file_and_row(tmp_path, row, expected):
    good = pair_rows(2, plain=True)
    path = jsonl_rows(tmp_path / "bad.jsonl", [*good, row])
    with pytest.raises(FtlError) as caught:
        _read(path)
    message = str(caught.value)
    assert expected in message and "bad.jsonl:3" in message and "\n" not in message


def _dialogue(i: int) -> list[dict]:
    return [
        {"role": "user", "content": f"Plan trip {i}."},
        {"role": "assistant", "content": "Where to?"},
        {"role": "user", "content": f"Where is trip {i}?"},
    ]


def _transcript(messages: list[dict]) -> str:
    """The text format of the hub's Anthropic/hh-rlhf: "\n\nHuman: ...\n\nAssistant: ..." turns."""
    speakers = {"user": "Human", "assistant": "Assistant"}
    return "".join(f"\n\n{speakers[m['role']]}: {m['content']}" for m in messages)


def test_implicit_prompt_pairs_read_as_their_explicit_form(tmp_path):
    """TRL's implicit prompt: with no prompt column, chosen and rejected each hold the whole conversation (message
    lists, or Anthropic's "Human:/Assistant:" transcripts) and the turns they share are the prompt."""
    explicit, implicit, transcripts = [], [], []
    for i in range(3):
        chosen = {"role": "assistant", "content": f"Trip {i} goes to rome.\n\nEnjoy it."}
        rejected = {"role": "assistant", "content": "No idea, sorry."}
        explicit.append({"prompt": _dialogue(i), "chosen": [chosen], "rejected": [rejected]})
        implicit.append({"chosen": [*_dialogue(i), chosen], "rejected": [*_dialogue(i), rejected]})
        transcripts.append(
            {
                "chosen": _transcript([*_dialogue(i), chosen]),
                "rejected": _transcript([*_dialogue(i), rejected]),
            }
        )
    wanted, _ = _read(jsonl_rows(tmp_path / "e.jsonl", explicit))
    assert wanted[2]["prompt"] == _dialogue(2) and wanted[2]["chosen"] == "Trip 2 goes to rome.\n\nEnjoy it."
    for name, rows in (("i.jsonl", implicit), ("t.jsonl", transcripts)):
        found, _ = _read(jsonl_rows(tmp_path / name, rows))
        assert found.to_list() == wanted.to_list(), name


@pytest.mark.parametrize(
    "row, expected",
    [
        (
            {
                "chosen": [{"role": "assistant", "content": "Hello."}],
                "rejected": _transcript(_dialogue(1))[:-1],
            },
            "share no first turn",
        ),
        (
            {
                "chosen": [*_dialogue(1), {"role": "assistant", "content": "Rome."}],
                "rejected": [_dialogue(1)[0], {"role": "assistant", "content": "No."}],
            },
            "differ from turn 2 on, not only in their last reply",
        ),
        (
            {"chosen": "Rome.", "rejected": "No idea."},
            "'chosen' is a text, not a whole conversation",
        ),
        (
            {"chosen": _transcript(_dialogue(1)[:2]), "rejected": _transcript(_dialogue(1)[:2])},
            "are the same conversation",
        ),
        (
            {"chosen": _transcript(_dialogue(1)[:2]), "rejected": _transcript(_dialogue(1)[:1])},
            "differ from turn 2",
        ),
        (
            {"chosen": "\n\nHuman: Hi?\n\nAssistant:", "rejected": "\n\nHuman: Hi?\n\nAssistant: Go."},
            "message 2 (assistant) in 'chosen' has empty content",
        ),
        (
            {
                "chosen": _transcript(_dialogue(1)),
                "rejected": _transcript([*_dialogue(1)[:2], {"role": "user", "content": "Hm."}]),
            },
            "'chosen' ends with a user turn; each conversation ends with its assistant reply",
        ),
        (
            {
                "chosen": [*_dialogue(1)[:2], {"role": "assistant", "content": "A."}],
                "rejected": [*_dialogue(1)[:2], {"role": "assistant", "content": "B."}],
            },
            "share end with an assistant turn (turn 2); the two replies answer the same user turn",
        ),
        ({"chosen": " ", "rejected": _transcript(_dialogue(1)[:2])}, "'chosen' is empty"),
        (
            {
                "chosen": [{"role": "user", "content": "Hi? "}, {"role": "assistant", "content": "Hello."}],
                "rejected": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello. "}],
            },
            "are the same conversation",
        ),
    ],
)
def test_each_bad_implicit_pair_is_one_line_naming_file_and_row(tmp_path, row, expected):
    good = {
        "chosen": _transcript(_dialogue(0)[:2]),
        "rejected": _transcript([_dialogue(0)[0], {"role": "assistant", "content": "No."}]),
    }
    path = jsonl_rows(tmp_path / "bad.jsonl", [good, good, row])
    with pytest.raises(FtlError) as caught:
        _read(path)
    message = str(caught.value)
    assert expected in message and "bad.jsonl:3" in message and "\n" not in message


def test_a_prompt_in_an_unnamed_column_is_named_in_the_error(tmp_path):
    rows = [{"question": "Where is trip 1?", "chosen": "Rome.", "rejected": "No idea."}]
    with pytest.raises(
        FtlError, match="name the prompt's column in task.prompt_column \\(columns: question\\)"
    ):
        _read(jsonl_rows(tmp_path / "q.jsonl", rows))


def test_a_named_prompt_column_missing_is_refused_not_read_as_implicit(tmp_path):
    rows = [
        {
            "chosen": [*_dialogue(0), {"role": "assistant", "content": "Rome."}],
            "rejected": [*_dialogue(0), {"role": "assistant", "content": "No."}],
        }
    ]
    with pytest.raises(FtlError, match="no column 'question' \\(task.prompt_column\\)"):
        _read(jsonl_rows(tmp_path / "n.jsonl", rows), prompt_column="question")


# ---- tiny runs -----------------------------------------------------------------------------------------------
def _built(recipe: Path, out: Path):
    from ftl.launcher.recipe.loader import load_recipe
    from ftl.launcher.train.execute import build
    from ftl.launcher.train.rundir import RunDir

    loaded = load_recipe(recipe)
    return build(loaded, RunDir.open_for_run(out, resume=False), callbacks=[], train_only=False)


def _first_batch(trainer):
    rows = [trainer.eval_dataset[i] for i in range(4)]
    return trainer.data_collator(rows)


def _logps_now(trainer, batch, reference: bool):
    model = trainer.model
    model.eval()
    with torch.no_grad():
        policy = trainer._logps(model, batch)
        found = trainer._reference_logps(model, batch, policy) if reference else policy
    return torch.cat([found.chosen, found.rejected])


@pytest.mark.parametrize("reference", ["adapters_disabled", "copy", "precomputed"])
def test_the_reference_model_is_never_updated(tmp_path, chat_tokenizer_dir, reference):
    top = {"lora": {"r": 4}} if reference == "adapters_disabled" else {}
    recipe = write_preference_recipe(tmp_path, chat_tokenizer_dir, reference=reference, top=top)
    trainer = _built(recipe, tmp_path / "run").trainer
    assert trainer.reference_kind == reference
    batch = _first_batch(trainer)
    reference_before = _logps_now(trainer, batch, reference=True)
    policy_before = _logps_now(trainer, batch, reference=False)
    assert torch.allclose(reference_before, policy_before, atol=1e-5)  # the policy starts as the reference
    if reference == "adapters_disabled":
        frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" not in n}
    elif reference == "copy":
        frozen = {n: p.detach().clone() for n, p in trainer.reference_model.named_parameters()}
        assert not any(p.requires_grad for p in trainer.reference_model.parameters())
    trainer.train()
    policy_after = _logps_now(trainer, batch, reference=False)
    reference_after = _logps_now(trainer, batch, reference=True)
    assert not torch.allclose(policy_after, policy_before, atol=1e-3)  # training moved the policy ...
    assert torch.equal(reference_after, reference_before)  # ... and not the reference
    if reference == "adapters_disabled":
        now = dict(trainer.model.named_parameters())
        assert all(torch.equal(now[n], p) for n, p in frozen.items())
    elif reference == "copy":
        now = dict(trainer.reference_model.named_parameters())
        assert all(torch.equal(now[n], p) for n, p in frozen.items())


def test_a_lora_dpo_run_reports_preference_metrics_and_ftl_eval_scores_pairs(
    tmp_path, chat_tokenizer_dir, capsys
):
    from ftl.launcher.cli import main

    recipe = write_preference_recipe(
        tmp_path,
        chat_tokenizer_dir,
        top={"lora": {"r": 8}, "train": {"max_steps": 8, "batch_size": 8, "lr": 1e-2}},
    )
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--output", str(out)]) == 0
    before = json.loads((out / "metrics_before.json").read_text())
    after = json.loads((out / "metrics.json").read_text())
    for key in ("reward_accuracy", "reward_margin", "logps_chosen", "logps_rejected"):
        assert f"eval_{key}" in after and f"eval_{key}" in before
    assert before["eval_reward_margin"] == pytest.approx(0.0, abs=1e-5)  # policy == reference before training
    assert after["eval_reward_accuracy"] == 1.0 and after["eval_reward_margin"] > 0
    history = json.loads((out / "log_history.json").read_text())["log_history"]
    evaluations = [e["step"] for e in history if "eval_reward_accuracy" in e]
    assert evaluations == [4, 8]  # every evaluation carries the metrics
    trained = [e for e in history if "loss" in e and "rewards/accuracies" in e]
    assert trained and all(0 <= e["rewards/accuracies"] <= 1 for e in trained)

    capsys.readouterr()
    pairs = jsonl_rows(tmp_path / "more.jsonl", pair_rows(12, plain=True)[8:])
    assert main(["eval", str(out), "--data", str(pairs)]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["examples"] == 4
    assert scored["eval_reward_accuracy"] == 1.0 and scored["eval_reward_margin"] > 0
    # the run's own validation pairs, written as TRL's conversational format, score as in the run
    capsys.readouterr()
    assert main(["eval", str(out), "--data", str(out / "validation.jsonl")]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["eval_reward_margin"] == pytest.approx(after["eval_reward_margin"], rel=1e-4)
    # and as Anthropic's "Human: ... Assistant: ..." transcripts with no prompt column (TRL's implicit prompt),
    # read by the finished run's saved recipe
    validation = [json.loads(line) for line in (out / "validation.jsonl").read_text().splitlines()]
    transcripts = jsonl_rows(
        tmp_path / "transcripts.jsonl",
        [
            {side: _transcript(row["prompt"] + row[side]) for side in ("chosen", "rejected")}
            for row in validation
        ],
    )
    capsys.readouterr()
    assert main(["eval", str(out), "--data", str(transcripts)]) == 0
    implicit = json.loads(capsys.readouterr().out)
    assert implicit["eval_reward_margin"] == pytest.approx(after["eval_reward_margin"], rel=1e-4)

    # the tuned model is a chat model: ftl generate and ftl predict render prompts with the run's template
    capsys.readouterr()
    assert main(["generate", str(out), "--prompt", "Where is trip 3?", "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    # as in training: SmolLM2's template puts its default system message first
    assert row["input"].startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert row["input"].endswith("<|im_start|>user\nWhere is trip 3?<|im_end|>\n<|im_start|>assistant\n")
    assert "<|im_end|>" not in row["generated"]
    assert main(["predict", str(out), "--data", str(pairs), "--output", str(tmp_path / "pred.jsonl")]) == 0
    predicted = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert len(predicted) == 4 and all(isinstance(p["generated"], str) for p in predicted)
    # whole conversations (no prompt column): the turns both share are the prompt, as greedy as the prompts file
    for data, name in ((out / "validation.jsonl", "explicit"), (transcripts, "implicit")):
        assert (
            main(["predict", str(out), "--data", str(data), "--output", str(tmp_path / f"{name}.jsonl")]) == 0
        )
    explicit, implicit = (
        [json.loads(line)["generated"] for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        for name in ("explicit", "implicit")
    )
    assert len(explicit) == len(validation) and implicit == explicit


def test_plan_counts_the_reference_copy_and_nothing_for_the_others(tmp_path, chat_tokenizer_dir, capsys):
    from ftl.launcher.cli import main
    from ftl.launcher.model.load import ModelSpec, load_model, load_tokenizer
    from ftl.launcher.plan import plan_memory, shape_of
    from ftl.launcher.recipe import load_recipe
    from ftl.launcher.tasks.registry import task_for

    recipe = write_preference_recipe(tmp_path, chat_tokenizer_dir)

    def plan(*overrides):
        loaded = load_recipe(recipe, list(overrides))
        built = load_model(
            ModelSpec.of(loaded.recipe, loaded.search_dirs),
            task_for(loaded.recipe.task),
            load_tokenizer(loaded.recipe.model, loaded.search_dirs),
            meta=True,
        )
        shape = shape_of(built.model, loaded.recipe)
        return shape, plan_memory(shape, loaded.recipe)

    shape, copy = plan("task.reference=copy")
    assert copy.parts["reference model"] == shape.total * 4.0 == copy.parts["weights"]
    _, auto = plan()  # auto without lora: a copy
    assert auto.parts["reference model"] == copy.parts["reference model"]
    for overrides in (["task.reference=precomputed"], ["task.loss=simpo"], ["lora.r=4"]):
        _, other = plan(*overrides)
        assert "reference model" not in other.parts, overrides
    _, precomputed = plan("task.reference=precomputed")
    assert sum(copy.parts.values()) - sum(precomputed.parts.values()) == copy.parts["reference model"]
    assert main(["plan", str(recipe), "task.reference=copy"]) == 0
    assert "reference model" in capsys.readouterr().err


@pytest.mark.slow
def test_a_dpo_run_killed_mid_way_resumes_to_the_uninterrupted_result(tmp_path, chat_tokenizer_dir):
    """A LoRA DPO run SIGKILLed before step 5 of 8 (checkpoints every 2), then --resume: the adapter weights and
    metrics of the run that was never interrupted, bitwise."""
    from safetensors.torch import load_file

    from tests.reliability.conftest import child_env
    from tests.reliability.faults import run_in_child

    recipe = write_preference_recipe(
        tmp_path,
        chat_tokenizer_dir,
        top={
            "lora": {"r": 4},
            "train": {
                "max_steps": 8,
                "batch_size": 8,
                "lr": 1e-2,
                "checkpoint_every_steps": 2,
                "keep_checkpoints": 2,
                "log_every_steps": 1,
                "warmup_ratio": 0.0,
            },
        },
    )
    env = child_env(tmp_path / "ftl-cache")
    whole, killed, log = tmp_path / "whole", tmp_path / "killed", tmp_path / "log"
    assert (
        run_in_child(["run", str(recipe), "--output", str(whole)], None, env=env, cwd=tmp_path, log=log) == 0
    ), log.read_text()
    command = ["run", str(recipe), "--output", str(killed)]
    assert run_in_child(command, ("kill-step", 5), env=env, cwd=tmp_path, log=log) == -9, log.read_text()
    assert not (killed / "metrics.json").exists()
    assert (killed / "checkpoints" / "checkpoint-4").is_dir()
    assert run_in_child([*command, "--resume"], None, env=env, cwd=tmp_path, log=log) == 0, log.read_text()
    expected = load_file(str(whole / "model" / "adapter_model.safetensors"))
    resumed = load_file(str(killed / "model" / "adapter_model.safetensors"))
    assert resumed.keys() == expected.keys() and expected
    for name, tensor in expected.items():
        assert torch.equal(resumed[name], tensor), name
    metrics = json.loads((killed / "metrics.json").read_text())
    assert metrics == json.loads((whole / "metrics.json").read_text())
    assert metrics["eval_reward_accuracy"] == 1.0


@pytest.mark.slow
@pytest.mark.usefixtures("ray_after_module")
def test_two_zero2_workers_equal_one_worker(tmp_path, chat_tokenizer_dir):
    """DPO with a frozen copy as reference: 2 Ray Train workers under ZeRO-2 with 4 pairs each equal one worker
    with 8 pairs, in every logged loss (rel 1e-3, the tolerance of tests/test_distributed.py) and in the final
    preference metrics (rel 1e-3)."""
    from ftl.launcher.cli import main

    recipe = write_preference_recipe(
        tmp_path,
        chat_tokenizer_dir,
        reference="copy",
        top={
            "train": {"max_steps": 4, "batch_size": 8, "lr": 3e-3, "warmup_ratio": 0.0, "log_every_steps": 1},
            "eval": {"every_steps": 4, "select_best": False},
        },
    )

    def run(out: Path, *settings: str) -> tuple[list[float], dict]:
        assert main(["run", str(recipe), *settings, "--output", str(out)]) == 0
        history = json.loads((out / "log_history.json").read_text())["log_history"]
        return [e["loss"] for e in history if "loss" in e], json.loads((out / "metrics.json").read_text())

    one_losses, one = run(tmp_path / "one", "distributed.zero_stage=0")
    two_losses, two = run(
        tmp_path / "two", "distributed.zero_stage=2", "distributed.workers=2", "train.batch_size=4"
    )
    assert len(one_losses) == 4 and two_losses == pytest.approx(one_losses, rel=1e-3)
    for key in ("eval_loss", "eval_reward_margin", "eval_logps_chosen", "eval_logps_rejected"):
        assert two[key] == pytest.approx(one[key], rel=1e-3), key
    assert two["eval_reward_accuracy"] == one["eval_reward_accuracy"]
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["workers"] == 2 and manifest["deepspeed"]["zero_optimization"]["stage"] == 2


@pytest.mark.slow
@pytest.mark.usefixtures("ray_after_module")
@pytest.mark.parametrize(
    "reference, settings",
    [
        (
            "adapters_disabled",
            ["lora.r=4", "lora.dropout=0", "distributed.zero_stage=3"],
        ),  # the engine's forward, adapters off
        ("precomputed", ["distributed.zero_stage=2"]),  # each worker scores the pairs before training
    ],
)
def test_two_workers_hold_the_reference_as_one_worker_does(tmp_path, chat_tokenizer_dir, reference, settings):
    """LoRA DPO under ZeRO-3 (the reference is the partitioned model with its adapters disabled) and DPO with
    precomputed reference log-probs: 2 Ray Train workers with 4 pairs each equal one worker with 8 pairs, in
    every logged loss and the final preference metrics (rel 1e-3, as above)."""
    from ftl.launcher.cli import main

    recipe = write_preference_recipe(
        tmp_path,
        chat_tokenizer_dir,
        reference=reference,
        top={
            "train": {"max_steps": 4, "batch_size": 8, "lr": 3e-3, "warmup_ratio": 0.0, "log_every_steps": 1},
            "eval": {"every_steps": 4, "select_best": False},
        },
    )
    lora = [s for s in settings if s.startswith("lora.")]

    def run(out: Path, *overrides: str) -> tuple[list[float], dict]:
        assert main(["run", str(recipe), *overrides, "--output", str(out)]) == 0
        history = json.loads((out / "log_history.json").read_text())["log_history"]
        return [e["loss"] for e in history if "loss" in e], json.loads((out / "metrics.json").read_text())

    one_losses, one = run(tmp_path / "one", *lora, "distributed.zero_stage=0")
    two_losses, two = run(tmp_path / "two", *settings, "distributed.workers=2", "train.batch_size=4")
    assert len(one_losses) == 4 and two_losses == pytest.approx(one_losses, rel=1e-3)
    assert one_losses[-1] < one_losses[0]  # it learns: the reference is not the moving policy
    for key in ("eval_loss", "eval_reward_margin", "eval_logps_chosen", "eval_logps_rejected"):
        assert two[key] == pytest.approx(one[key], rel=1e-3), key
    assert two["eval_reward_accuracy"] == one["eval_reward_accuracy"]


def test_a_staged_chat_then_dpo_recipe_runs_as_one_and_its_reference_is_the_sft_model(
    tmp_path, chat_tokenizer_dir
):
    """stages: chat SFT on the chosen dialogues, then DPO with lora on its result: the DPO stage's reference
    (adapters disabled) is the SFT model, so its reward margin starts at 0 from the SFT weights."""
    from ftl.launcher.cli import main

    recipe = write_preference_recipe(tmp_path, chat_tokenizer_dir)
    chat = [{"messages": [*r["prompt"], *r["chosen"]]} for r in pair_rows(40)]
    jsonl_rows(tmp_path / "chat.jsonl", chat)
    data = yaml.safe_load(recipe.read_text())
    task = data.pop("task")
    data["train"].update(max_steps=4)
    data["eval"].update(every_steps=4)
    data["stages"] = [
        {
            "name": "sft",
            "task": {"type": "chat", "max_length": 64, "generate_rows": 0},
            "data": {"train": "chat.jsonl"},
        },
        {"name": "dpo", "task": task, "lora": {"r": 4}},
    ]
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "staged"
    assert main(["run", str(recipe), "--output", str(out)]) == 0
    sft = json.loads((out / "sft" / "metrics.json").read_text())
    dpo = json.loads((out / "dpo" / "metrics.json").read_text())
    assert "eval_perplexity" in sft
    assert dpo["before"]["eval_reward_margin"] == pytest.approx(0.0, abs=1e-5)
    assert dpo["eval_reward_accuracy"] == 1.0 and dpo["eval_reward_margin"] > 0
    assert json.loads((out / "dpo" / "model" / "ftl_base.json").read_text())["path"].startswith(
        str(out / "sft")
    )


@pytest.mark.parametrize("loss", ["ipo", "simpo", "orpo"])
def test_ipo_simpo_and_orpo_train_and_evaluate(tmp_path, chat_tokenizer_dir, loss):
    settings = {"simpo": {"beta": 2.0, "simpo_gamma": 0.5}, "orpo": {"beta": 0.1}}.get(loss, {"beta": 0.5})
    recipe = write_preference_recipe(tmp_path, chat_tokenizer_dir, loss=loss, **settings)
    trainer = _built(recipe, tmp_path / "run").trainer
    reference_free = loss in ("simpo", "orpo")
    assert trainer.reference_kind == (None if reference_free else "copy")
    assert (trainer.reference_model is None) == reference_free
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_loss"] < before["eval_loss"]
    assert after["eval_reward_accuracy"] == 1.0 and after["eval_reward_margin"] > before["eval_reward_margin"]


@pytest.mark.parametrize("reference", ["copy", "precomputed"])
def test_ftl_eval_of_a_run_without_lora_rebuilds_its_starting_model_as_reference(
    tmp_path, chat_tokenizer_dir, capsys, reference
):
    from ftl.launcher.cli import main

    recipe = write_preference_recipe(
        tmp_path,
        chat_tokenizer_dir,
        reference=reference,
        top={"eval": {"every_steps": 8, "select_best": False}},
    )
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--output", str(out)]) == 0
    after = json.loads((out / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(out), "--data", str(out / "validation.jsonl")]) == 0
    scored = json.loads(capsys.readouterr().out)
    for key in ("eval_reward_margin", "eval_logps_chosen", "eval_logps_rejected", "eval_loss"):
        assert scored[key] == pytest.approx(after[key], rel=1e-4), key


def test_check_shows_the_scored_tokens_of_the_first_pair(tmp_path, chat_tokenizer_dir, capsys):
    from ftl.launcher.cli import main

    recipe = write_preference_recipe(tmp_path, chat_tokenizer_dir, chat_template="chatml")
    assert main(["check", str(recipe)]) == 0
    err = capsys.readouterr().err
    assert "preference: loss sigmoid, beta 0.5, reference auto; first pair:" in err
    assert "<|im_start|>assistant\n[[Trip 0 goes to paris.<|im_end|>]]" in err
    assert "[[Where" not in err


@pytest.mark.slow
@pytest.mark.usefixtures("ray_after_module")
def test_a_search_over_beta_lr_and_the_loss_maximises_reward_accuracy(tmp_path, chat_tokenizer_dir):
    """`ftl tune` on a preference recipe: Optuna inside Ray Tune searches task.beta, train.lr and task.loss; the
    objective reward_accuracy is maximised (its own direction), each trial runs its own values, and best.yaml
    holds those of a trial with the highest reward accuracy."""
    import csv

    from ftl.launcher.cli import main

    recipe = write_preference_recipe(
        tmp_path,
        chat_tokenizer_dir,
        top={
            "eval": {"every_steps": 4, "before_training": False, "select_best": False},
            "tune": {
                "metric": "reward_accuracy",
                "samples": 4,
                "seed": 3,
                "space": {
                    "task.beta": {"loguniform": [0.05, 2.0]},
                    "train.lr": {"loguniform": [1e-4, 1e-2]},
                    "task.loss": {"choice": ["sigmoid", "ipo", "simpo"]},
                },
            },
        },
    )
    out = tmp_path / "search"
    assert main(["tune", str(recipe), "--output", str(out)]) == 0
    with (out / "trials.csv").open() as handle:
        trials = list(csv.DictReader(handle))
    assert len(trials) == 4 and {t["status"] for t in trials} == {"completed"}
    for trial in trials:
        task = yaml.safe_load((Path(trial["run_dir"]) / "recipe.resolved.yaml").read_text())["task"]
        assert task["loss"] == trial["task.loss"]
        assert task["beta"] == pytest.approx(float(trial["task.beta"]), rel=1e-2)
        metrics = json.loads((Path(trial["run_dir"]) / "metrics.json").read_text())
        assert float(trial["eval_reward_accuracy"]) == pytest.approx(metrics["eval_reward_accuracy"])
    import optuna

    search = json.loads((out / "search.json").read_text())
    assert (search["metric"], search["mode"]) == ("eval_reward_accuracy", "max")
    study = optuna.load_study(study_name="tiny-pref", storage=f"sqlite:///{out / 'study.db'}")
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert sorted(t.value for t in study.trials) == sorted(float(t["eval_reward_accuracy"]) for t in trials)
    best_accuracy = max(float(t["eval_reward_accuracy"]) for t in trials)
    best = yaml.safe_load((out / "best.yaml").read_text())
    winners = [t for t in trials if float(t["eval_reward_accuracy"]) == best_accuracy]
    assert any(
        best["task"]["loss"] == t["task.loss"]
        and best["task"]["beta"] == pytest.approx(float(t["task.beta"]), rel=1e-2)
        for t in winners
    )
    assert best.get("tune") is None


@pytest.mark.slow
@pytest.mark.usefixtures("ray_after_module")
def test_under_zero2_bf16_the_reference_copy_follows_the_policy_into_bf16(tmp_path, chat_tokenizer_dir):
    """DeepSpeed casts the policy to bf16 when training starts, after the reference copy was made: the copy must
    follow (as TRL prepares its reference with the engine's dtype), or at step 1, where policy = reference, the
    log-ratio is rounding noise instead of 0 and the loss is not log 2."""
    from ftl.launcher.cli import main

    recipe = write_preference_recipe(
        tmp_path,
        chat_tokenizer_dir,
        reference="copy",
        top={
            "train": {"max_steps": 2, "batch_size": 8, "lr": 3e-3, "log_every_steps": 1, "precision": "bf16"},
            "eval": {"every_steps": 2, "before_training": False, "select_best": False},
            "distributed": {"zero_stage": 2, "workers": 1},
        },
    )
    out = tmp_path / "bf16"
    assert main(["run", str(recipe), "--output", str(out)]) == 0
    history = json.loads((out / "log_history.json").read_text())["log_history"]
    first = next(entry for entry in history if "loss" in entry)
    assert first["rewards/margins"] == 0.0 and first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["deepspeed"]["bf16"]["enabled"] is True
