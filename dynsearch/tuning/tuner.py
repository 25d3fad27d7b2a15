"""The search: Ray Tune runs the trials, multi-objective Optuna proposes them.

The study lives in the run directory (Optuna journal file storage), so
``pareto``, resume and optuna-dashboard all read the same study. Ray sees only
trial configs and reported metrics; this layer never imports a mechanism: the
trainable (training/trainable.py) is handed in by ``dynsearch.api.search``.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import ray

from dynsearch.compat import init_ray_on_loopback
from dynsearch.data import load_data
from dynsearch.measure.device import resolve_device
from dynsearch.models.user import check_user_backbone
from dynsearch.recipe import Recipe, parse_recipe, recipe_dict
from dynsearch.run.front import trial_counts, write_front
from dynsearch.run.report import write_report
from dynsearch.run.rundir import RunDir
from dynsearch.run.study import count_states, fail_orphans, finish_resume, make_sampler, open_study, prepare_resume
from dynsearch.spaces import check_space, default_backbone
from dynsearch.tracking import SearchTracking, Tracking
from dynsearch.tuning.searcher import StudySearch

Trainable = Callable[..., None]  # training.trainable.run_trial's signature

# -- trial files: written on the driver's node, wherever the trial ran -----
@ray.remote(num_cpus=0)
class TrialFiles:
    """Writes trial folders into the run directory on the driver's node.

    Trials may run on other machines of a cluster with no shared file system;
    they send their files here through Ray's object store.
    """

    def __init__(self, run_dir: str):
        self.run_dir = RunDir(run_dir)

    def write(self, number: int, files: dict[str, bytes]) -> None:
        self.run_dir.write_trial(number, files)


def _trial_files_actor(run_dir: RunDir):
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    return TrialFiles.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False)
    ).remote(str(run_dir))


# -- the driver --------------------------------------------------------------
def init_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Start (or join) the Ray a search runs on; False when one is already initialised in this process.

    ``address`` None or ``"local"``: an embedded local instance held to loopback; otherwise
    ``ray.init(address=...)`` joins that cluster. Several searches in one process (a notebook,
    the benchmarks, the tests) call this once and share the instance; the caller that got
    True shuts it down."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # for the processes Ray starts
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our own progress lines, not Ray's tables
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level="error")
    if address not in (None, "local"):
        ray.init(address=address, **kwargs)
        return True
    # Held to loopback (PITFALLS.md): Ray has no public switch for it, see compat.init_ray_on_loopback.
    init_ray_on_loopback(num_cpus=num_cpus, **kwargs)
    return True


def run_search(recipe: Recipe, out: str | Path, trainable: Trainable, progress=None, new: bool = False) -> Path:
    """Run (or continue) the search ``recipe`` describes in run directory ``out``.

    With ``recipe.address`` the trials run on that existing Ray cluster (the
    driver must run on one of its nodes); the run directory stays with the driver.

    Holds the run directory's lock throughout; refuses to resume a search of a
    different recipe unless ``new`` (then the old search is moved aside).
    Trials a crashed driver left RUNNING are failed and their parameters
    retried once; failed trials are replaced until the study holds
    ``recipe.trials`` COMPLETE trials or this run's attempts are used up.
    ``trainable`` runs one trial in a Ray worker (``training.trainable.run_trial``).
    """
    if recipe.measures_latency and not recipe.latency.resource:
        resolve_device(recipe.latency.device)  # a missing device is the user's to fix, before anything runs
    splits = load_data(recipe.data)  # a user's data or backbone that cannot work fails here, before any file
    data_shape = {"input_shape": tuple(splits.input_shape), "num_classes": splits.num_classes}
    if recipe.backbone.kind == "user":
        check_user_backbone(default_backbone(recipe), splits.input_shape)
    check_space(recipe, SimpleNamespace(**data_shape))
    run_dir = RunDir.create(out)
    with run_dir.locked():
        run_dir.check_resume(recipe_dict(recipe), _normalised_recipe, new=new)
        repaired = prepare_resume(run_dir)  # a torn journal tail is repaired before anything is appended
        run_dir.write_recipe(recipe_dict(recipe))
        tracking = SearchTracking(recipe, run_dir)  # before Ray: a bounded wait for the W&B server
        study = open_study(run_dir, recipe, make_sampler(recipe))
        finish_resume(study, run_dir, repaired)  # trials whose final record was lost, rebuilt from their folders
        fail_orphans(study)
        remaining = recipe.trials - count_states(study).get("COMPLETE", 0)
        if remaining > 0:
            try:
                _fit(recipe, run_dir, splits, trainable, attempts=max_attempts(remaining), progress=progress,
                     tracking=tracking.trials)
            except BaseException:
                tracking.abort()
                raise
        front = write_front(run_dir)
        png, _ = write_report(run_dir)
        tracking.finish(front, png, trial_counts(run_dir))
    return run_dir.path


def _normalised_recipe(data: Any) -> dict[str, Any]:
    """A stored recipe in the form resume compares (raises UserError when it is not a valid recipe)."""
    return recipe_dict(parse_recipe(data, source="recipe"))


def max_attempts(missing_trials: int) -> int:
    """Trials one run may start to get ``missing_trials`` COMPLETE: twice as many, at least 4 spare."""
    return missing_trials + max(4, missing_trials)


def _fit(recipe: Recipe, run_dir: RunDir, splits, trainable: Trainable, attempts: int, progress,
         tracking: Tracking | None = None) -> None:
    from ray import tune

    data_shape = {"input_shape": tuple(splits.input_shape), "num_classes": splits.num_classes}
    searcher = StudySearch(recipe, run_dir, data_shape)
    started_ray = init_ray(recipe.address)
    cpus = max(1, math.ceil(recipe.cpus_per_trial))
    files = _trial_files_actor(run_dir)
    trainable = tune.with_resources(
        tune.with_parameters(
            trainable, recipe_data=recipe_dict(recipe), files=files, cpus=cpus,
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
            storage_path=str(run_dir.ray_dir),
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
        else:  # a Ray instance that outlives this search (benchmarks, notebooks) keeps no actor of it
            ray.kill(files)
