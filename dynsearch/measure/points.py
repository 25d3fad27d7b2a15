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

import hashlib
import itertools
from typing import Any

from dynsearch.measure.evaluate import measure

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
