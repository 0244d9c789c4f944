"""Ray Tune's OptunaSearch with a persistent study that survives a killed driver, and no repeated trials.

Samplers can propose a combination that was already tried (likely in small, finite spaces). Training it again
would only repeat a deterministic run, so the repeat is told to the study with the earlier result (the pattern
Optuna recommends) and the sampler asks again, a bounded number of times.

The Optuna study (SQLite or PostgreSQL) is written at once, while Ray Tune saves its own state after each event;
a driver killed between the two leaves them slightly apart. On resume, results for trials the study already
holds as finished are ignored, and trials the study started but Tune never recorded are marked failed (else
they would stay 'running' in the study forever).
"""

from __future__ import annotations

import logging

from ray.tune.search.optuna import OptunaSearch

_RESAMPLES = 10


class ResumableOptunaSearch(OptunaSearch):
    """`search_id` tags this search's trials in the study, which other searches may share (PostgreSQL)."""

    def __init__(self, *args, search_id: str = "", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._search_id = search_id

    def suggest(self, trial_id: str):
        from optuna.trial import TrialState

        for attempt in range(_RESAMPLES):
            params = super().suggest(trial_id)
            ot_trial = self._ot_trials.get(trial_id)
            if not isinstance(params, dict) or ot_trial is None:
                return params
            ot_trial.set_user_attr("ftl_search", self._search_id)
            earlier = self._earlier_with(ot_trial)
            if earlier is None or attempt == _RESAMPLES - 1:
                return params  # new, or the sampler keeps proposing tried combinations: run it
            ot_trial.set_user_attr("repeat_of", earlier.number)
            try:
                if earlier.state == TrialState.COMPLETE:
                    self._ot_study.tell(ot_trial, earlier.value)
                else:  # still running: its value is not known yet
                    self._ot_study.tell(ot_trial, state=TrialState.FAIL)
            except RuntimeError:
                return params  # e.g. a sampler that stops the study when its grid is used up: run it
            del self._ot_trials[trial_id]
        return params

    def _earlier_with(self, ot_trial):
        from optuna.trial import TrialState

        states = (TrialState.COMPLETE, TrialState.RUNNING)
        for earlier in self._ot_study.get_trials(deepcopy=False, states=states):
            if earlier.number != ot_trial.number and earlier.params == ot_trial.params:
                if earlier.state == TrialState.COMPLETE and "repeat_of" in earlier.user_attrs:
                    continue
                return earlier
        return None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        from optuna.exceptions import UpdateFinishedTrialError

        try:
            super().on_trial_result(trial_id, result)
        except UpdateFinishedTrialError:
            return  # a trial the study already holds as finished (told just before a driver was killed)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        quiet = logging.getLogger("ray.tune.search.optuna.optuna_search")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # 'already finished' warnings of replayed completions
        try:
            super().on_trial_complete(trial_id, result, error)
        finally:
            quiet.setLevel(level)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self._fail_orphans()

    def _fail_orphans(self) -> None:
        from optuna.trial import TrialState

        study = self._ot_study
        known = {trial.number for trial in self._ot_trials.values()}
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            mine = frozen.user_attrs.get("ftl_search") == self._search_id  # never another search's trial
            if mine and frozen.number not in known:
                study._storage.set_trial_state_values(frozen._trial_id, TrialState.FAIL)
