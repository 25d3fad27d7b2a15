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
rung and left out of the ranking.

Durable state lives in the study, not in this object: each rung a trial
reaches is recorded as its user attribute ``rung_<epochs>`` (objective ->
value), and a stop as ``pruned_at_epoch``; the searcher (tuning/searcher.py)
then tells the study PRUNED. A resumed search rebuilds the rungs from the
COMPLETE and PRUNED trials of the journal, so it makes the same decisions.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from dynsearch.dominance import promotion_order
from dynsearch.recipe import Recipe, is_finite_number
from dynsearch.run.rundir import RunDir
from dynsearch.compat import set_trial_user_attr
from dynsearch.run.study import PRUNED_AT, RUNG_PREFIX, open_study


def rung_epochs(grace: int, factor: float, epochs: int) -> list[int]:
    """The rungs (epochs completed) below ``epochs``: grace, grace*factor, grace*factor^2, ... (rounded, distinct)."""
    rungs, k = [], 0
    while True:
        milestone = int(round(grace * factor ** k))
        if milestone >= epochs:
            return rungs
        if not rungs or milestone > rungs[-1]:
            rungs.append(milestone)
        k += 1


def rung_records(trial) -> dict[int, dict[str, float]]:
    """A study trial's rung records: epochs -> objective values measured there."""
    return {int(key[len(RUNG_PREFIX):]): value for key, value in trial.user_attrs.items()
            if key.startswith(RUNG_PREFIX) and isinstance(value, dict)}


class SuccessiveHalving(FIFOScheduler):
    """Asynchronous successive halving over a run directory's study (see the module docstring)."""

    def __init__(self, recipe: Recipe, run_dir: RunDir | Path):
        super().__init__()
        spec = recipe.scheduler
        assert spec is not None
        self._run_dir = RunDir.of(run_dir)
        self._recipe = recipe
        self.rungs = rung_epochs(spec.grace_epochs, spec.reduction_factor, recipe.epochs)
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
        """Record study trial ``number``'s ``values`` at the highest rung ``epochs`` reaches that it has not
        recorded; return (that rung or None, whether it goes on)."""
        rung = next((r for r in reversed(self.rungs) if r <= epochs and number not in self.recorded[r]), None)
        if rung is None:
            return None, True
        others = self.recorded[rung]
        used = [(name, mode) for name, mode in self.objectives
                if is_finite_number(values.get(name)) and all(is_finite_number(o.get(name)) for o in others.values())]
        keep = math.ceil((len(others) + 1) / self.factor)
        goes_on = True
        if used and others:
            rows = [*others.values(), values]
            gains = [tuple(float(row[name]) * (1.0 if mode == "max" else -1.0) for name, mode in used) for row in rows]
            goes_on = promotion_order(gains, self.tie_break).index(len(rows) - 1) < keep
        self.recorded[rung][number] = values
        return rung, goes_on

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get("final") or "epoch" not in result or "trial" not in trial.config:
            return TrialScheduler.CONTINUE
        number, epochs = int(trial.config["trial"]), int(result["epoch"]) + 1
        values = {name: float(result[name]) for name in self._recipe.metric_names if is_finite_number(result.get(name))}
        if not all(name in values for name, _ in self.objectives):
            return TrialScheduler.CONTINUE  # a non-finite objective: the trial fails on its own
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


def pruned_metrics(trial_user_attrs: dict[str, Any]) -> dict[str, Any]:
    """What a pruned trial's metrics.json holds: status, the rung it reached and its objectives there."""
    rung = int(trial_user_attrs[PRUNED_AT])
    return {"status": "PRUNED", "pruned_at_epoch": rung, **trial_user_attrs.get(f"{RUNG_PREFIX}{rung}", {})}
