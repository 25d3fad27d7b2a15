"""The run's Optuna study: opened from the run directory, its sampler, orphaned trials.

Imports neither Ray nor any mechanism, so reading a run stays light.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from dynsearch.compat import set_trial_user_attr
from dynsearch.errors import UserError
from dynsearch.recipe import Recipe
from dynsearch.run.rundir import RunDir

STUDY_NAME = "dynsearch"


def open_study(run_dir: RunDir | Path, recipe: Recipe | None = None, sampler=None):
    """The run's Optuna study (created when ``recipe`` is given and none exists)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(RunDir.of(run_dir).study_path)))
    if recipe is None:
        return optuna.load_study(study_name=STUDY_NAME, storage=storage)
    study = optuna.create_study(
        study_name=STUDY_NAME,
        storage=storage,
        sampler=sampler,
        directions=["maximize" if m == "max" else "minimize" for m in recipe.metric_modes],
        load_if_exists=True,
    )
    if study.metric_names is None:  # optuna-dashboard then labels the objectives by name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(recipe.metric_names)
    return study


def make_sampler(recipe: Recipe):
    """The recipe's sampler with settings scaled to the trial budget."""
    import optuna

    name = recipe.sampler.name
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=recipe.population_size(), seed=recipe.seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(n_startup_trials=recipe.n_startup_trials(), seed=recipe.seed)
    return optuna.samplers.RandomSampler(seed=recipe.seed)


INTERRUPTED = "interrupted: the search driver stopped while this trial ran"


def fail_orphans(study, reason: str = INTERRUPTED, retry: bool = True) -> list[int]:
    """Mark trials left RUNNING (by a crashed driver) FAIL; return their numbers.

    With ``retry``, each orphan's parameters are queued once more (Optuna's
    ``enqueue_trial``; the next ``ask`` takes them), unless the orphan was
    itself such a retry: a configuration is retried once, not forever.
    """
    from optuna.trial import TrialState

    orphans = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in orphans:
        retried = retry and bool(trial.params) and "retry_of" not in trial.user_attrs
        why = f"{reason}; its parameters are queued for one retry" if retried else reason
        set_trial_user_attr(study, trial.number, "fail_reason", why)  # before FAIL: a finished trial is read-only
        study.tell(trial.number, state=TrialState.FAIL)
        if retried:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    return [trial.number for trial in orphans]


def count_states(study) -> dict[str, int]:
    """How many trials of the study are in each state (``COMPLETE``, ``FAIL``, ...)."""
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


def open_existing(run_dir: RunDir | str | Path):
    """The study of a search's run directory, checked; a one-line UserError when it cannot be read."""
    run = RunDir.existing(run_dir)
    try:
        return open_study(run)
    except Exception as exc:  # a journal that optuna cannot replay
        raise UserError(f"run directory {run_dir}: the study cannot be read ({exc.__class__.__name__}); "
                        "the journal is corrupt") from None
