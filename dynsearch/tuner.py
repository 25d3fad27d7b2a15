"""The search: Ray Tune runs the trials, multi-objective Optuna proposes them.

The study lives in the run directory (Optuna journal file storage), so
``pareto``, resume and optuna-dashboard all read the same study. Ray sees only
trial configs and reported metrics; the searcher never imports a mechanism.
"""
from __future__ import annotations

import functools
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from dynsearch.errors import UserError
from dynsearch.recipe import Recipe, is_finite_number, recipe_dict

STUDY_NAME = "dynsearch"
STUDY_FILE = "study.journal"
TRIALS_DIR = "trials"


# -- the study -------------------------------------------------------------
def open_study(run_dir: Path, recipe: Recipe | None = None, sampler=None):
    """The run's Optuna study (created when ``recipe`` is given and none exists)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(run_dir / STUDY_FILE)))
    if recipe is None:
        return optuna.load_study(study_name=STUDY_NAME, storage=storage)
    return optuna.create_study(
        study_name=STUDY_NAME,
        storage=storage,
        sampler=sampler,
        directions=["maximize" if m == "max" else "minimize" for m in recipe.metric_modes],
        load_if_exists=True,
    )


def make_sampler(recipe: Recipe):
    """The recipe's sampler with settings scaled to the trial budget."""
    import optuna

    name = recipe.sampler.name
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=recipe.population_size(), seed=recipe.seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(n_startup_trials=recipe.n_startup_trials(), seed=recipe.seed)
    return optuna.samplers.RandomSampler(seed=recipe.seed)


def fail_orphans(study, reason: str) -> int:
    """Mark trials left RUNNING (by a crashed driver) as FAIL; return how many."""
    from optuna.trial import TrialState

    orphans = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in orphans:
        study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    return len(orphans)


def trial_dir(run_dir: Path, number: int) -> Path:
    return run_dir / TRIALS_DIR / str(number)


def read_trial_metrics(run_dir: Path, number: int) -> dict[str, Any]:
    path = trial_dir(run_dir, number) / "metrics.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable or corrupt ({exc.__class__.__name__}); remove the trial folder") from None


# -- the searcher ----------------------------------------------------------
def _define_trial(space_name: str, recipe: Recipe, data_shape: dict[str, Any], trial) -> dict[str, Any]:
    """Define-by-run function handed to OptunaSearch: the whole trial config sits under one key."""
    from types import SimpleNamespace

    from dynsearch.spaces import get_space

    config = get_space(space_name).define(trial, recipe, SimpleNamespace(**data_shape))
    return {"dynsearch": config}


def _make_searcher(recipe: Recipe, run_dir: Path, data_shape: dict[str, Any], sampler, storage):
    from optuna.trial import TrialState
    from ray.tune.search.optuna import OptunaSearch

    class StudySearch(OptunaSearch):
        """OptunaSearch that never stores a failed, NaN or infinite trial as COMPLETE.

        Ray's OptunaSearch tells an errored trial COMPLETE when it reported
        anything before failing, leaves a NaN trial RUNNING and stores an
        infinite one COMPLETE (PITFALLS.md). Here a trial is COMPLETE only
        when its last result is the final one and every objective is finite;
        otherwise it is FAIL with the reason recorded as ``fail_reason``.
        """

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            ot_trial = self._ot_trials[trial_id]
            values = [None if not result else result.get(m) for m in self.metric]
            reason = None
            if error:
                metrics = read_trial_metrics(run_dir, ot_trial.number)
                reason = metrics.get("reason") or "the trial raised an exception (see Ray's error file)"
            elif not result or not result.get("final"):
                reason = "the trial ended without its final report"
            elif not all(is_finite_number(v) for v in values):
                reason = f"non-finite objective(s) {dict(zip(self.metric, values))}"
            ot_trial.set_user_attr("ray_trial_id", trial_id)
            if reason is None:
                self._ot_study.tell(ot_trial, [float(v) for v in values], state=TrialState.COMPLETE)
            else:
                ot_trial.set_user_attr("fail_reason", reason)
                self._ot_study.tell(ot_trial, None, state=TrialState.FAIL)
            self._completed_trials.add(trial_id)

    return StudySearch(
        space=functools.partial(_define_trial, recipe.space, recipe, data_shape),
        metric=recipe.metric_names,
        mode=recipe.metric_modes,
        sampler=sampler,
        storage=storage,
        study_name=STUDY_NAME,
    )


