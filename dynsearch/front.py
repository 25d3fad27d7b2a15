"""The Pareto front of a run, read from its Optuna study and trial folders.

Reading a front imports neither Ray nor any mechanism.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dynsearch.errors import UserError

FRONT_FILE = "pareto.json"


def _check_run_dir(run_dir: str | Path) -> Path:
    from dynsearch.study import STUDY_FILE

    path = Path(run_dir).expanduser()
    if not path.is_dir():
        raise UserError(f"run directory {run_dir}: not found; pass the --out folder of a search")
    if not (path / STUDY_FILE).is_file():
        raise UserError(f"run directory {run_dir}: holds no {STUDY_FILE}; pass the --out folder of a search")
    return path.resolve()


def _open(path: Path, run_dir: str | Path):
    from dynsearch.study import open_study

    try:
        return open_study(path)
    except Exception as exc:  # a journal that optuna cannot replay
        raise UserError(f"run directory {run_dir}: the study cannot be read ({exc.__class__.__name__}); "
                        "the journal is corrupt") from None


def incomplete_trial(run_dir: str | Path, number: int, folder: Path) -> UserError:
    return UserError(f"run directory {run_dir}: trial {number} is COMPLETE in the study but its "
                     f"folder {folder} is missing or incomplete; restore it or start a new run")


def pareto(run_dir: str | Path, operating_points: bool = False) -> list[dict[str, Any]]:
    """The non-dominated COMPLETE trials of a run, most accurate first.

    Each item: ``trial``, ``accuracy`` (validation), ``test_accuracy``,
    ``macs``, ``macs_full``, ``params``, ``config`` and ``stats`` (the
    mechanism's statistics on the validation split, e.g. ``exit_histogram``).
    With ``operating_points``: the front over every operating point of every
    trial (accuracy vs macs), each item also naming its ``point`` and ``knobs``
    (see operating_points.py).
    """
    from dynsearch.study import read_trial_metrics, trial_dir

    if operating_points:
        from dynsearch.operating_points import operating_front

        return operating_front(run_dir)
    path = _check_run_dir(run_dir)
    study = _open(path, run_dir)
    front = []
    for trial in study.best_trials:  # Optuna's non-dominated set over COMPLETE trials
        metrics = read_trial_metrics(path, trial.number)
        config_path = trial_dir(path, trial.number) / "config.json"
        if metrics.get("status") != "COMPLETE" or not config_path.is_file():
            raise incomplete_trial(run_dir, trial.number, config_path.parent)
        front.append(
            {
                "trial": trial.number,
                "accuracy": float(metrics["accuracy"]),
                "test_accuracy": float(metrics["test_accuracy"]),
                "macs": float(metrics["macs"]),
                "macs_full": int(metrics["macs_full"]),
                "params": int(metrics["params"]),
                "config": json.loads(config_path.read_text(encoding="utf-8")),
                "stats": metrics.get("stats", {}),
            }
        )
        for key in ("latency_ms", "latency_ms_p90", "latency_ms_mean"):
            if key in metrics:
                front[-1][key] = float(metrics[key])
    front.sort(key=lambda item: (-item["accuracy"], item["macs"], item["trial"]))
    return front


def write_front(run_dir: str | Path) -> list[dict[str, Any]]:
    """Compute the front and store it as ``pareto.json`` in the run directory."""
    from dynsearch.trial import write_json

    front = pareto(run_dir)
    write_json(Path(run_dir) / FRONT_FILE, front)
    return front


def trial_counts(run_dir: str | Path) -> dict[str, int]:
    """How many trials of the study are in each state."""
    from dynsearch.study import count_states, open_study

    return count_states(open_study(_check_run_dir(run_dir)))


def hypervolume(points: list[tuple[float, float]], reference: tuple[float, float]) -> float:
    """The area dominated by ``points`` = (accuracy, cost) pairs — accuracy
    maximised, cost (MACs, latency) minimised — up to ``reference`` = (lowest
    accuracy, highest cost). Points outside the reference box add nothing.
    Uses Optuna's WFG implementation (the one behind ``plot_hypervolume_history``)."""
    import numpy as np
    from optuna._hypervolume import compute_hypervolume

    low_accuracy, high_cost = reference
    inside = [(-acc, cost) for acc, cost in points if acc > low_accuracy and cost < high_cost]
    if not inside:
        return 0.0
    return float(compute_hypervolume(np.asarray(inside, dtype=float), np.asarray([-low_accuracy, high_cost], dtype=float)))
