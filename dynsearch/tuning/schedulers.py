"""Early stopping for multi-objective searches: asynchronous successive halving on Ray Tune.

Ray Tune's schedulers (ASHA, HyperBand, PBT) rank trials by one metric and
Optuna's pruners are single-objective; Syne Tune's MO-ASHA (Schmucker et al.
2021, arXiv 2106.12639) is deprecated. ``SuccessiveHalving`` is ASHA's
asynchronous rule (Li et al. 2020, as Ray's ``AsyncHyperBandScheduler``) with
MO-ASHA's ranking: when a trial reaches a rung (``grace_epochs``, then times
``reduction_factor``) it is ranked among every trial that reached that rung
before it, by non-dominated sorting over the recipe's objectives with an
epsilon-net (or crowding) tie-break (``dominance.promotion_order``); it goes on
when it ranks in the best ``ceil(n / reduction_factor)`` of those ``n``, and is
stopped otherwise. ``asha`` ranks by the first objective alone (for comparison).

The objectives at a rung are the ones measured each epoch on the validation
split (``training/lightning.py``): accuracy and the mean MACs of what ran, so
the cost of a dynamic model is re-measured as its exits learn. Objectives that
are measured only at a trial's end (``latency_ms``, ``params``) are NaN at a
rung and left out of the ranking. A trial that fails leaves the rungs (``forget``),
as a resumed search, rebuilt from COMPLETE and PRUNED trials, would see them.

Durable state lives in the study, not in this object: each rung a trial
reaches is recorded as its user attribute ``rung_<epochs>`` (objective ->
value), and a stop as ``pruned_at_epoch``; the searcher (tuning/searcher.py)
then tells the study PRUNED. A resumed search rebuilds the rungs from the
COMPLETE and PRUNED trials of the journal, so it makes the same decisions.
"""
from __future__ import annotations

import math
from pathlib import Path
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from dynsearch.dominance import promotion_order
from dynsearch.recipe import Recipe, is_finite_number
from dynsearch.run.rundir import RunDir
from dynsearch.compat import set_trial_user_attr
from dynsearch.run.study import PRUNED_AT, RUNG_PREFIX, open_study


def rung_records(trial) -> dict[int, dict[str, float]]:
    """A study trial's rung records: epochs -> objective values measured there."""
    return {int(key[len(RUNG_PREFIX):]): value for key, value in trial.user_attrs.items()
            if key.startswith(RUNG_PREFIX) and isinstance(value, dict)}


class SuccessiveHalving(FIFOScheduler):
    """Asynchronous successive halving over a run directory's study (see the module docstring)."""

    # A decision is taken at the rung's own report: Ray must not let the trial run on past it (as its ASHA).
    _supports_buffered_results = False

    def __init__(self, recipe: Recipe, run_dir: RunDir | Path):
        super().__init__()
        spec = recipe.scheduler
        assert spec is not None
        self._run_dir = RunDir.of(run_dir)
        self._recipe = recipe
        self.rungs = spec.rungs(recipe.epochs)
        self.factor = spec.reduction_factor
        self.tie_break = spec.tie_break
        objectives = list(zip(recipe.metric_names, recipe.metric_modes))
        self.objectives = objectives[:1] if spec.name == "asha" else objectives
        self._study = None
        self.recorded: dict[int, dict[int, dict[str, float]]] = {}  # rung -> study trial number -> objectives
        self.rebuild()

    # The study holds locks and lives in the run directory: reopen it after unpickling.
    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_study"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._study = None

    @property
    def study(self):
        if self._study is None:
            self._study = open_study(self._run_dir, self._recipe)
        return self._study

    def rebuild(self) -> None:
        """The rungs as the study recorded them: every COMPLETE or PRUNED trial's rung records."""
        from optuna.trial import TrialState

        self.recorded = {rung: {} for rung in self.rungs}
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            for rung, values in rung_records(trial).items():
                if rung in self.recorded:
                    self.recorded[rung][trial.number] = values

    def decide(self, number: int, epochs: int, values: dict[str, float]) -> tuple[int | None, bool]:
        """At a rung (``epochs`` completed is one, not recorded yet for study trial ``number``), record its
        ``values`` and return (the rung, whether it goes on); elsewhere (None, True).

        Ranked on the objectives finite for it and for every trial recorded at the rung (those measured
        each epoch); the newcomer comes first among equals (ASHA keeps a trial equal to its cutoff)."""
        if epochs not in self.recorded or number in self.recorded[epochs]:
            return None, True
        rung, others = epochs, self.recorded[epochs]
        used = [(name, mode) for name, mode in self.objectives
                if is_finite_number(values.get(name)) and all(is_finite_number(o.get(name)) for o in others.values())]
        keep = math.ceil((len(others) + 1) / self.factor)
        goes_on = True
        if used and others:
            rows = [values, *others.values()]  # index 0: the newcomer, first among equals
            gains = [tuple(float(row[name]) * (1.0 if mode == "max" else -1.0) for name, mode in used) for row in rows]
            goes_on = promotion_order(gains, self.tie_break).index(0) < keep
        self.recorded[rung][number] = values
        return rung, goes_on

    def forget(self, number: int) -> None:
        """A trial that failed leaves the rungs (as a resumed search, rebuilt from COMPLETE and PRUNED trials, sees them)."""
        for recorded in self.recorded.values():
            recorded.pop(number, None)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if isinstance(trial.config, dict) and "trial" in trial.config and (not result or result.get("failed")):
            self.forget(int(trial.config["trial"]))

    def on_trial_error(self, tune_controller, trial) -> None:
        if isinstance(trial.config, dict) and "trial" in trial.config:
            self.forget(int(trial.config["trial"]))

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get("final") or "epoch" not in result or "trial" not in trial.config:
            return TrialScheduler.CONTINUE
        number, epochs = int(trial.config["trial"]), int(result["epoch"]) + 1
        values = {name: float(result[name]) for name in self._recipe.metric_names if is_finite_number(result.get(name))}
        if not any(name in values for name, _ in self.objectives):
            return TrialScheduler.CONTINUE  # nothing to rank on at this report
        rung, goes_on = self.decide(number, epochs, values)
        if rung is None:
            return TrialScheduler.CONTINUE
        set_trial_user_attr(self.study, number, f"{RUNG_PREFIX}{rung}", values)
        if goes_on:
            return TrialScheduler.CONTINUE
        set_trial_user_attr(self.study, number, PRUNED_AT, rung)
        return TrialScheduler.STOP

    def debug_string(self) -> str:
        return f"{self._recipe.scheduler.name}: rungs at epochs {self.rungs}, reduction factor {self.factor:g}"


def make_scheduler(recipe: Recipe, run_dir: RunDir | Path) -> SuccessiveHalving | None:
    """The recipe's scheduler for Ray Tune, or None (every trial trains its full epochs)."""
    return SuccessiveHalving(recipe, run_dir) if recipe.scheduler is not None else None


