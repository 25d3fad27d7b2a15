"""The multi-trial search: Ray Tune runs the trials, multi-objective Optuna proposes them.

The study lives in the run directory (Optuna journal file storage), so
``pareto``, resume and optuna-dashboard all read the same study. Ray sees only
trial configs and reported metrics. This layer imports no mechanism, model or
data module: ``dynsearch.api.search`` hands it the prepared problem
(``dynsearch.problem.prepare``: data loaded, user code checked), the trainable
(training/trainable.py) and what to write when the search ends (the front and
the report).
"""
from __future__ import annotations

import math
import os
import signal
from pathlib import Path
from typing import Any, Callable

import ray
from ray import tune

from dynsearch import interrupts
from dynsearch.compat import init_ray_on_loopback
from dynsearch.run.front import trial_counts
from dynsearch.run.rundir import RunDir
from dynsearch.run.study import (
    count_done, count_states, fail_orphans, finish_resume, make_sampler, open_study, prepare_resume, rebuild_lost_trials,
)
from dynsearch.tracking import SearchTracking, Tracking
from dynsearch.tuning.schedulers import make_scheduler
from dynsearch.tuning.searcher import StudySearch

Trainable = Callable[..., None]  # training.trainable.run_trial's signature
# What a search leaves when it ends, written under the run directory's lock: given the run
# directory, write the front and the report; return the front and the report's PNG (or None).
Finish = Callable[[Path], "tuple[list[dict[str, Any]], Path | None]"]

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


def run_search(problem, out: str | Path, trainable: Trainable, progress=None, new: bool = False,
               finish: Finish | None = None, outcome: dict[str, Any] | None = None) -> Path:
    """Run (or continue) the search of ``problem`` (a ``dynsearch.problem.Problem``) in run directory ``out``.

    With ``recipe.address`` the trials run on that existing Ray cluster (the
    driver must run on one of its nodes); the run directory stays with the driver.

    Holds the run directory's lock throughout; refuses to resume a search of a
    different recipe unless ``new`` (then the old search is moved aside).
    Trials a crashed driver left RUNNING are failed and their parameters
    retried once; failed trials are replaced until the study holds
    ``recipe.trials`` COMPLETE trials or this run's attempts are used up.
    ``trainable`` runs one trial in a Ray worker (``training.trainable.run_trial``);
    ``finish`` writes what the search leaves (front, report), still under the lock.
    ``outcome``, if given, receives ``out_of_time``: whether the recipe's time budget ended this run.
    """
    recipe = problem.recipe
    run_dir = RunDir.create(out)
    with run_dir.locked():
        run_dir.check_resume(recipe, new=new)
        repaired = prepare_resume(run_dir)  # a torn journal tail is repaired before anything is appended
        run_dir.write_recipe(recipe)
        tracking = SearchTracking(recipe, run_dir)  # before Ray: a bounded wait for the W&B server
        study = open_study(run_dir, recipe, make_sampler(recipe))
        finish_resume(study, run_dir, repaired)  # trials whose final record was lost, rebuilt from their folders
        fail_orphans(study)
        remaining = recipe.trials - count_done(study, recipe)
        if remaining > 0 and not interrupts.requested():
            try:
                out_of_time = _fit(problem, run_dir, trainable, attempts=max_attempts(remaining), progress=progress,
                                   tracking=tracking.trials)
                if outcome is not None:
                    outcome["out_of_time"] = out_of_time
            except BaseException:
                tracking.abort()
                raise
        if interrupts.requested():
            _stop_interrupted(study, run_dir, tracking)
        front, png = finish(run_dir.path) if finish is not None else ([], None)
        tracking.finish(front, png, trial_counts(run_dir), run_dir=run_dir.path)
        interrupts.check(count_states(study).get("COMPLETE", 0))  # a signal while the front was written
    return run_dir.path


def _stop_interrupted(study, run_dir: RunDir, tracking: SearchTracking) -> None:
    """After SIGINT / SIGTERM: keep what finished, fail the trials that were running (their parameters
    queued for one retry, as after a crash), close the W&B run, and raise ``Interrupted``."""
    signum = interrupts.requested()
    rebuild_lost_trials(study, run_dir)  # a trial that wrote its result but was not told yet is kept
    fail_orphans(study, reason=f"interrupted: the search was stopped by {signal.Signals(signum).name} while this trial ran",
                 stopped=True)
    tracking.abort()
    raise interrupts.Interrupted(signum, count_states(study).get("COMPLETE", 0))


def max_attempts(missing_trials: int) -> int:
    """Trials one run may start to get ``missing_trials`` COMPLETE: twice as many, at least 4 spare."""
    return missing_trials + max(4, missing_trials)


class _StopOnSignal(tune.Stopper):
    """Ends the whole experiment once SIGINT / SIGTERM asked the search to stop (interrupts.py); Ray then
    stops the running trials without telling the searcher, so they stay RUNNING for ``_stop_interrupted``."""

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return interrupts.requested() is not None


def _fit(problem, run_dir: RunDir, trainable: Trainable, attempts: int, progress,
         tracking: Tracking | None = None) -> bool:
    """Run Ray Tune's trials; return whether the time budget stopped the searcher (``StudySearch.out_of_time``)."""
    recipe = problem.recipe
    searcher = StudySearch(recipe, run_dir, problem.shape)
    try:
        started_ray = init_ray(recipe.address)
    except SystemExit as exc:  # ray.init's own SIGTERM handler (sys.exit(15)) caught a SIGTERM while it started
        if exc.code != signal.SIGTERM or not interrupts.active():
            raise
        interrupts.record(signal.SIGTERM)
        if ray.is_initialized():
            ray.shutdown()
        return False
    interrupts.reinstall()  # ray.init replaced the SIGTERM handler
    if interrupts.requested():
        if started_ray:
            ray.shutdown()
        return False
    cpus = max(1, math.ceil(recipe.cpus_per_trial))
    files = _trial_files_actor(run_dir)
    trainable = tune.with_resources(
        tune.with_parameters(
            trainable, recipe=recipe, files=files, cpus=cpus, tracking=tracking, splits=problem.splits,
        ),
        {"cpu": recipe.cpus_per_trial, "gpu": recipe.gpus_per_trial},
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=make_scheduler(recipe, run_dir),  # None: Ray's FIFO, every trial runs its epochs
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
            stop=_StopOnSignal(),
        ),
    )
    try:
        tuner.fit()
    finally:
        if started_ray:
            ray.shutdown()
        else:  # a Ray instance that outlives this search (benchmarks, notebooks) keeps no actor of it
            ray.kill(files)
    return searcher.out_of_time
