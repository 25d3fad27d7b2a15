"""A trial's operating points made sure of, and a trial set to one of them (for export).

Each COMPLETE trial's points come from its ``operating_points.json`` (the sweep
its Ray worker ran, measure/points.py); a run made before the sweep existed, or
whose weights changed, gets the sweep computed from its verified weights the
first time it is asked for (``trial_points``). Queries over a run's points (the
operating-point front, one point by number) are run/front.py's.
"""
from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from dynsearch.data import cached_splits
from dynsearch.deploy.trials import check_trial
from dynsearch.measure.device import pinned_threads
from dynsearch.measure.evaluate import measure_val, same_figures
from dynsearch.measure.shift import shifted_metrics
from dynsearch.measure.points import (
    FORMAT, TEST_KEYS, current_knobs, figures_on_test_split, operating_points, point_front_objectives, points_record,
)
from dynsearch.recipe import Recipe
from dynsearch.run.front import SHIFT_KEYS, point_of
from dynsearch.run.rundir import RunDir, write_json
from dynsearch.run.supernet import is_oneshot_trial, supernet_sha256


def trial_points(run_dir: str | Path, number: int) -> dict[str, Any]:
    """A COMPLETE trial's operating points: its operating_points.json, computed and written
    first when missing or stale (a run made before the sweep existed, or other weights)."""
    run = RunDir.of(run_dir)
    path = run.points_path(number)
    stored = _read_points(path)
    if stored is not None and stored.get("weights_sha256") == _weights_sha256(run, number):
        return stored
    recipe = run.read_recipe()
    checked = check_trial(run, number, recipe)  # weights verified against the trial's checksum
    measured_with = checked.measured["measured_with"]
    started = time.perf_counter()
    trained = checked.metrics if all(k in checked.metrics for k in ("stats", *TEST_KEYS)) else None
    with pinned_threads(measured_with["threads"]):
        points = operating_points(checked.model, cached_splits(recipe.data), measured_with["batch_size"],
                                  trained=trained, front_on=point_front_objectives(recipe))
    record = points_record(number, checked.model, points, checked.weights, measured_with,
                           time.perf_counter() - started)
    try:
        write_json(path, record)
    except OSError:  # a read-only run directory: computed again next time
        pass
    return record


def _weights_sha256(run: RunDir, number: int) -> str | None:
    """The sha256 of a trial's weights as they are now: its weights file's, or for a one-shot evaluation
    (no weights of its own) the one its metrics record while the run's supernet is the one it was sliced from."""
    metrics = run.read_metrics(number)
    if is_oneshot_trial(metrics):
        return metrics.get("weights_sha256") if supernet_sha256(run.supernet_dir) == metrics["supernet_sha256"] else None
    return _file_sha256(run.weights_path(number))


def _file_sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _read_points(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing or damaged: computed again
        return None
    valid = isinstance(record, dict) and record.get("format") == FORMAT and isinstance(record.get("points"), list)
    return record if valid else None


def at_point(run: Path, checked, point: int, recipe: Recipe):
    """A trial checked for export (``trials.CheckedTrial``), set to operating point ``point``: the knobs
    in the model and its config, the point's figures as its objectives, re-measured as the trial was."""
    item = point_of(trial_points(run, checked.number), point, run)
    model = checked.model
    trained_knobs = current_knobs(model)
    model.set_runtime_knobs(item["knobs"])
    measured_with = checked.measured["measured_with"]
    measured = measure_val(model, recipe.data, measured_with)
    if any(k not in item for k in TEST_KEYS):  # off the trial's own front: its test figures were not measured
        with pinned_threads(int(measured_with["threads"])):
            [test] = figures_on_test_split(model, cached_splits(recipe.data), [item["knobs"]],
                                           int(measured_with["batch_size"]), replay=False)
        item = {**item, **{k: test[k] for k in TEST_KEYS}, "test_measured_by": "real, at export"}
    figures = ("accuracy", "macs", *TEST_KEYS)
    # Latency was timed at the trained point only; test statistics were not kept per point.
    metrics = {k: v for k, v in checked.metrics.items() if not k.startswith("latency") and k != "test_stats"}
    metrics.update({k: item[k] for k in (*figures, "stats")})
    if "macs_shifted" in checked.metrics and recipe.measures_shift and not item["trained"]:  # measured at the trained point
        with pinned_threads(int(measured_with["threads"])):
            metrics.update(shifted_metrics(model, cached_splits(recipe.data), recipe.shift.corruptions,
                                           recipe.shift.severity, recipe.shift.seed,
                                           batch_size=int(measured_with["batch_size"])))
    card_entry = {
        "point": point,
        "knobs": item["knobs"],
        "trained_knobs": trained_knobs,
        "measured": {**{k: item[k] for k in figures}, **{k: metrics[k] for k in SHIFT_KEYS if k in metrics}},
        "trained_point": {k: checked.metrics[k] for k in (*figures, *SHIFT_KEYS) if k in checked.metrics},
        "reproduced_at_export": {"accuracy": measured["accuracy"], "macs": measured["macs"],
                                 "matches_recorded": same_figures(measured, item)},
    }
    if any(k.startswith("latency") for k in checked.metrics) and not item["trained"]:
        card_entry["note"] = "latency_ms was timed at the trained point only: time this point with 'dynsearch bench'"
    config = {**checked.config, **copy.deepcopy(model.config)}
    return replace(checked, config=config, metrics=metrics, measured=measured, point=card_entry)
