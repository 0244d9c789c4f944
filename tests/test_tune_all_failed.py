"""A search (and a cross-validation) whose every trial failed exits 2 with one line: how many failed, the
first one's error and where the logs are (one shared message, like ftl bench's "every cell failed")."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftl.launcher.errors import FtlError
from ftl.tune.cv import summarise
from ftl.tune.results import SearchResults, TrialOutcome, all_failed
from ftl.tune.search import raise_if_all_failed


def _trial(trial_id: str, status: str, error: str | None = None, **values) -> TrialOutcome:
    metrics = {"eval_loss": 0.5, "eval_accuracy": 0.75} if status != "error" else {}
    return TrialOutcome(trial_id, status, values, metrics, None, error)


def _results(*trials: TrialOutcome) -> SearchResults:
    return SearchResults("eval_loss", "min", list(trials), None)


def test_a_search_whose_every_trial_failed_is_refused_naming_the_first_error(tmp_path):
    results = _results(
        _trial("t_00000", "error", "FtlError: tune.cv: 300 folds but only 240 rows"),
        _trial("t_00001", "error", "other"),
    )
    with pytest.raises(FtlError) as caught:
        raise_if_all_failed(results, tmp_path / "trials")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("ftl tune: all 2 trials failed")
    assert "trial t_00000: FtlError: tune.cv: 300 folds but only 240 rows" in message
    assert f"see {tmp_path / 'trials'}/*/train.log" in message


def test_a_search_with_one_trial_that_did_not_fail_is_not_refused(tmp_path):
    raise_if_all_failed(_results(_trial("a", "error", "x"), _trial("b", "completed")), tmp_path)
    raise_if_all_failed(_results(_trial("a", "error", "x"), _trial("b", "stopped early")), tmp_path)
    raise_if_all_failed(_results(), tmp_path)  # nothing ran (e.g. a time budget): not "all failed"


def test_the_first_known_error_is_named_and_an_unknown_one_is_left_out():
    message = str(all_failed("tune", "trial", 1, [("trial a", None)], "out/trials/*/train.log"))
    assert message == "ftl tune: all 1 trial failed; see out/trials/*/train.log"
    message = str(all_failed("tune", "trial", 2, [("trial a", None), ("trial b", "boom")], "logs"))
    assert "(the first, trial b: boom)" in message
    failures = [("trial a", "ftl.launcher.errors.FtlError: data.fold: 240 row(s) cannot be split")]
    message = str(all_failed("tune", "trial", 1, failures, "logs"))
    assert "(the first, trial a: data.fold: 240 row(s) cannot be split)" in message


def test_cross_validation_shares_the_message(tmp_path):
    trials = [_trial(f"f{i}", "error", f"boom {i}", **{"data.fold": {"index": i}}) for i in (2, 0, 1)]
    with pytest.raises(FtlError) as caught:
        summarise(trials, tmp_path, "eval_loss", 3)
    message = str(caught.value)
    assert message.startswith("ftl cv: all 3 folds failed (the first, fold 0: boom 0)")
    assert f"see {tmp_path}/trials/fold-*/train.log" in message
    assert (tmp_path / "cv.json").exists()  # what failed is still written down


def test_cross_validation_with_one_completed_fold_is_not_refused(tmp_path):
    trials = [
        _trial("f0", "error", "boom", **{"data.fold": {"index": 0}}),
        _trial("f1", "completed", **{"data.fold": {"index": 1}}),
    ]
    summary = summarise(trials, Path(tmp_path), "eval_loss", 2)
    assert summary["completed"] == [1]
    assert summary["failed"] == [{"fold": 0, "error": "boom"}]


# ---- a trial's ftl error is not retried ------------------------------------------------------------------------


def _attempt(tmp_path, setup, values, body):
    from ftl.tune.trial_runs import not_retrying_ftl_errors

    ran = []
    with not_retrying_ftl_errors(tmp_path, setup, values):
        ran.append(True)
        body()
    return ran


def _refuse():
    raise FtlError("data.train: too few rows")


def test_a_retry_of_a_trial_that_failed_with_an_ftl_error_re_raises_it_without_training(tmp_path):
    from ftl.tune.trial_runs import TrialSetup

    setup = TrialSetup(base=None, trials_dir=str(tmp_path))
    with pytest.raises(FtlError, match="too few rows$"):
        _attempt(tmp_path, setup, {"train.lr": 0.1}, _refuse)
    trained = []
    with pytest.raises(FtlError, match=r"too few rows \(as in this trial's first attempt; not retried\)"):
        _attempt(tmp_path, setup, {"train.lr": 0.1}, lambda: trained.append(1))
    assert trained == []


def test_other_values_another_invocation_or_another_error_train_again(tmp_path):
    from ftl.tune.trial_runs import TrialSetup

    setup = TrialSetup(base=None, trials_dir=str(tmp_path))
    with pytest.raises(FtlError):
        _attempt(tmp_path, setup, {"train.lr": 0.1}, _refuse)
    assert _attempt(tmp_path, setup, {"train.lr": 0.2}, lambda: None) == [True]  # PBT changed the values
    with pytest.raises(FtlError):
        _attempt(tmp_path, setup, {"train.lr": 0.1}, _refuse)
    resumed = TrialSetup(base=None, trials_dir=str(tmp_path))  # `ftl tune --resume` after a fix
    assert resumed.session != setup.session
    assert _attempt(tmp_path, resumed, {"train.lr": 0.1}, lambda: None) == [True]

    def crash():
        raise RuntimeError("a lost node")  # not an ftl error: Ray Tune retries it from the checkpoint

    fresh = tmp_path / "other"
    fresh.mkdir()
    for _ in range(2):
        with pytest.raises(RuntimeError):
            _attempt(fresh, setup, {}, crash)
    assert not (fresh / "ftl-error.json").exists()


def test_a_trial_does_not_report_its_last_save_so_a_scheduler_cannot_stop_it_before_its_model_is_written(
    tmp_path,
):
    """ASHA deciding at the last evaluation stopped the trial before it wrote its model (listed 'stopped early');
    the trial's final report, after the model is written, carries the last evaluation instead."""
    from types import SimpleNamespace

    from ftl.launcher.distributed.storage_reporter import RayStorageReporter

    reported = []
    reporter = RayStorageReporter(lambda metrics, folder: reported.append(folder), final_report_follows=True)
    args = SimpleNamespace(output_dir=str(tmp_path))
    for step, stop in ((5, False), (10, False), (7, True)):  # (7, True): early stopping ends the run
        state = SimpleNamespace(global_step=step, max_steps=10, log_history=[], best_metric=None, epoch=1.0)
        reporter.on_save(args, state, SimpleNamespace(should_training_stop=stop))
    assert len(reported) == 1
    plain = RayStorageReporter(lambda metrics, folder: reported.append(folder))  # Ray Train: every save
    plain.on_save(
        args, SimpleNamespace(global_step=10, max_steps=10, log_history=[], best_metric=None, epoch=1.0), None
    )
    assert len(reported) == 2


def test_a_transient_ftl_error_is_retried_as_a_crash_is(tmp_path):
    from ftl.launcher.errors import TransientFtlError
    from ftl.tune.trial_runs import TrialSetup

    def full_disk():
        raise TransientFtlError("no space left on the device while writing checkpoint-4")

    setup = TrialSetup(base=None, trials_dir=str(tmp_path))
    for _ in range(2):
        with pytest.raises(TransientFtlError, match="no space left"):
            _attempt(tmp_path, setup, {}, full_disk)
    assert not (tmp_path / "ftl-error.json").exists()
