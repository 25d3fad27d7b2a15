"""Operating points: each trained trial's own accuracy–MACs curve over its runtime knobs, without retraining.

A calibration sweep measures the model at every value (every combination, for
several knobs) of ``model.runtime_knobs()``. Two ways, same figures:

- **Replay** (mechanisms whose knobs only decide where a sample stops: exit
  thresholds, PABEE's patience, FastBERT's speed, the predicted depth's shift,
  the halting threshold). One real eval pass per split, ``model.record``,
  computes every exit's / step's output for every sample; each knob value's
  decisions, predictions and per-sample Trace then come from ``model.replay``,
  which takes the eval forward's own decisions (dynamic/rules.py) on those
  outputs. Accuracy, traced MACs and statistics are summed up by the function
  that sums up a real pass (``evaluate.split_figures``). The record is made at
  the batch size of the real pass, but a real pass runs its later stages on
  the samples still running, where round-off can differ (by ~1e-7 at a batch
  of 1, PITFALLS.md): a sample that close to a threshold or to a tie between
  two classes could decide otherwise. So the points that matter are measured
  again by a real run (``remeasure``).
- **Real passes** (gate bias, expert top-k: the knob changes what runs
  downstream; or ``replay=False``): one real eval forward per value.

Each point says which in ``measured_by`` (``"replay"`` or ``"real"``).

What a trial records is ``operating_points(model, splits, batch_size)``: the
validation figures of every point (replayed where the model replays), the
trained point and the points on the trial's own validation front measured
again by a real validation pass, and test figures for those points only
(replayed from one record pass of the test split); nothing selects on test.
The pieces, cheapest first:

- ``sweep(model, splits, batch_size, test=False)``: validation figures of every point;
- ``figures_on_test_split(model, splits, knobs_list, batch_size)``: test figures of the chosen points;
- ``remeasure(model, splits, knobs_list, batch_size[, test=False])``: real validation (and test)
  figures of the chosen points, to replace their replayed ones;
- ``remeasured_points(model, splits, points, indices, batch_size[, real_test])``: both for the points
  at ``indices``: real validation figures, test figures replayed (or real).

``sweep(model, splits, batch_size)`` (``test=True``) gives every point its test
figures too (benchmarks compare it with the old per-value sweep). The search
runs ``operating_points`` at the end of each trial in its Ray worker, where the
model is in memory, and writes ``trials/<N>/operating_points.json``; for runs
made before that, the file is computed from the trial's weights the first time
it is asked for. Records written by the earlier per-value sweep (every point
with test figures, all ``measured_by`` real) are read as they are.

Item ``k`` of a trial's ``points`` is operating point ``k`` (``dynsearch export
--trials N --point k``); the point with ``trained: true`` is the trial as trained.
"""
from __future__ import annotations

import hashlib
import itertools
from typing import Any

import torch

from dynsearch.dominance import non_dominated
from dynsearch.measure.evaluate import measure, split_figures

FORMAT = "dynsearch-operating-points/1"


def current_knobs(model) -> dict[str, Any]:
    """The model's knob values now (``runtime_policy()`` reports them by name)."""
    policy = model.runtime_policy()
    return {name: policy[name] for name in model.runtime_knobs()}


def knob_grid(model) -> list[dict[str, Any]]:
    """Every combination of the values of ``runtime_knobs()``, in the order of the points."""
    knobs = model.runtime_knobs()
    names = sorted(knobs)
    return [dict(zip(names, combination)) for combination in itertools.product(*(knobs[name] for name in names))]


@torch.no_grad()
def record_split(model, inputs: torch.Tensor, batch_size: int) -> list[dict[str, torch.Tensor]] | None:
    """``model.record`` of a split in eval mode, batch by batch as a real pass batches it (the same
    batch sizes, so the same round-off); None when the model does not replay its knobs."""
    was_training = model.training
    model.eval()
    try:
        records = []
        for start in range(0, len(inputs), batch_size):
            record = model.record(inputs[start : start + batch_size])
            if record is None:
                return None
            records.append(record)
        return records
    finally:
        model.train(was_training)


@torch.no_grad()
def replay_split(model, records: list[dict[str, torch.Tensor]], targets: torch.Tensor) -> dict[str, Any]:
    """``measure``'s figures at the knob values set now, from a split's records (``record_split``)."""
    was_training = model.training
    model.eval()
    try:
        outputs = [model.replay(record) for record in records]
    finally:
        model.train(was_training)
    return split_figures(model, outputs, targets)


