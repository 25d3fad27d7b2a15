"""The one-shot strategy's work: the supernet trial that Ray Tune runs, and the search's evaluations.

``run_supernet_trial`` is the Ray Tune function trainable that trains the supernet
(training/supernet.py) in one trial, pinned to the driver's node (it writes the run directory).
``Evaluator`` is what the one-shot search loop (tuning/oneshot.py) is handed: ``define(trial)``
gives a trial's config (a sub-network and its runtime policy, named as a multi-trial trial of the
recipe is), ``evaluate(config)`` measures it with inherited weights and returns its objectives and
trial-folder files, ``settle_front()`` measures what reached the fronts by real passes, the test
split included, once the search ends.

An evaluation: the sub-network sliced from the supernet, its batch-norm statistics recomputed
on ``supernet.calibration_images`` training images, then one record pass of the validation split
from which every exit threshold's figures are replayed (``measure/points.sweep``; the trial's own
threshold gives its objectives). The points that reach the trial front or the operating-point
front are measured again by real validation passes before the front is written (the replayed
figures are kept beside them and ``replay_matched`` counts exact agreement), and only they are
measured on the test split: the search never reads it.
"""
from __future__ import annotations

import hashlib
import os
import time
import traceback
from collections import defaultdict
from pathlib import Path
from typing import Any


from dynsearch.dynamic.supernet import calibrated_subnet
from dynsearch.measure.device import pin_threads, pinned_threads
from dynsearch.measure.evaluate import MEASURE_BATCH_SIZE, count_params, measure
from dynsearch.measure.points import point_front_objectives, points_record, remeasure, replay_agreement, sweep
from dynsearch.run.files import (
    METRICS_FILE, POINTS_FILE, SUPERNET_FAILURE, json_bytes, points_file, read_json, trial_files, weights_bytes,
    write_json,
)
from dynsearch.run.rundir import RunDir
from dynsearch.run.supernet import load_supernet
from dynsearch.training.supernet import OneShotSpace, calibration_of, train_supernet


def supernet_threads(recipe) -> int:
    """Threads the supernet trains and is evaluated with: ``supernet.cpus``, else every CPU here."""
    return int(recipe.supernet.cpus or os.cpu_count() or 1)


# -- the supernet trial (a Ray Tune function trainable) -----------------------------------------------
def run_supernet_trial(config: dict[str, Any], recipe, folder: str, splits, cpus: int) -> None:
    from ray import tune

    from dynsearch.training.trainable import as_out_of_memory

    pin_threads(cpus)
    try:
        record = train_supernet(recipe, splits, Path(folder), report=tune.report)
    except Exception as caught:
        exc = as_out_of_memory(caught)
        reason = f"{exc.__class__.__name__}: {exc}".splitlines()[0][:500]
        write_json(Path(folder) / SUPERNET_FAILURE, {"reason": reason, "traceback": traceback.format_exc()[-4000:]})
        tune.report({"final": True, "failed": True})
        return
    last = record["history"][-1] if record["history"] else {}
    tune.report({**{k: v for k, v in last.items() if isinstance(v, (int, float))}, "final": True})


