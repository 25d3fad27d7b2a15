"""The run's Optuna study and trial folders: the search's durable state.

Imports neither Ray nor any mechanism, so reading a run stays light.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dynsearch.errors import UserError
from dynsearch.recipe import Recipe

STUDY_NAME = "dynsearch"
STUDY_FILE = "study.journal"
TRIALS_DIR = "trials"


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