def figures_at(model, inputs: torch.Tensor, targets: torch.Tensor, knobs_list: list[dict[str, Any]],
               batch_size: int, replay: bool = True) -> list[dict[str, Any]]:
    """``measure``'s figures on one split at each knob value of ``knobs_list``, each with ``measured_by``:
    replayed from one record pass when the model replays (and ``replay``), else one real pass per
    value. The knobs are restored after."""
    trained = current_knobs(model)
    records = record_split(model, inputs, batch_size) if replay and knobs_list else None
    figures = []
    try:
        for values in knobs_list:
            model.set_runtime_knobs(values)
            if records is None:
                result = measure(model, inputs, targets, batch_size=batch_size)
            else:
                result = replay_split(model, records, targets)
            figures.append({**result, "measured_by": "real" if records is None else "replay"})
    finally:
        model.set_runtime_knobs(trained)
    return figures


def sweep(model, splits, batch_size: int, *, test: bool = True, replay: bool = True) -> list[dict[str, Any]]:
    """Measure ``model`` at every knob combination of ``runtime_knobs()``; the knobs are restored after.

    Returns the points in order: ``point``, ``knobs``, ``trained`` (the values it
    was trained with), validation ``accuracy``, ``macs`` and ``stats``, ``measured_by``
    (``"replay"`` or ``"real"``) and, with ``test``, ``test_accuracy`` and ``test_macs``
    (``test=False``: validation only; ``figures_on_test_split`` then measures the points that matter).
    ``replay=False``: one real pass per value and split, whatever the model supports.
    """
    grid = knob_grid(model)
    trained = current_knobs(model)
    val = figures_at(model, splits.val_x, splits.val_y, grid, batch_size, replay)
    points = [{"point": k, "knobs": values, "trained": values == trained, "accuracy": figures["accuracy"],
               "macs": figures["macs"], "stats": figures["stats"], "measured_by": figures["measured_by"]}
              for k, (values, figures) in enumerate(zip(grid, val))]
    if test:
        for point, figures in zip(points, figures_on_test_split(model, splits, grid, batch_size, replay=replay)):
            point.update(test_accuracy=figures["test_accuracy"], test_macs=figures["test_macs"])
    return points


def figures_on_test_split(model, splits, knobs_list: list[dict[str, Any]], batch_size: int, *,
                          replay: bool = True) -> list[dict[str, Any]]:
    """``test_accuracy``, ``test_macs`` and ``measured_by`` on the test split at each knob value of
    ``knobs_list`` (e.g. the trained point and the points on the trial's validation front): one record
    pass of the test split and a replay per value, or one real pass per value."""
    figures = figures_at(model, splits.test_x, splits.test_y, knobs_list, batch_size, replay)
    return [{"test_accuracy": f["accuracy"], "test_macs": f["macs"], "measured_by": f["measured_by"]} for f in figures]


def remeasure(model, splits, knobs_list: list[dict[str, Any]], batch_size: int, *,
              test: bool = True) -> list[dict[str, Any]]:
    """Real validation (and, with ``test``, test) figures at each knob value of ``knobs_list``: one real
    eval pass per value and split, so a point that reaches a front is what the model does at it. Each
    item has the point's figure keys (``accuracy``, ``macs``, ``stats``; ``test_accuracy``, ``test_macs``)
    and ``measured_by: "real"``, to update the replayed point with. ``test=False``: validation only,
    the figures a front is chosen on (a test split is often many times larger: ``figures_on_test_split``
    replays it for the same points from one record pass)."""
    val = figures_at(model, splits.val_x, splits.val_y, knobs_list, batch_size, replay=False)
    test_split = figures_on_test_split(model, splits, knobs_list, batch_size, replay=False) if test else [{}] * len(val)
    return [{"accuracy": v["accuracy"], "macs": v["macs"], "stats": v["stats"],
             **{k: t[k] for k in ("test_accuracy", "test_macs") if k in t}, "measured_by": "real"}
            for v, t in zip(val, test_split)]


