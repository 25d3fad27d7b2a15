"""The fronts of a run, read from its Optuna study and trial folders, and the one Pareto filter.

The front of trials (``pareto``) and the front of operating points
(``operating_front``: every trial at every value of its runtime knobs) are both
queries over the run directory here; making sure a trial's operating points are
recorded (computing them for runs made before the sweep) and setting a model to a
point are deploy/points.py's. Reading a front imports neither Ray nor any mechanism.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from dynsearch.compat import compute_hypervolume
from dynsearch.dominance import non_dominated  # noqa: F401 (the one Pareto filter, re-exported)
from dynsearch.errors import UserError
from dynsearch.run.rundir import RunDir
from dynsearch.run.study import count_states, open_existing

LATENCY_KEYS = ("latency_ms", "latency_ms_p90", "latency_ms_mean")
SHIFT_KEYS = ("macs_shifted", "test_macs_shifted")  # with a macs_shifted objective (training/trial.py)
# The objectives every operating point carries (see operating_front).
POINT_OBJECTIVES = ("accuracy", "macs", "params")
# A trial's operating-point record (operating_points.json's content) by run directory and trial number.
PointsOf = Callable[[RunDir, int], dict[str, Any]]


def front_trials(study, names: Sequence[str] | None = None) -> list:
    """The study's non-dominated COMPLETE trials (FrozenTrials) on its objectives and directions.

    ``names``: the objectives' names when the study has none recorded (runs older than that).
    """
    from optuna.trial import TrialState

    names = list(study.metric_names or names or [f"objective{i}" for i in range(len(study.directions))])
    directions = ["max" if d.name == "MAXIMIZE" else "min" for d in study.directions]
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    items = [{"index": i, **dict(zip(names, t.values))} for i, t in enumerate(trials)]
    return [trials[item["index"]] for item in non_dominated(items, list(zip(names, directions)))]


def incomplete_trial(run_dir: str | Path, number: int, folder: Path) -> UserError:
    return UserError(f"run directory {run_dir}: trial {number} is COMPLETE in the study but its "
                     f"folder {folder} is missing or incomplete; restore it or start a new run")


def pareto(run_dir: str | Path) -> list[dict[str, Any]]:
    """The non-dominated COMPLETE trials of a run (on the study's objectives), most accurate first.

    Each item: ``trial``, ``mechanism``, ``accuracy`` (validation), ``test_accuracy``,
    ``macs``, ``macs_full``, ``macs_thop`` (thop's count of the static path; None where thop could not
    count it or the run predates it), ``params``, ``config`` and ``stats`` (the
    mechanism's statistics on the validation split, e.g. ``exit_histogram``),
    plus the latency figures when they were measured and ``macs_shifted`` / ``test_macs_shifted``
    (expected MACs under the recipe's shift, validation and test) with a ``macs_shifted`` objective.
    """
    run = RunDir.existing(run_dir)
    study = open_existing(run)
    names = None if study.metric_names else run.read_recipe().metric_names
    front = []
    for trial in front_trials(study, names):
        number = trial.number
        metrics, config = run.read_metrics(number), run.read_config(number)
        if metrics.get("status") != "COMPLETE" or config is None:
            raise incomplete_trial(run_dir, number, run.trial_dir(number))
        front.append(
            {
                "trial": number,
                "mechanism": config.get("mechanism"),
                "accuracy": float(metrics["accuracy"]),
                "test_accuracy": float(metrics["test_accuracy"]),
                "macs": float(metrics["macs"]),
                "macs_full": int(metrics["macs_full"]),
                "macs_thop": None if metrics.get("macs_thop") is None else int(metrics["macs_thop"]),
                "params": int(metrics["params"]),
                "config": config,
                "stats": metrics.get("stats", {}),
            }
        )
        for key in (*LATENCY_KEYS, *SHIFT_KEYS):
            if key in metrics:
                front[-1][key] = float(metrics[key])
    front.sort(key=lambda item: (-item["accuracy"], item["macs"], item["trial"]))
    return front


def point_of(record: dict[str, Any], point: int, run_dir: str | Path) -> dict[str, Any]:
    """Operating point ``point`` of a trial's points record; a UserError naming the valid range otherwise."""
    points = record["points"]
    if not 0 <= point < len(points):
        raise UserError(f"--point {point}: trial {record['trial']} has operating points 0-{len(points) - 1}; "
                        f"pick one from 'dynsearch pareto {run_dir} --operating-points'")
    return points[point]


def check_recorded_point(run_dir: str | Path, number: int, point: int) -> None:
    """Refuse ``--point`` out of the range trial ``number`` recorded, before anything heavier is imported
    (a trial without a readable record is checked later, once its points are computed)."""
    import json

    path = RunDir.existing(run_dir).points_path(number)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if isinstance(record, dict) and isinstance(record.get("points"), list):
        point_of({**record, "trial": number}, point, run_dir)


def operating_front(run_dir: str | Path, points_of: PointsOf) -> list[dict[str, Any]]:
    """The non-dominated operating points of every COMPLETE trial, most accurate first.

    ``points_of(run, number)``: trial ``number``'s points record (deploy/points.py's
    ``trial_points``, which computes it for runs made before the sweep).
    Points are compared on the recipe's objectives that every point carries:
    validation ``accuracy``, ``macs`` and ``params``; ``latency_ms`` and ``macs_shifted`` are measured at
    the trained point only, so a recipe's points are compared without them.
    Each item: ``trial``, ``mechanism``, ``point``, ``knobs``, ``trained``, ``accuracy``, ``macs``,
    ``test_accuracy``, ``test_macs``, ``macs_full``, ``params``, ``config`` (as
    trained) and ``stats``."""
    from optuna.trial import TrialState

    run = RunDir.existing(run_dir)
    objectives = [(o.name, o.direction) for o in run.read_recipe().objectives if o.name in POINT_OBJECTIVES]
    candidates = []
    for trial in open_existing(run).get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        metrics, config = run.read_metrics(trial.number), run.read_config(trial.number)
        if metrics.get("status") != "COMPLETE" or config is None:
            raise incomplete_trial(run_dir, trial.number, run.trial_dir(trial.number))
        record = points_of(run, trial.number)
        seen = set()
        # Several knob values often give the same figures: keep one, the trained one if it is among them.
        for item in sorted(record["points"], key=lambda p: not p["trained"]):
            if (item["accuracy"], item["macs"]) in seen:
                continue
            seen.add((item["accuracy"], item["macs"]))
            candidates.append({"trial": trial.number, "mechanism": config.get("mechanism"), **item,
                               "macs_full": record["macs_full"],
                               "params": int(metrics["params"]), "config": config})
    front = non_dominated(candidates, objectives)
    front.sort(key=lambda item: (-item["accuracy"], item["macs"], item["trial"], item["point"]))
    return front


def write_front(run_dir: str | Path) -> list[dict[str, Any]]:
    """Compute the front and store it in the run directory (``pareto.json``)."""
    front = pareto(run_dir)
    RunDir.of(run_dir).write_front(front)
    return front


def trial_counts(run_dir: str | Path) -> dict[str, int]:
    """How many trials of the study are in each state."""
    return count_states(open_existing(run_dir))


def hypervolume(points: list[tuple[float, float]], reference: tuple[float, float]) -> float:
    """The area dominated by ``points`` = (accuracy, cost) pairs — accuracy
    maximised, cost (MACs, latency) minimised — up to ``reference`` = (lowest
    accuracy, highest cost). Points outside the reference box add nothing.
    Uses Optuna's WFG implementation (the one behind ``plot_hypervolume_history``)."""
    low_accuracy, high_cost = reference
    inside = [(-acc, cost) for acc, cost in points if acc > low_accuracy and cost < high_cost]
    if not inside:
        return 0.0
    return compute_hypervolume(inside, [-low_accuracy, high_cost])


MACS_OBJECTIVES = ("macs", "macs_shifted")  # scaled alike by hypervolume_history


def hypervolume_history(run_dir: str | Path) -> dict[str, Any]:
    """The search's hypervolume after each COMPLETE trial, against wall-clock: what the report and the
    W&B summary draw. Every objective of the study counts (n-dimensional, Optuna's WFG): an objective
    maximised (accuracy) is taken as it is, reference 0; one minimised (MACs, latency, params) is divided
    by its largest value over the COMPLETE trials (``macs`` and ``macs_shifted`` both by one divisor: the
    largest ``macs_full``, the static path of the biggest network tried, or a larger value of either),
    reference 1. Returns ``seconds`` (since the first trial started),
    ``hypervolume`` (the same length), ``trials`` (which trial each step added) and ``scale`` (objective ->
    divisor). PRUNED trials are not counted: their objectives are those of a partly trained network."""
    from optuna.trial import TrialState

    run = RunDir.of(run_dir)
    study = open_existing(run)
    names = list(study.metric_names or run.read_recipe().metric_names)
    maximised = [d.name == "MAXIMIZE" for d in study.directions]
    every = study.get_trials(deepcopy=False)
    trials = sorted((t for t in every if t.state == TrialState.COMPLETE and t.datetime_complete is not None),
                    key=lambda t: t.datetime_complete)
    if not trials:
        return {"seconds": [], "hypervolume": [], "trials": [], "scale": {}}
    scale: dict[str, float] = {}
    macs_at = [i for i, name in enumerate(names) if name in MACS_OBJECTIVES and not maximised[i]]
    if macs_at:  # one divisor for every MACs objective, so that their scaled values compare
        largest_macs = max([abs(t.values[i]) for t in trials for i in macs_at]
                           + [run.read_metrics(t.number).get("macs_full") or 0 for t in trials])
    for i, name in enumerate(names):
        if not maximised[i]:
            largest = largest_macs if i in macs_at else max(abs(t.values[i]) for t in trials)
            scale[name] = float(largest) or 1.0
    first = min(t.datetime_start for t in every if t.datetime_start is not None)
    reference = [0.0 if up else 1.0 for up in maximised]
    losses, history = [], {"seconds": [], "hypervolume": [], "trials": [], "scale": scale}
    for t in trials:
        losses.append([-v if up else v / scale[name] for v, up, name in zip(t.values, maximised, names)])
        inside = [p for p in losses if all(x < r for x, r in zip(p, reference))]
        history["seconds"].append(round((t.datetime_complete - first).total_seconds(), 1))
        history["hypervolume"].append(round(compute_hypervolume(inside, reference), 6) if inside else 0.0)
        history["trials"].append(t.number)
    return history
