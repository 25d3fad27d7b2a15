"""Operating points: each trained trial's own accuracy–MACs curve over its runtime knobs, without retraining.

A calibration sweep sets every value (every combination, for several knobs) of
``model.runtime_knobs()`` in turn and measures the model again: one real eval
forward of the validation split per value, so each point is exactly what the
model does when it runs at that point (no replay of stored head outputs), and
one of the test split for reporting. The search runs the sweep at the end of
each trial in its Ray worker, where the model is in memory, and writes
``trials/<N>/operating_points.json``; for runs made before that, the file is
computed from the trial's weights the first time it is asked for.

Item ``k`` of a trial's ``points`` is operating point ``k`` (``dynsearch export
--trials N --point k``); the point with ``trained: true`` is the trial as trained.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import time
from pathlib import Path
from typing import Any, Iterator

from dynsearch.errors import UserError

POINTS_FILE = "operating_points.json"
FORMAT = "dynsearch-operating-points/1"


def current_knobs(model) -> dict[str, Any]:
    """The model's knob values now (``runtime_policy()`` reports them by name)."""
    policy = model.runtime_policy()
    return {name: policy[name] for name in model.runtime_knobs()}


def sweep(model, splits, batch_size: int) -> list[dict[str, Any]]:
    """Measure ``model`` at every knob combination of ``runtime_knobs()``; the knobs are restored after.

    Returns the points in order: ``point``, ``knobs``, ``trained`` (the values it
    was trained with), validation ``accuracy``, ``macs`` and ``stats``,
    ``test_accuracy`` and ``test_macs``.
    """
    from dynsearch.cost import measure

    knobs = model.runtime_knobs()
    trained = current_knobs(model)
    names = sorted(knobs)
    points = []
    try:
        for combination in itertools.product(*(knobs[name] for name in names)):
            values = dict(zip(names, combination))
            model.set_runtime_knobs(values)
            val = measure(model, splits.val_x, splits.val_y, batch_size=batch_size)
            test = measure(model, splits.test_x, splits.test_y, batch_size=batch_size)
            points.append({
                "point": len(points), "knobs": values, "trained": values == trained,
                "accuracy": val["accuracy"], "macs": val["macs"], "stats": val["stats"],
                "test_accuracy": test["accuracy"], "test_macs": test["macs"],
            })
    finally:
        model.set_runtime_knobs(trained)
    return points


def points_record(number: int, model, points: list[dict[str, Any]], weights: bytes,
                  measured_with: dict[str, int], sweep_seconds: float) -> dict[str, Any]:
    """The content of a trial's operating_points.json."""
    return {
        "sweep_seconds": round(sweep_seconds, 3),
        "format": FORMAT,
        "trial": number,
        "knobs": model.runtime_knobs(),
        "trained_knobs": current_knobs(model),
        "macs_full": model.macs_full(),
        "measured_with": dict(measured_with),
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "points": points,
    }


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(count))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def trial_points(run_dir: str | Path, number: int) -> dict[str, Any]:
    """A COMPLETE trial's operating points: its operating_points.json, computed and written
    first when missing or stale (a run made before the sweep existed, or other weights)."""
    from dynsearch.bundle import WEIGHTS_FILE, _check_trial, _data_splits, _read_recipe
    from dynsearch.study import trial_dir
    from dynsearch.trial import write_json

    run = Path(run_dir)
    path = trial_dir(run, number) / POINTS_FILE
    stored = _read_points(path)
    if stored is not None and stored.get("weights_sha256") == _file_sha256(path.parent / WEIGHTS_FILE):
        return stored
    recipe = _read_recipe(run)
    checked = _check_trial(run, number, recipe)  # weights verified against the trial's checksum
    measured_with = checked.measured["measured_with"]
    started = time.perf_counter()
    with torch_threads(measured_with["threads"]):
        points = sweep(checked.model, _data_splits(recipe["data"]), measured_with["batch_size"])
    record = points_record(number, checked.model, points, checked.weights, measured_with,
                           time.perf_counter() - started)
    try:
        write_json(path, record)
    except OSError:  # a read-only run directory: computed again next time
        pass
    return record


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


