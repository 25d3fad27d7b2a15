"""The search: Ray Tune runs the trials, multi-objective Optuna proposes them.

The study lives in the run directory (Optuna journal file storage), so
``pareto``, resume and optuna-dashboard all read the same study. Ray sees only
trial configs and reported metrics; the searcher never imports a mechanism.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import ray

from dynsearch.recipe import Recipe, recipe_dict
from dynsearch.study import count_states, fail_orphans, make_sampler, open_study, trial_dir
from dynsearch.tracking import SearchTracking, Tracking

# -- trial files: written on the driver's node, wherever the trial ran -----
@ray.remote(num_cpus=0)
class TrialFiles:
    """Writes trial folders into the run directory on the driver's node.

    Trials may run on other machines of a cluster with no shared file system;
    they send their files here through Ray's object store.
    """

    def __init__(self, run_dir: str):
        self.run_dir = Path(run_dir)

    def write(self, number: int, files: dict[str, bytes]) -> None:
        from dynsearch.trial import write_files

        write_files(trial_dir(self.run_dir, number), files)


def _trial_files_actor(run_dir: Path):
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    return TrialFiles.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False)
    ).remote(str(run_dir))


# -- the trainable (runs in a Ray worker) ----------------------------------
def run_trial(config: dict[str, Any], recipe_data: dict[str, Any], files, cpus: int, tracking=None,
              splits=None) -> None:
    """Ray Tune function trainable: one Lightning fit, then the final report (and its W&B run).

    ``splits``: the data, loaded once by the driver and shipped through Ray's object store
    (a user's data module need not be importable on the workers)."""
    import socket
    import traceback

    import torch
    from ray import tune

    from dynsearch.data import load_data
    from dynsearch.isolation import gate_callback
    from dynsearch.latency import measure_trial_latency
    from dynsearch.operating_points import POINTS_FILE, points_record, sweep
    from dynsearch.tracking import TrialTracker
    from dynsearch.trial import evaluate, json_bytes, train_model, trial_files

    torch.set_num_threads(max(1, cpus))
    trial_config = config["dynsearch"]
    number = int(trial_config["trial"])
    placement = {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname()}
    ray.get(files.write.remote(
        number, {"config.json": json_bytes(trial_config), "placement.json": json_bytes({**placement, "started": time.time()})}
    ))
    started = time.time()
    tracker = None
    try:
        tracker = TrialTracker(tracking, trial_config)
        splits = splits if splits is not None else load_data(recipe_data["data"])
        accelerator = "gpu" if recipe_data["gpus_per_trial"] > 0 else "cpu"
        latency = recipe_data["latency"] if _measures_latency(recipe_data) else None
        callbacks = [gate_callback(str(number))] if latency else []
        model = train_model(trial_config, splits, report=tracker.wrap(tune.report), accelerator=accelerator,
                            callbacks=callbacks, objectives=[o["name"] for o in recipe_data["objectives"]])
        metrics = evaluate(model, splits)
        if latency:
            metrics.update(measure_trial_latency(trial_config, model, splits.val_x, latency))
        sweep_started = time.perf_counter()
        points = sweep(model, splits, metrics["measured_with"]["batch_size"])  # the model is in memory here
        sweep_seconds = time.perf_counter() - sweep_started
    except Exception as caught:
        # The trial's own failure (exception, NaN, out of memory) ends it FAIL without raising:
        # Ray's retries (FailureConfig) are kept for lost workers and nodes, where a rerun helps.
        exc = as_out_of_memory(caught)
        reason = f"{exc.__class__.__name__}: {exc}".splitlines()[0][:500]
        failure = {"status": "FAIL", "reason": reason, "traceback": traceback.format_exc()[-4000:], **placement}
        ray.get(files.write.remote(number, {"metrics.json": json_bytes(failure)}))
        if tracker is not None:
            tracker.finish(fail_reason=reason)
        # Ray checks every result names the objectives; the searcher tells the study FAIL, never NaN.
        objectives = {o["name"]: float("nan") for o in recipe_data["objectives"]}
        tune.report({**objectives, "final": True, "failed": True})
        return
    metrics.update(status="COMPLETE", train_seconds=time.time() - started, **placement)
    written = trial_files(trial_config, model, metrics)
    record = points_record(number, model, points, written["model.safetensors"], metrics["measured_with"], sweep_seconds)
    ray.get(files.write.remote(number, {POINTS_FILE: json_bytes(record), **written}))  # metrics.json last
    tracker.finish(metrics)
    tune.report({**{k: v for k, v in metrics.items() if isinstance(v, (int, float))}, "final": True})


def _measures_latency(recipe_data: dict[str, Any]) -> bool:
    return recipe_data["latency"]["measure"] or any(o["name"] == "latency_ms" for o in recipe_data["objectives"])


def as_out_of_memory(exc: Exception) -> Exception:
    """CPU allocation failures as ``torch.OutOfMemoryError`` (what a GPU raises), with the fix.

    torch's CPU allocator raises a plain RuntimeError ("can't allocate memory").
    """
    import torch

    if not (isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in str(exc)):
        return exc
    first_line = (str(exc).splitlines() or ["out of memory"])[0][:400]
    return torch.OutOfMemoryError(f"{first_line}; make the model or batch_size smaller, or run fewer concurrent_trials")


# -- the driver --------------------------------------------------------------
def _init_ray(address: str | None, num_cpus: int | None = None):
    from ray._private import ray_constants

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # for the processes Ray starts
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our own progress lines, not Ray's tables
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level="error")
    if address not in (None, "local"):
        ray.init(address=address, **kwargs)
        return True
    # Held to loopback (PITFALLS.md). Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, when it is
    # imported, and otherwise resolves 127.0.0.1 to the network interface, where its servers then
    # listen: so the flag is set for this init only, whatever imported Ray first.
    enable_cluster = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(address="local", num_cpus=num_cpus, _node_ip_address="127.0.0.1", **kwargs)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = enable_cluster
    return True


