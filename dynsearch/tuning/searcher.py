"""Ray Tune's OptunaSearch, made strict about what reaches the study.

Ray's OptunaSearch tells an errored trial COMPLETE when it reported anything
before failing, leaves a NaN trial RUNNING and stores an infinite one COMPLETE
(PITFALLS.md). ``StudySearch`` makes a trial COMPLETE only when its last
result is the final one and every objective is finite; otherwise it is FAIL
with the reason as the trial's ``fail_reason`` user attribute.

It also stops proposing once the study holds ``recipe.trials`` COMPLETE trials
(earlier runs' included) and never has more in flight than are still needed,
so failed trials are replaced and a search ends with the COMPLETE trials it
asked for (Ray's ``num_samples`` bounds the attempts).
"""
from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from dynsearch.recipe import Recipe, is_finite_number
from dynsearch.run.rundir import RunDir
from dynsearch.run.study import STUDY_NAME, make_sampler, open_study


def define_trial(space_name: str, recipe: Recipe, data_shape: dict[str, Any], trial) -> dict[str, Any]:
    """Define-by-run function: the whole trial config sits under the one key ``dynsearch``."""
    from dynsearch.spaces import get_space

    config = get_space(space_name).define(trial, recipe, SimpleNamespace(**data_shape))
    return {"dynsearch": config}


class StudySearch(OptunaSearch):
    """OptunaSearch over the run directory's study, failing bad trials with a reason."""

    def __init__(self, recipe: Recipe, run_dir: RunDir | Path, data_shape: dict[str, Any]):
        self._run_dir = RunDir.of(run_dir)
        self._recipe = recipe
        study = open_study(self._run_dir, recipe, make_sampler(recipe))
        super().__init__(
            space=functools.partial(define_trial, recipe.space, recipe, data_shape),
            metric=recipe.metric_names,
            mode=recipe.metric_modes,
            sampler=study.sampler,
            storage=study._storage,
            study_name=STUDY_NAME,
        )

    # The study and its storage hold locks and live in the run directory:
    # pickle the rest and reopen the study from the run directory.
    _UNPICKLED = ("_ot_study", "_storage", "_sampler", "_ot_trials")

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in self._UNPICKLED}

    def __setstate__(self, state):
        self.__dict__.update(state)
        study = open_study(self._run_dir, self._recipe, make_sampler(self._recipe))
        self._ot_study, self._storage, self._sampler = study, study._storage, study.sampler
        self._ot_trials, self._completed_trials = {}, set()

    def save(self, checkpoint_path: str):
        # The study in the run directory is the durable state; nothing else to save.
        pass

    def restore(self, checkpoint_path: str):
        pass

    def suggest(self, trial_id: str) -> dict | str | None:
        complete = len(self._ot_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        if complete >= self._recipe.trials:
            return Searcher.FINISHED
        in_flight = len(self._ot_trials.keys() - self._completed_trials)
        if complete + in_flight >= self._recipe.trials:
            return None  # wait: the trials running may be enough
        return super().suggest(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        values = [None if not result else result.get(m) for m in self.metric]
        reason = None
        if error or (result and result.get("failed")):
            metrics = self._run_dir.read_metrics(ot_trial.number)
            reason = metrics.get("reason") or "the trial raised an exception (see Ray's error file)"
        elif not result or not result.get("final"):
            reason = "the trial ended without its final report"
        elif not all(is_finite_number(v) for v in values):
            reason = f"non-finite objective(s) {dict(zip(self.metric, values))}"
        ot_trial.set_user_attr("ray_trial_id", trial_id)
        if reason is None:
            self._ot_study.tell(ot_trial, [float(v) for v in values], state=TrialState.COMPLETE)
        else:
            ot_trial.set_user_attr("fail_reason", reason)
            self._ot_study.tell(ot_trial, None, state=TrialState.FAIL)
        self._completed_trials.add(trial_id)
