"""The Ray Tune trainable: one trial in a Ray worker (train, measure, sweep, report, write its files).

The search layer (tuning/) hands this function to Ray Tune without importing
it: ``dynsearch.api.search`` passes it in, so the search never imports a
mechanism. The trial's files travel to the driver's node through the
``files`` actor handle (tuning/tuner.py: ``TrialFiles``).
"""
from __future__ import annotations

import socket
import time
import traceback
from typing import Any

import ray
import torch
from ray import tune

from dynsearch.data import load_data
from dynsearch.measure.device import pin_threads
from dynsearch.measure.points import operating_points, point_front_objectives, points_record
from dynsearch.recipe import Recipe
from dynsearch.run.rundir import WEIGHTS_FILE, config_and_placement_files, metrics_file, points_file, trial_files
from dynsearch.tracking import TrialTracker
from dynsearch.training.lightning import GateCallback
from dynsearch.training.timing import measure_trial_latency
from dynsearch.training.trial import evaluate, train_model


# -- the trainable (runs in a Ray worker) ----------------------------------
def run_trial(config: dict[str, Any], recipe: Recipe, files, cpus: int, tracking=None, splits=None) -> None:
    """Ray Tune function trainable: one Lightning fit, then the final report (and its W&B run).

    ``config``: the trial config the searcher proposed (tuning/searcher.py), as ``build_model`` takes it.
    ``splits``: the data, loaded once by the driver and shipped through Ray's object store
    (a user's data module need not be importable on the workers)."""
    pin_threads(cpus)
    number = int(config["trial"])
    placement = {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname()}
    ray.get(files.write.remote(number, config_and_placement_files(config, {**placement, "started": time.time()})))
    started = time.time()
    clock = Stopwatch()
    tracker = None
    try:
        tracker = TrialTracker(tracking, config)  # a W&B run's start (seconds when offline or unreachable)
        splits = splits if splits is not None else load_data(recipe.data)
        accelerator = "gpu" if recipe.gpus_per_trial > 0 else "cpu"
        latency = recipe.latency if recipe.measures_latency else None
        callbacks = [GateCallback(str(number))] if latency else []
        clock.lap("setup")
        model = train_model(config, splits, report=tracker.wrap(tune.report), accelerator=accelerator,
                            callbacks=callbacks, objectives=recipe.metric_names)
        clock.lap("training")
        # The trained point, validation and test (and under the recipe's shift when macs_shifted is an objective).
        metrics = evaluate(model, splits, shift=recipe.shift if recipe.measures_shift else None)
        clock.lap("evaluation")
        if latency:
            metrics.update(measure_trial_latency(config, model, splits.val_x, latency))
            clock.lap("latency")
        points = operating_points(model, splits, metrics["measured_with"]["batch_size"], trained=metrics,
                                  front_on=point_front_objectives(recipe))  # the model is in memory here
        sweep_seconds = clock.lap("sweep")
    except SystemExit:  # Ray stopped the trial at a report: its scheduler pruned it, or the search is stopping
        if tracker is not None:
            tracker.finish(stopped=True)
        raise
    except Exception as caught:
        # The trial's own failure (exception, NaN, out of memory) ends it FAIL without raising:
        # Ray's retries (FailureConfig) are kept for lost workers and nodes, where a rerun helps.
        exc = as_out_of_memory(caught)
        reason = f"{exc.__class__.__name__}: {exc}".splitlines()[0][:500]
        failure = {"status": "FAIL", "reason": reason, "traceback": traceback.format_exc()[-4000:], **placement}
        ray.get(files.write.remote(number, metrics_file(failure)))
        if tracker is not None:
            tracker.finish(fail_reason=reason)
        # Ray checks every result names the objectives; the searcher tells the study FAIL, never NaN.
        objectives = {name: float("nan") for name in recipe.metric_names}
        tune.report({**objectives, "final": True, "failed": True})
        return
    # train_seconds: the whole trial function; seconds: its parts (setup, training, evaluation, latency, sweep).
    metrics.update(status="COMPLETE", train_seconds=time.time() - started, seconds=clock.laps, **placement)
    written = trial_files(config, model, metrics)
    record = points_record(number, model, points, written[WEIGHTS_FILE], metrics["measured_with"], sweep_seconds)
    ray.get(files.write.remote(number, {**points_file(record), **written}))  # metrics last
    tracker.finish(metrics)
    tune.report({**{k: v for k, v in metrics.items() if isinstance(v, (int, float))}, "final": True})


class Stopwatch:
    """Seconds spent in each part of a trial (``laps``: part name -> seconds), recorded in metrics.json."""

    def __init__(self):
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, part: str) -> float:
        now = time.perf_counter()
        self.laps[part] = round(now - self._last, 3)
        self._last = now
        return self.laps[part]


def as_out_of_memory(exc: Exception) -> Exception:
    """CPU allocation failures as ``torch.OutOfMemoryError`` (what a GPU raises), with the fix.

    torch's CPU allocator raises a plain RuntimeError ("can't allocate memory").
    """
    if not (isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in str(exc)):
        return exc
    first_line = (str(exc).splitlines() or ["out of memory"])[0][:400]
    return torch.OutOfMemoryError(f"{first_line}; make the model or batch_size smaller, or run fewer concurrent_trials")
