"""A Ray Tune searcher over the run directory's Optuna study, strict about what reaches it.

``StudySearch`` is a ``ray.tune.search.Searcher`` written over Optuna's
public ask-and-tell interface. It proposes what Ray's ``OptunaSearch`` with a
define-by-run space proposed (one ``study.ask()`` per Ray trial, the space
defined on that trial), so a seeded search proposes the same configs in the
same order. The config Ray carries to a trial is the trial config itself: the
plain, JSON-serialisable dict ``build_model`` takes (``mechanism``,
``input_shape``, ``num_classes``, ``backbone``, the mechanism's section,
``train`` and ``trial``, the study's trial number), with no wrapper and no
copy of Optuna's parameters (they stay in the study). But Ray's OptunaSearch tells an errored trial COMPLETE when it
reported anything before failing, leaves a NaN trial RUNNING and stores an
infinite one COMPLETE (PITFALLS.md). ``StudySearch`` makes a trial COMPLETE
only when its last result is the final one and every objective is finite;
otherwise it is FAIL with the reason as the trial's ``fail_reason`` user
attribute. Each told trial records its Ray trial id as ``ray_trial_id``.

It also stops proposing once the study holds ``recipe.trials`` COMPLETE trials
(earlier runs' included) and never has more in flight than are still needed,
so failed trials are replaced and a search ends with the COMPLETE trials it
asked for (Ray's ``num_samples`` bounds the attempts). With a scheduler
(tuning/schedulers.py) a trial it stopped is told PRUNED (its ``metrics.json``
says so, with the rung it reached and its objectives there) and counts as
started: ``recipe.trials`` counts COMPLETE and PRUNED trials, and a pruned
trial is not replaced. With ``recipe.time_budget`` it proposes nothing once the
budget of this run is spent (``out_of_time``; it counts from Ray's first request for a
trial, as Ray Tune's ``time_budget_s``); the running trials finish or are pruned.

The study holds locks and lives in the run directory: a pickled searcher
leaves it out and reopens it from the run directory, and ``save`` / ``restore``
have nothing to do (the study is the durable state).
"""
from __future__ import annotations

import functools
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from optuna.trial import TrialState
from ray.tune.search import Searcher

from dynsearch import interrupts
from dynsearch.errors import warn
from dynsearch.recipe import Recipe, is_finite_number
from dynsearch.run.files import metrics_file
from dynsearch.run.rundir import RunDir
from dynsearch.run.study import PRUNED_AT, count_done, make_sampler, open_study, pruned_metrics


def _shape(data_shape: Any) -> Any:
    """A data shape with ``input_shape`` and ``num_classes`` attributes (a ``problem.DataShape``, or its mapping)."""
    return SimpleNamespace(**data_shape) if isinstance(data_shape, dict) else data_shape


def define_trial(space_name: str, recipe: Recipe, data_shape: Any, trial) -> dict[str, Any]:
    """Define-by-run function: the space suggests its parameters on ``trial`` and returns the trial config."""
    from dynsearch.spaces import get_space

    return get_space(space_name).define(trial, recipe, _shape(data_shape))


class StudySearch(Searcher):
    """Proposes trials from the run directory's study and tells it each result, failing bad trials with a reason."""

    def __init__(self, recipe: Recipe, run_dir: RunDir | Path, data_shape: Any):
        super().__init__(metric=recipe.metric_names, mode=recipe.metric_modes)
        self._run_dir = RunDir.of(run_dir)
        self._recipe = recipe
        self._define = functools.partial(define_trial, recipe.space, recipe, _shape(data_shape))
        self._deadline: float | None = None  # with a time budget: set when Ray first asks for a trial
        self.out_of_time = False
        self._open()

    def _open(self) -> None:
        self._study = open_study(self._run_dir, self._recipe, make_sampler(self._recipe))
        self._asked: dict[str, Any] = {}  # Ray trial id -> its optuna.Trial
        self._told: set[str] = set()

    # The study and its storage hold locks and live in the run directory:
    # pickle the rest and reopen the study from the run directory.
    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("_study", "_asked", "_told")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._open()

    def save(self, checkpoint_path: str):
        pass  # the study in the run directory is the durable state; nothing else to save

    def restore(self, checkpoint_path: str):
        pass

    def suggest(self, trial_id: str) -> dict | str | None:
        if interrupts.requested():
            return None  # the search is stopping (SIGINT / SIGTERM): start nothing new
        complete = count_done(self._study, self._recipe)
        if complete >= self._recipe.trials:
            return Searcher.FINISHED
        if self._recipe.time_budget is not None and self._deadline is None:  # counts from Ray's start, as Ray's own
            self._deadline = time.monotonic() + self._recipe.time_budget
        if self._deadline is not None and time.monotonic() >= self._deadline:
            if not self.out_of_time:
                warn(f"time budget ({self._recipe.time_budget:g} s) spent: no trial is started from now on; "
                     f"the {self._in_flight()} running finish or are pruned")
            self.out_of_time = True
            return Searcher.FINISHED
        if complete + self._in_flight() >= self._recipe.trials:
            return None  # wait: the trials running may be enough
        if trial_id not in self._asked:
            self._asked[trial_id] = self._study.ask()
        return self._define(self._asked[trial_id])

    def _in_flight(self) -> int:
        """Trials proposed that have not ended yet."""
        return len(self._asked.keys() - self._told)

    def _stored_user_attrs(self, number: int) -> dict[str, Any]:
        running = self._study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return next((t.user_attrs for t in running if t.number == number), {})

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if trial_id in self._told or trial_id not in self._asked:
            return
        trial = self._asked[trial_id]
        values = [None if not result else result.get(m) for m in self.metric]
        reason = None
        if error or (result and result.get("failed")):
            metrics = self._run_dir.read_metrics(trial.number)
            reason = metrics.get("reason") or "the trial raised an exception (see Ray's error file)"
        elif not result or not result.get("final"):
            reason = "the trial ended without its final report"
        elif not all(is_finite_number(v) for v in values):
            reason = f"non-finite objective(s) {dict(zip(self.metric, values))}"
        trial.set_user_attr("ray_trial_id", trial_id)
        attrs = self._stored_user_attrs(trial.number)  # the scheduler's records (an asked Trial caches its own)
        if reason is not None and not error and PRUNED_AT in attrs:  # stopped by the scheduler
            self._run_dir.write_trial(trial.number, metrics_file(pruned_metrics(attrs)))
            self._study.tell(trial, None, state=TrialState.PRUNED)
        elif reason is None:
            self._study.tell(trial, [float(v) for v in values], state=TrialState.COMPLETE)
        else:
            trial.set_user_attr("fail_reason", reason)
            self._study.tell(trial, None, state=TrialState.FAIL)
        self._told.add(trial_id)
