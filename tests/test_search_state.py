"""What a search keeps and hands back, without Ray: checkpoints adopted from Tune, PBT's optimizer refresh,
best.yaml, the searcher's memory, resuming, the study's storage."""

from __future__ import annotations

import json

import pytest
import yaml

from ftl.launcher.cli import main
from ftl.launcher.recipe import load_recipe
from tests.conftest import edit_recipe, fails

SPACE = {"train.lr": {"loguniform": [1e-4, 1e-2]}, "train.batch_size": [8, 16]}


def _with_tune(path, **tune):
    return edit_recipe(path, tune={"space": SPACE, **tune})


# ---- checkpoints handed back by Tune ----------------------------------------------------------------


def _checkpoint(folder, step, best=None):
    folder.mkdir(parents=True)
    state = {"global_step": step, "best_model_checkpoint": best, "best_metric": 0.9 if best else None}
    (folder / "trainer_state.json").write_text(json.dumps(state))
    (folder / "model.safetensors").write_text(f"weights at {step}")


def test_adopted_checkpoint_replaces_newer_local_ones_and_forgets_a_foreign_best(tmp_path):
    from ftl.launcher.train.rundir import RunDir
    from ftl.tune.checkpoints import adopt_checkpoint

    run = RunDir(tmp_path / "trial")
    _checkpoint(run.checkpoints / "checkpoint-4", 4)
    _checkpoint(run.checkpoints / "checkpoint-8", 8)
    donor = tmp_path / "other" / "checkpoints" / "checkpoint-4"
    _checkpoint(donor, 4, best=str(donor))
    adopted = adopt_checkpoint(run, donor)
    assert adopted == run.checkpoints / "checkpoint-4"
    assert (adopted / "model.safetensors").read_text() == "weights at 4"
    assert not (run.checkpoints / "checkpoint-8").exists()
    assert json.loads((adopted / "trainer_state.json").read_text())["best_model_checkpoint"] is None
    assert run.last_checkpoint() == adopted
    assert adopt_checkpoint(run, adopted) == adopted  # its own checkpoint: nothing changes


def test_pbt_refresh_sets_the_new_lr_and_weight_decay_on_a_restored_optimizer():
    import torch
    from transformers import get_linear_schedule_with_warmup

    from ftl.tune.checkpoints import OptimizerSettingsRefresh

    weights = torch.nn.Parameter(torch.ones(2))
    bias = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW(
        [{"params": [weights], "weight_decay": 0.01}, {"params": [bias], "weight_decay": 0.0}], lr=1e-3
    )
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, 10)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    refresh = OptimizerSettingsRefresh(lr=4e-3, weight_decay=0.1)
    refresh.on_step_begin(None, None, None, optimizer=optimizer, lr_scheduler=scheduler)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([2e-3, 2e-3])  # 4e-3 x (1 - 5/10)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(4e-3 * 4 / 10)


def test_search_outputs_a_yaml_that_ftl_check_accepts(tmp_path, classification_recipe):
    """best.yaml is the full recipe: relative data paths are rewritten for its new directory."""
    from ftl.tune.results import TrialOutcome, write_best_recipe

    loaded = load_recipe(_with_tune(classification_recipe))
    best = TrialOutcome("abc", "completed", {"train.lr": 2e-3}, {"eval_accuracy": 0.75}, None)
    path = write_best_recipe(loaded, tmp_path / "elsewhere", best, "eval_accuracy", 4)
    data = yaml.safe_load(path.read_text())
    assert data["train"]["lr"] == 2e-3 and "tune" not in data
    assert (path.parent / data["data"]["train"]["path"]).resolve() == (
        classification_recipe.parent / "train.tsv"
    ).resolve()
    assert main(["check", "-q", str(path)]) == 0


def test_the_searcher_does_not_train_a_combination_twice():
    from optuna.distributions import CategoricalDistribution
    from optuna.samplers import RandomSampler

    from ftl.tune.resumable import ResumableOptunaSearch

    searcher = ResumableOptunaSearch(
        space={"train.lr": CategoricalDistribution([1e-3, 1e-2])},
        metric="m",
        mode="max",
        sampler=RandomSampler(seed=0),
    )
    first = searcher.suggest("a")
    searcher.on_trial_complete("a", {"m": 0.5, "training_iteration": 1})
    second = searcher.suggest("b")
    assert second != first  # the repeat was told the earlier result and the sampler asked again
    repeats = [t for t in searcher._ot_study.trials if "repeat_of" in t.user_attrs]
    assert all(t.value == 0.5 for t in repeats if t.state.name == "COMPLETE")
    searcher.on_trial_complete("b", {"m": 0.7, "training_iteration": 1})
    assert searcher.suggest("c") in (first, second)  # every combination tried: a repeat runs rather than none
    searcher.on_trial_result("c", {"m": 0.6, "training_iteration": 1})  # and it is a trial the study knows
    searcher.on_trial_complete("c", {"m": 0.6, "training_iteration": 1})
    assert len(searcher._ot_study.trials) <= 2 + 10 + 10


def test_a_resolved_recipe_with_tune_cv_loads_again(tmp_path, classification_recipe):
    """search.json/recipe.yaml hold every key expanded; the rules must accept what the loader wrote."""
    recipe = load_recipe(_with_tune(classification_recipe, cv={"folds": 3})).recipe
    assert recipe.tune.scheduler_type == "fifo" and recipe.tune.trial_resources.cpus == 1.0
    expanded = tmp_path / "expanded.yaml"
    expanded.write_text(yaml.safe_dump(recipe.model_dump(mode="json", exclude={"extends"})))
    assert load_recipe(expanded).recipe == recipe


def test_resuming_with_other_options_is_refused(tmp_path):
    from ftl.launcher.errors import FtlError
    from ftl.tune.tuner import SearchDir

    record = {"kind": "cv", "folds": {"folds": 5}, "recipe": {"name": "x"}}
    SearchDir.open(tmp_path / "cv", resume=False, record=record, verb="cross-validation")
    assert SearchDir.open(tmp_path / "cv", resume=True, record=record, verb="cross-validation")
    with pytest.raises(FtlError, match="--resume: folds differs from what"):
        SearchDir.open(tmp_path / "cv", resume=True, record={**record, "folds": {"folds": 10}}, verb="cv")
    with pytest.raises(FtlError, match="already holds files; pass --resume"):
        SearchDir.open(tmp_path / "cv", resume=False, record=record, verb="cv")


def test_an_unreachable_study_database_is_one_line_without_its_password(
    capsys, monkeypatch, tmp_path, classification_recipe
):
    monkeypatch.setenv("PGPASSWORD", "s3cret-password")  # the recipe's URL may not hold it (see the corpus)
    _with_tune(classification_recipe, storage="postgresql://ftl@127.0.0.1:9/studies")
    out = tmp_path / "s"
    message = fails(capsys, ["tune", str(classification_recipe), "--output", str(out)])
    assert (
        "tune.storage: cannot open the Optuna study storage postgresql://ftl@127.0.0.1:9/studies" in message
    )
    assert "s3cret" not in message and not out.exists()