# -- the evaluations ----------------------------------------------------------------------------
class Evaluator:
    """Evaluates sub-networks of a run's trained supernet with inherited weights (module docstring)."""

    def __init__(self, problem, run_dir):
        self.recipe = problem.recipe
        self.splits = problem.splits
        self.run = RunDir.of(run_dir)
        self.supernet, self.record = load_supernet(self.run.supernet_dir)
        self.space = OneShotSpace(self.recipe, problem.shape)
        self.calibration = calibration_of(self.recipe, self.splits)
        self.threads = supernet_threads(self.recipe)
        self.front_on = point_front_objectives(self.recipe)
        self.measured_with = {"batch_size": MEASURE_BATCH_SIZE, "threads": self.threads}

    def define(self, trial) -> dict[str, Any]:
        """Trial ``trial``'s config: the space's, with the supernet's training settings pinned."""
        return self.space.define(trial)

    def model(self, config: dict[str, Any]):
        return calibrated_subnet(self.supernet, config, self.calibration)

    def evaluate(self, config: dict[str, Any]) -> tuple[dict[str, float], dict[str, bytes]]:
        """Trial config ``config`` measured on validation: its figures (``accuracy``, ``macs``, ``params``,
        ...) and its trial folder's files (config, operating points, metrics last).

        One record pass of the validation split gives every threshold's figures by replay (the trial's
        own threshold included: its objectives); a model without runtime knobs gets one real pass.
        Real passes re-measure the points that reach the front when the search ends (``settle_front``)."""
        started = time.perf_counter()
        with pinned_threads(self.threads):
            model = self.model(config)
            calibrated = time.perf_counter()
            points = sweep(model, self.splits, MEASURE_BATCH_SIZE, test=False)
            trained = next((p for p in points if p["trained"]), None)
            if trained is None:  # no knobs (no exit head): the model itself, one real pass
                trained = {**measure(model, self.splits.val_x, self.splits.val_y, batch_size=MEASURE_BATCH_SIZE),
                           "measured_by": "real"}
        sweep_seconds = time.perf_counter() - calibrated
        weights = weights_bytes(model)
        metrics = {
            "status": "COMPLETE",
            "strategy": "one-shot",
            "accuracy": trained["accuracy"],
            "macs": trained["macs"],
            "measured_by": trained["measured_by"],
            "macs_full": model.macs_full(),
            "macs_thop": None,
            "params": count_params(model),
            "stats": trained["stats"],
            "stat_views": type(model).stat_views_record(trained["stats"]),
            "measured_with": dict(self.measured_with),
            "supernet_sha256": self.record["weights_sha256"],
            "weights_sha256": hashlib.sha256(weights).hexdigest(),
            "train_seconds": round(time.perf_counter() - started, 3),
            "seconds": {"calibration": round(calibrated - started, 3), "sweep": round(sweep_seconds, 3)},
        }
        record = points_record(int(config["trial"]), model, points, weights, self.measured_with, sweep_seconds)
        files = trial_files(config, None, metrics)  # config.json, metrics.json (no weights of its own)
        metrics_bytes = files.pop(METRICS_FILE)
        files.update(points_file(record))
        files[METRICS_FILE] = metrics_bytes  # last: it says the trial is whole
        return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}, files

    def settle_front(self, front_numbers: list[int], point_front: list[dict[str, Any]]) -> dict[str, int]:
        """Real passes for what reached the fronts, once the search has ended: for each trial on the trial
        front (``front_numbers``) its own threshold, for each operating point on the operating-point front
        (``point_front``: items with ``trial`` and ``point``) that point -- validation again (the replayed
        figures are kept beside, ``replayed``; ``replay_matched`` counts exact agreement) and the test split,
        measured here for the first time. Written into the trials' metrics.json and operating_points.json;
        trials settled already (a resumed finish) are skipped. Returns ``trials``, ``points``,
        ``replay_matched`` (points whose real validation figures equal the replayed ones)."""
        points_by_trial: dict[int, set[int]] = defaultdict(set)
        for item in point_front:
            points_by_trial[int(item["trial"])].add(int(item["point"]))
        counts = {"trials": 0, "points": 0, "replay_matched": 0}
        for number in sorted(set(front_numbers) | set(points_by_trial)):
            metrics = self.run.read_metrics(number)
            record = read_json(self.run.points_path(number), "re-run the search to evaluate it again")
            points = record["points"]
            trained = next((k for k, p in enumerate(points) if p["trained"]), None)
            wanted = sorted(points_by_trial.get(number, set()) | ({trained} if trained is not None else set()))
            if "test_accuracy" in metrics and all("test_accuracy" in points[k] for k in wanted):
                continue
            config = self.run.read_config(number)
            with pinned_threads(self.threads):
                model = self.model(config)
                real = remeasure(model, self.splits, [points[k]["knobs"] for k in wanted], MEASURE_BATCH_SIZE)
                if trained is None:  # no knobs: the model itself, one real pass of each split
                    val = measure(model, self.splits.val_x, self.splits.val_y, batch_size=MEASURE_BATCH_SIZE)
                    test = measure(model, self.splits.test_x, self.splits.test_y, batch_size=MEASURE_BATCH_SIZE)
                else:  # the trial's own threshold is among the points just measured
                    own = real[wanted.index(trained)]
                    val = {"accuracy": own["accuracy"], "macs": own["macs"], "stats": own["stats"]}
                    test = {"accuracy": own["test_accuracy"], "macs": own["test_macs"]}
            for k, figures in zip(wanted, real):
                replayed = {"accuracy": points[k]["accuracy"], "macs": points[k]["macs"]}
                points[k] = {**points[k], **figures, "replayed": replayed, "test_measured_by": "real"}
                counts["points"] += 1
                counts["replay_matched"] += replayed == {"accuracy": figures["accuracy"], "macs": figures["macs"]}
            record.update(replay_agreement(points))
            replayed = {"accuracy": metrics["accuracy"], "macs": metrics["macs"]}
            metrics.update(accuracy=val["accuracy"], macs=val["macs"], stats=val["stats"], measured_by="real",
                           replayed=replayed, test_accuracy=test["accuracy"], test_macs=test["macs"])
            if "stats" in test:
                metrics["test_stats"] = test["stats"]
            self.run.write_trial(number, {POINTS_FILE: json_bytes(record), METRICS_FILE: json_bytes(metrics)})
            counts["trials"] += 1
        return counts
