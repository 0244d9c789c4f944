"""Ray Tune's OptunaSearch with a persistent study that survives a killed driver.

The Optuna study (SQLite or PostgreSQL) is written at once, while Ray Tune saves its own state after each event;
a driver killed between the two leaves them slightly apart. On resume, results for trials the study already
holds as finished are ignored, and trials the study started but Tune never recorded are marked failed (else
they would stay 'running' in the study forever).
"""

from __future__ import annotations

import logging

from ray.tune.search.optuna import OptunaSearch


class ResumableOptunaSearch(OptunaSearch):
    def on_trial_result(self, trial_id: str, result: dict) -> None:
        from optuna.exceptions import UpdateFinishedTrialError

        try:
            super().on_trial_result(trial_id, result)
        except UpdateFinishedTrialError:
            return  # replayed after a resume: the study already has this trial's outcome

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
            if frozen.number not in known:
                study._storage.set_trial_state_values(frozen._trial_id, TrialState.FAIL)