def find_point(run_dir: str | Path, number: int, point: int) -> dict[str, Any]:
    """Operating point ``point`` of trial ``number``; a UserError naming the valid range otherwise."""
    points = trial_points(run_dir, number)["points"]
    if not 0 <= point < len(points):
        raise UserError(f"--point {point}: trial {number} has operating points 0-{len(points) - 1}; "
                        f"pick one from 'dynsearch pareto {run_dir} --operating-points'")
    return points[point]


def operating_front(run_dir: str | Path) -> list[dict[str, Any]]:
    """The non-dominated operating points (validation accuracy max, macs min) of every COMPLETE
    trial, most accurate first. Each item: ``trial``, ``point``, ``knobs``, ``trained``,
    ``accuracy``, ``macs``, ``test_accuracy``, ``test_macs``, ``macs_full``, ``params``,
    ``config`` (as trained) and ``stats``."""
    from optuna.trial import TrialState

    from dynsearch.front import _check_run_dir, _open, incomplete_trial
    from dynsearch.study import read_trial_metrics, trial_dir

    run = _check_run_dir(run_dir)
    candidates = []
    for trial in _open(run, run_dir).get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        metrics = read_trial_metrics(run, trial.number)
        config_path = trial_dir(run, trial.number) / "config.json"
        if metrics.get("status") != "COMPLETE" or not config_path.is_file():
            raise incomplete_trial(run_dir, trial.number, config_path.parent)
        config = json.loads(config_path.read_text(encoding="utf-8"))
        record = trial_points(run, trial.number)
        seen = set()
        # Several knob values often give the same figures: keep one, the trained one if it is among them.
        for item in sorted(record["points"], key=lambda p: not p["trained"]):
            if (item["accuracy"], item["macs"]) in seen:
                continue
            seen.add((item["accuracy"], item["macs"]))
            candidates.append({"trial": trial.number, **item, "macs_full": record["macs_full"],
                               "params": int(metrics["params"]), "config": config})
    front = non_dominated(candidates)
    front.sort(key=lambda item: (-item["accuracy"], item["macs"], item["trial"], item["point"]))
    return front


def non_dominated(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items no other item dominates on (``accuracy`` max, ``macs`` min); ties are all kept."""
    def dominates(a, b):
        return (a["accuracy"] >= b["accuracy"] and a["macs"] <= b["macs"]
                and (a["accuracy"] > b["accuracy"] or a["macs"] < b["macs"]))

    return [b for b in items if not any(dominates(a, b) for a in items)]


def at_point(run: Path, checked, point: int, recipe: dict[str, Any]):
    """A trial checked for export (bundle._Checked), set to operating point ``point``: the knobs in
    the model and its config, the point's figures as its objectives, re-measured as the trial was."""
    import copy
    from dataclasses import replace

    from dynsearch.bundle import _measure_val, _same_figures

    item = find_point(run, checked.number, point)
    model = checked.model
    trained_knobs = current_knobs(model)
    model.set_runtime_knobs(item["knobs"])
    measured = _measure_val(model, recipe["data"], checked.measured["measured_with"])
    figures = ("accuracy", "macs", "test_accuracy", "test_macs")
    # Latency was timed at the trained point only; test statistics were not kept per point.
    metrics = {k: v for k, v in checked.metrics.items() if not k.startswith("latency") and k != "test_stats"}
    metrics.update({k: item[k] for k in (*figures, "stats")})
    card_entry = {
        "point": point,
        "knobs": item["knobs"],
        "trained_knobs": trained_knobs,
        "measured": {k: item[k] for k in figures},
        "trained_point": {k: checked.metrics[k] for k in figures if k in checked.metrics},
        "reproduced_at_export": {"accuracy": measured["accuracy"], "macs": measured["macs"],
                                 "matches_recorded": _same_figures(measured, item)},
    }
    if any(k.startswith("latency") for k in checked.metrics) and not item["trained"]:
        card_entry["note"] = "latency_ms was timed at the trained point only: time this point with 'dynsearch bench'"
    config = {**checked.config, **copy.deepcopy(model.config)}
    return replace(checked, config=config, metrics=metrics, measured=measured, point=card_entry)