def run_search(recipe: Recipe, out: str | Path, progress=None, new: bool = False) -> Path:
    """Run (or continue) the search ``recipe`` describes in run directory ``out``.

    With ``recipe.address`` the trials run on that existing Ray cluster (the
    driver must run on one of its nodes); the run directory stays with the driver.

    Holds the run directory's lock throughout; refuses to resume a search of a
    different recipe unless ``new`` (then the old search is moved aside).
    Trials a crashed driver left RUNNING are failed and their parameters
    retried once; failed trials are replaced until the study holds
    ``recipe.trials`` COMPLETE trials or this run's attempts are used up.
    """
    from dynsearch.data import load_data
    from dynsearch.front import trial_counts, write_front
    from dynsearch.report import write_report
    from dynsearch.rundir import check_resume, locked, make_run_dir, write_recipe
    from dynsearch.spaces import check_space

    if recipe.measures_latency and not recipe.latency.resource:
        from dynsearch.latency import resolve_device

        resolve_device(recipe.latency.device)  # a missing device is the user's to fix, before anything runs
    splits = load_data(recipe.data)  # a user's data or backbone that cannot work fails here, before any file
    data_shape = {"input_shape": tuple(splits.input_shape), "num_classes": splits.num_classes}
    if recipe.backbone.kind == "user":
        from dynsearch.user_code import check_user_backbone

        check_user_backbone(recipe.backbone.model_dump(), splits.input_shape)
    check_space(recipe, SimpleNamespace(**data_shape))
    run_dir = make_run_dir(out)
    with locked(run_dir):
        check_resume(run_dir, recipe, new=new)
        write_recipe(run_dir, recipe)
        tracking = SearchTracking(recipe, run_dir)  # before Ray: a bounded wait for the W&B server
        study = open_study(run_dir, recipe, make_sampler(recipe))
        fail_orphans(study)
        remaining = recipe.trials - count_states(study).get("COMPLETE", 0)
        if remaining > 0:
            try:
                _fit(recipe, run_dir, splits, attempts=max_attempts(remaining), progress=progress,
                     tracking=tracking.trials)
            except BaseException:
                tracking.abort()
                raise
        front = write_front(run_dir)
        png, _ = write_report(run_dir)
        tracking.finish(front, png, trial_counts(run_dir))
    return run_dir


def max_attempts(missing_trials: int) -> int:
    """Trials one run may start to get ``missing_trials`` COMPLETE: twice as many, at least 4 spare."""
    return missing_trials + max(4, missing_trials)


def _fit(recipe: Recipe, run_dir: Path, splits, attempts: int, progress, tracking: Tracking | None = None) -> None:
    from ray import tune

    from dynsearch.searcher import StudySearch

    data_shape = {"input_shape": tuple(splits.input_shape), "num_classes": splits.num_classes}
    searcher = StudySearch(recipe, run_dir, data_shape)
    started_ray = _init_ray(recipe.address)
    cpus = max(1, math.ceil(recipe.cpus_per_trial))
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial, recipe_data=recipe_dict(recipe), files=_trial_files_actor(run_dir), cpus=cpus,
            tracking=tracking, splits=splits,
        ),
        {"cpu": recipe.cpus_per_trial, "gpu": recipe.gpus_per_trial},
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=attempts,  # the searcher stops earlier, once enough trials are COMPLETE
            max_concurrent_trials=recipe.concurrent_trials,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=str(run_dir / "ray"),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=recipe.trial_retries),
            callbacks=[progress] if progress is not None else None,
        ),
    )
    try:
        tuner.fit()
    finally:
        if started_ray:
            ray.shutdown()