def remeasured_points(model, splits, points: list[dict[str, Any]], indices: list[int], batch_size: int, *,
                      real_test: bool = False) -> list[dict[str, Any]]:
    """``points`` with those at ``indices`` (the trained point, the trial's validation front) measured
    again by real validation passes (``remeasure``) and given test figures: real passes with
    ``real_test``, else replayed from one record pass of the test split (``test_measured_by`` says
    which). The other points are returned as they are."""
    indices = list(dict.fromkeys(indices))
    knobs_list = [points[i]["knobs"] for i in indices]
    real = remeasure(model, splits, knobs_list, batch_size, test=real_test)
    test = real if real_test else figures_on_test_split(model, splits, knobs_list, batch_size)
    settled = list(points)
    for i, figures, test_figures in zip(indices, real, test):
        settled[i] = {**points[i], **figures, "test_accuracy": test_figures["test_accuracy"],
                      "test_macs": test_figures["test_macs"], "test_measured_by": test_figures["measured_by"]}
    return settled


# The figures a trial's own front is chosen on: the operating-point front compares points on these
# (params is the same at every point of a trial; latency is timed at the trained point only).
POINT_FRONT_OBJECTIVES = (("accuracy", "max"), ("macs", "min"))
TEST_KEYS = ("test_accuracy", "test_macs")


def point_front_objectives(recipe) -> list[tuple[str, str]]:
    """The objectives a trial's own operating points are ranked on: the recipe's accuracy and macs
    (params is the same at every point; latency is timed at the trained point only)."""
    return [(o.name, o.direction) for o in recipe.objectives if o.name in ("accuracy", "macs")]


def operating_points(model, splits, batch_size: int, *, trained: dict[str, Any] | None = None,
                     front_on: list[tuple[str, str]] | tuple = POINT_FRONT_OBJECTIVES) -> list[dict[str, Any]]:
    """What a trial records as its operating points, at the cost of about one pass per split.

    1. Validation figures of every knob value (``sweep(test=False)``: replayed from one record pass
       where the model replays, else one real pass per value).
    2. The trial's own validation front on ``front_on`` (a subset of accuracy / macs, the recipe's
       objectives; only its points can reach a run's operating-point front) and the trained point are
       the points that matter: where their figures were replayed, they are measured again by a real
       validation pass (``remeasure``), so each of them is what the model does at that point; the
       others keep their replayed figures (``measured_by``).
    3. Test figures for those points only (``test_accuracy``, ``test_macs``; ``test_measured_by``),
       replayed from one record pass of the test split where the model replays; the other points have
       none. Nothing selects on test.

    ``trained``: the real validation and test figures of the trained point (``training.trial.evaluate``
    measured them at the same batch size), used instead of measuring it again.
    """
    points = sweep(model, splits, batch_size, test=False)
    if not points:
        return points
    front_on = [(key, direction) for key, direction in front_on] or list(POINT_FRONT_OBJECTIVES)
    chosen = [p["point"] for p in non_dominated(points, front_on)]
    trained_index = next((p["point"] for p in points if p["trained"]), None)
    if trained is not None and trained_index is not None:
        points[trained_index] = {**points[trained_index], "replayed": _replayed(points[trained_index]),
                                 **{k: trained[k] for k in ("accuracy", "macs", "stats", *TEST_KEYS)},
                                 "measured_by": "real", "test_measured_by": "real"}
        chosen = [i for i in chosen if i != trained_index]
    elif trained_index is not None:
        chosen.append(trained_index)
    if not chosen:
        return points
    if points[chosen[0]]["measured_by"] == "replay":
        before = {i: _replayed(points[i]) for i in chosen}
        points = remeasured_points(model, splits, points, chosen, batch_size)
        for i in chosen:
            points[i]["replayed"] = before[i]
    else:  # real passes already: the test figures of the chosen points, one real pass each
        test = figures_on_test_split(model, splits, [points[i]["knobs"] for i in chosen], batch_size)
        for i, figures in zip(chosen, test):
            points[i] = {**points[i], **{k: figures[k] for k in TEST_KEYS}, "test_measured_by": figures["measured_by"]}
    return points


def _replayed(point: dict[str, Any]) -> dict[str, Any] | None:
    """A point's replayed validation figures, kept beside the real ones that replace them (None: not replayed)."""
    return {"accuracy": point["accuracy"], "macs": point["macs"]} if point["measured_by"] == "replay" else None


def replay_agreement(points: list[dict[str, Any]]) -> dict[str, int]:
    """How many re-measured points the replay had exactly right (validation accuracy and macs)."""
    checked = [p for p in points if p.get("replayed")]
    same = sum(p["replayed"] == {"accuracy": p["accuracy"], "macs": p["macs"]} for p in checked)
    return {"remeasured": len(checked), "replay_matched": same}


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
        **replay_agreement(points),
        "points": points,
    }
