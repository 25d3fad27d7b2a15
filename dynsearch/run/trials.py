"""Every trial of a run, one row each: what ``dynsearch trials`` lists (reads the study and the trial folders).

Imports neither Ray nor torch nor any mechanism, so listing a run is quick.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dynsearch.catalog import describe_placement
from dynsearch.errors import UserError
from dynsearch.models.kinds import describe_backbone
from dynsearch.run.rundir import RunDir
from dynsearch.run.study import PRUNED_AT, RUNG_PREFIX, open_existing

STATES = ("COMPLETE", "FAIL", "RUNNING", "WAITING", "PRUNED")


def _seconds(trial) -> float | None:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return None
    return round((trial.datetime_complete - trial.datetime_start).total_seconds(), 1)


def trial_list(run_dir: str | Path, state: str | None = None) -> list[dict[str, Any]]:
    """The run's trials in order, each: ``trial``, ``state``, ``mechanism``, ``backbone`` (e.g. ``cnn 8-32 d1 k3``),
    ``placement`` (e.g. ``exits after stages 0,1``), ``objectives`` (name -> value: a COMPLETE trial's; a PRUNED trial's at the rung it was stopped),
    ``seconds`` (the trial function's, from its metrics; else from ask to tell, as the study recorded them), ``reason`` (a FAIL trial's, first line),
    ``retry_of`` (the trial whose parameters it retries), ``pruned_at_epoch`` (a PRUNED trial's rung) and ``config``. ``state`` keeps one state."""
    if state is not None and state.upper() not in STATES:
        raise UserError(f"--state {state}: not a trial state; use one of {', '.join(STATES)}")
    run = RunDir.existing(run_dir)
    study = open_existing(run)
    names = list(study.metric_names or run.read_recipe().metric_names)
    rows = []
    for trial in study.get_trials(deepcopy=False):
        if state is not None and trial.state.name != state.upper():
            continue
        config, metrics = run.read_config(trial.number) or {}, run.read_metrics(trial.number)
        reason = trial.user_attrs.get("fail_reason") or (metrics.get("reason") if trial.state.name == "FAIL" else None)
        seconds = metrics.get("train_seconds")
        pruned_at = trial.user_attrs.get(PRUNED_AT) if trial.state.name == "PRUNED" else None
        objectives = dict(zip(names, trial.values)) if trial.values is not None else {}
        if pruned_at is not None:  # what the scheduler measured at the rung it stopped the trial
            objectives = {name: value for name, value in trial.user_attrs.get(f"{RUNG_PREFIX}{pruned_at}", {}).items()
                          if name in names}
        rows.append({
            "trial": trial.number,
            "state": trial.state.name,
            "mechanism": config.get("mechanism"),
            "backbone": describe_backbone(config.get("backbone")),
            "placement": describe_placement(config),
            "objectives": objectives,
            "seconds": round(float(seconds), 1) if isinstance(seconds, (int, float)) else _seconds(trial),
            "reason": str(reason).splitlines()[0] if reason else None,
            "retry_of": trial.user_attrs.get("retry_of"),
            "pruned_at_epoch": pruned_at,
            "config": config,
        })
    return rows