# -- the trainable (runs in a Ray worker) ----------------------------------
def run_trial(config: dict[str, Any], recipe_data: dict[str, Any], run_dir: str, cpus: int) -> None:
    """Ray Tune function trainable: one Lightning fit, then the final report."""
    import traceback

    import torch
    from ray import tune

    from dynsearch.data import load_splits
    from dynsearch.trial import evaluate, save_trial, train_model, write_json

    torch.set_num_threads(max(1, cpus))
    trial_config = config["dynsearch"]
    folder = trial_dir(Path(run_dir), int(trial_config["trial"]))
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "config.json", trial_config)
    started = time.time()
    try:
        data = recipe_data["data"]
        splits = load_splits(data["name"], data["split_seed"], data["val_fraction"], data["test_fraction"])
        model = train_model(trial_config, splits, report=tune.report)
        metrics = evaluate(model, splits)
    except Exception as exc:
        reason = f"{exc.__class__.__name__}: {exc}".splitlines()[0][:500]
        write_json(
            folder / "metrics.json",
            {"status": "FAIL", "reason": reason, "traceback": traceback.format_exc()[-4000:]},
        )
        raise
    metrics.update(status="COMPLETE", train_seconds=time.time() - started)
    save_trial(folder, trial_config, model, metrics)
    tune.report({**{k: v for k, v in metrics.items() if isinstance(v, (int, float))}, "final": True})


# -- the driver --------------------------------------------------------------
def _init_ray(address: str | None, num_cpus: int | None = None):
    import ray

    if ray.is_initialized():
        return False
    # Held to loopback (PITFALLS.md): without this, Ray advertises the network interface.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level="error")
    if address in (None, "local"):
        ray.init(address="local", num_cpus=num_cpus, _node_ip_address="127.0.0.1", **kwargs)
    else:
        ray.init(address=address, **kwargs)
    return True


def prepare_run_dir(recipe: Recipe, out: str | Path) -> Path:
    """Create the run directory and write the resolved recipe (atomically)."""
    import yaml

    run_dir = Path(out).expanduser().resolve()
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory; choose another path")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create the run directory ({exc.strerror}); choose another path") from None
    if not os.access(run_dir, os.W_OK):
        raise UserError(f"--out {out}: the run directory is not writable; choose another path")
    tmp = run_dir / "recipe.yaml.tmp"
    tmp.write_text(yaml.safe_dump(recipe_dict(recipe), sort_keys=False), encoding="utf-8")
    os.replace(tmp, run_dir / "recipe.yaml")
    return run_dir


def run_search(recipe: Recipe, out: str | Path, address: str | None = None, progress=None) -> Path:
    """Run (or continue) the search ``recipe`` describes in run directory ``out``."""
    from optuna.trial import TrialState
    from ray import tune

    from dynsearch.data import DATASETS
    from dynsearch.front import write_front

    run_dir = prepare_run_dir(recipe, out)
    sampler = make_sampler(recipe)
    study = open_study(run_dir, recipe, sampler)
    fail_orphans(study, "left RUNNING by an earlier driver that stopped")
    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    remaining = recipe.trials - done
    if remaining > 0:
        info = DATASETS[recipe.data.name]
        data_shape = {"input_shape": tuple(info.input_shape), "num_classes": info.num_classes}
        searcher = _make_searcher(recipe, run_dir, data_shape, sampler, study._storage)
        started_ray = _init_ray(address)
        cpus = max(1, math.ceil(recipe.cpus_per_trial))
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, recipe_data=recipe_dict(recipe), run_dir=str(run_dir), cpus=cpus),
            {"cpu": recipe.cpus_per_trial},
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                num_samples=remaining,
                max_concurrent_trials=recipe.concurrent_trials,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=str(run_dir / "ray"),
                verbose=0,
                callbacks=[progress] if progress is not None else None,
            ),
        )
        try:
            tuner.fit()
        finally:
            if started_ray:
                import ray

                ray.shutdown()
    write_front(run_dir)
    return run_dir
