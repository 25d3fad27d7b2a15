"""The run's Optuna study: opened from the run directory, its sampler, orphaned and lost trials.

Every command that opens an existing study goes through ``open_existing`` (pareto,
export, report, operating points) or ``prepare_resume`` (a resumed search): the
journal is checked first (run/journal.py) and a torn tail repaired under the
run directory's lock, then trials whose final record was lost are rebuilt from
their trial folders. Imports neither Ray nor any mechanism, so reading a run stays light.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from dynsearch.compat import set_trial_user_attr
from dynsearch.errors import UserError
from dynsearch.recipe import Recipe, is_finite_number
from dynsearch.run import journal
from dynsearch.run.rundir import METRICS_FILE, RunDir, metrics_file

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


# What a scheduler (tuning/schedulers.py) records on a trial: each rung it reached, ``rung_<epochs>`` ->
# {objective: value measured there}, and the rung it was stopped at.
RUNG_PREFIX = "rung_"
PRUNED_AT = "pruned_at_epoch"


def pruned_metrics(trial_user_attrs: dict) -> dict:
    """What a pruned trial's metrics.json holds: status, the rung it reached and its objectives there."""
    rung = int(trial_user_attrs[PRUNED_AT])
    return {"status": "PRUNED", "pruned_at_epoch": rung, **trial_user_attrs.get(f"{RUNG_PREFIX}{rung}", {})}


INTERRUPTED = "interrupted: the search driver stopped while this trial ran"


def fail_orphans(study, reason: str = INTERRUPTED, retry: bool = True, stopped: bool = False) -> list[int]:
    """Mark trials left RUNNING (by a crashed driver) FAIL; return their numbers.

    With ``retry``, each orphan's parameters are queued once more (Optuna's
    ``enqueue_trial``; the next ``ask`` takes them), unless the orphan was
    itself such a retry: a configuration is retried once, not forever (it may be
    what crashed the driver). ``stopped``: the search was stopped on purpose (SIGINT /
    SIGTERM), no fault of the trial's, so its parameters are queued again even if it was a retry.
    """
    from optuna.trial import TrialState

    orphans = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in orphans:
        # A queued retry stopped before its space had suggested everything holds its parameters as Optuna's
        # fixed_params (what enqueue_trial stored), not yet as params.
        params = trial.params or trial.system_attrs.get("fixed_params") or {}
        # Only a crash counts against the once: a trial that was itself queued after a stop may be retried.
        first = "retry_of" not in trial.user_attrs or trial.user_attrs.get("retry_after") == "stop"
        retried = retry and bool(params) and (stopped or first)
        why = f"{reason}; its parameters are queued for one retry" if retried else reason
        set_trial_user_attr(study, trial.number, "fail_reason", why)  # before FAIL: a finished trial is read-only
        study.tell(trial.number, state=TrialState.FAIL)
        if retried:
            study.enqueue_trial(dict(params), user_attrs={"retry_of": trial.number,
                                                          "retry_after": "stop" if stopped else "crash"})
    return [trial.number for trial in orphans]


def done_states(recipe: Recipe) -> tuple:
    """The trial states that count towards ``recipe.trials``: COMPLETE, and PRUNED where a scheduler prunes."""
    from optuna.trial import TrialState

    return (TrialState.COMPLETE, TrialState.PRUNED) if recipe.prunes else (TrialState.COMPLETE,)


def count_done(study, recipe: Recipe) -> int:
    """The trials of ``study`` that count towards ``recipe.trials`` (``done_states``)."""
    return len(study.get_trials(deepcopy=False, states=done_states(recipe)))


def count_states(study) -> dict[str, int]:
    """How many trials of the study are in each state (``COMPLETE``, ``FAIL``, ...)."""
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


def _memory_study(data: bytes):
    """A study read from journal bytes held in memory: what a command that may not write sees.

    Appends (a rebuilt trial) stay in memory; the run directory is not touched.
    """
    import json

    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import BaseJournalBackend

    class MemoryBackend(BaseJournalBackend):
        def __init__(self, logs):
            self.logs = logs

        def read_logs(self, log_number_from: int):
            return list(self.logs[log_number_from:])

        def append_logs(self, logs) -> None:
            self.logs.extend(json.loads(json.dumps(log)) for log in logs)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logs = [json.loads(line) for line in data.splitlines() if line.strip()]
    return optuna.load_study(study_name=STUDY_NAME, storage=JournalStorage(MemoryBackend(logs)))


def _objective_names(study, run: RunDir) -> list[str]:
    if study.metric_names:
        return list(study.metric_names)
    return run.read_recipe().metric_names


def rebuild_lost_trials(study, run: RunDir) -> tuple[list[int], list[int]]:
    """Tell the study the result of each RUNNING trial whose folder holds a finished one.

    For a trial left RUNNING with no search running (its final record was lost
    to a torn journal, or the driver died between writing the folder and
    telling the study): a complete trial folder (``RunDir.finished_result``)
    makes it COMPLETE with the objectives its metrics recorded, the values the
    search would have told; a FAIL folder makes it FAIL with its reason, a PRUNED one PRUNED. Either
    way the trial gets the user attribute ``rebuilt_from`` (the metrics file).
    Returns ``(rebuilt, left)``: the numbers rebuilt and those still RUNNING
    (no finished folder: resume fails and retries them, ``fail_orphans``).
    """
    from optuna.trial import TrialState

    rebuilt, left = [], []
    names = None
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        metrics = run.finished_result(trial.number)
        if metrics is None and PRUNED_AT in trial.user_attrs:  # the scheduler stopped it; the driver died before telling
            metrics = pruned_metrics(trial.user_attrs)
            run.write_trial(trial.number, metrics_file(metrics))
        if metrics is None:
            left.append(trial.number)
            continue
        names = names or _objective_names(study, run)
        values = [metrics.get(name) for name in names]
        if metrics["status"] == "COMPLETE" and not all(is_finite_number(v) for v in values):
            left.append(trial.number)
            continue
        set_trial_user_attr(study, trial.number, "rebuilt_from", str(run.metrics_path(trial.number)))
        if metrics["status"] == "COMPLETE":
            study.tell(trial.number, [float(v) for v in values], state=TrialState.COMPLETE)
        elif metrics["status"] == "PRUNED":
            rung = metrics.get("pruned_at_epoch")
            if PRUNED_AT not in trial.user_attrs and isinstance(rung, int):  # a torn journal lost the scheduler's records
                set_trial_user_attr(study, trial.number, PRUNED_AT, rung)
                set_trial_user_attr(study, trial.number, f"{RUNG_PREFIX}{rung}",
                                    {name: metrics[name] for name in names if is_finite_number(metrics.get(name))})
            study.tell(trial.number, state=TrialState.PRUNED)
        else:
            reason = str(metrics.get("reason") or "the trial failed (see its folder)")
            set_trial_user_attr(study, trial.number, "fail_reason", reason)
            study.tell(trial.number, state=TrialState.FAIL)
        rebuilt.append(trial.number)
    return rebuilt, left


def _rebuilt_words(study, rebuilt: list[int], left: list[int], retry: str) -> list[str]:
    words = []
    if rebuilt:
        states = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
        done = ", ".join(f"{n} {states.get(n, '?')}" for n in rebuilt)
        words.append(f"trial(s) whose final record was lost rebuilt from their {METRICS_FILE}: {done}")
    if left:
        words.append(f"trial(s) {', '.join(map(str, left))} left RUNNING with no finished folder: {retry}")
    return words


def _empty_journal(run: RunDir, found: "journal.Scan") -> UserError:
    what = "is empty (0 bytes)" if not found.size else f"holds no complete record ({found.size} bytes)"
    trials = run.trial_numbers()
    if trials:
        return UserError(f"{run.study_path}: {what} but {len(trials)} trial folder(s) exist: the study was lost; "
                         f"restore {run.study_path.name} from a backup, or start over with "
                         f"'dynsearch search ... --out {run.path} --new' (the old search is kept)")
    return UserError(f"{run.study_path}: {what}: the search recorded no trial; "
                     f"run 'dynsearch search ... --out {run.path}' to start it")


def prepare_resume(run: RunDir) -> str | None:
    """Before a resumed search opens its study (holding the run directory's lock): check the
    journal, repair a torn tail; returns what was done (None: nothing), for ``finish_resume``.

    An empty journal (or one with no complete record) starts the search afresh when no
    trial folder exists; with trial folders it is a UserError (the study was lost).
    A damaged middle record is a UserError; nothing is written then.
    """
    if not run.has_study():
        return None
    found = journal.scan(run)
    if not found.records:
        if run.trial_numbers():
            raise _empty_journal(run, found)
        if not found.size:
            return None  # Optuna creates the study in the empty file
    if found.clean:
        return None
    return journal.repair(run, found)


def finish_resume(study, run: RunDir, repaired: str | None) -> None:
    """After a resumed search opened its study: rebuild lost trials and say so, in one line, with the repair."""
    rebuilt, left = rebuild_lost_trials(study, run)
    words = ([repaired] if repaired else []) + _rebuilt_words(study, rebuilt, left, "failed and queued for one retry")
    if repaired and not (rebuilt or left):
        words.append("no trial was left without its result")
    if words:
        journal.notice("; ".join(words))


def open_existing(run_dir: RunDir | str | Path):
    """The study of a search's run directory, checked; a one-line UserError when it cannot be read.

    A torn journal tail is repaired and trials whose final record was lost are
    rebuilt (``rebuild_lost_trials``), in place when the run directory's lock
    is free (no search runs there), with one line on stderr saying what was done.
    While a search holds the lock the study is read without the torn bytes and
    nothing is written (a torn last line is then usually that search's append in
    progress); where the run directory cannot be written, the repair and rebuild
    are made in memory only, and the line says so.
    """
    run = RunDir.existing(run_dir)
    found = journal.scan(run)
    if not found.records:
        raise _empty_journal(run, found)
    study = None
    if found.clean:
        study = _open_checked(run, run_dir)
        if not _has_running(study):
            return study
    with run.try_locked() as lock:
        if lock == "held":
            found = journal.scan(run)  # again, now that no search can write (one may have ended meanwhile)
            if not found.records:
                raise _empty_journal(run, found)
            repaired = journal.repair(run, found) if not found.clean else None
            study = _open_checked(run, run_dir)
            rebuilt, left = rebuild_lost_trials(study, run)
            words = ([repaired] if repaired else []) + _rebuilt_words(
                study, rebuilt, left, f"'dynsearch search ... --out {run.path}' retries them")
            if words:
                journal.notice("; ".join(words))
            return study
    if lock == "busy":
        if study is not None:
            return study  # RUNNING trials are the live search's
        if not found.in_flight:
            journal.notice(f"{run.study_path}: {found.damage()}; a search is running in {run.path}, "
                           "so it is read without the damaged bytes and left as it is")
        return _memory_checked(found.repaired(), run_dir)
    study = _memory_checked(found.repaired(), run_dir)
    rebuilt, left = rebuild_lost_trials(study, run)
    words = ([f"{run.study_path}: {found.damage()}"] if not found.clean else []) + _rebuilt_words(
        study, rebuilt, left, "they are missing from the front")
    if words:
        journal.notice("; ".join(words) + f"; {run.path} is not writable, so this was repaired in memory only")
    return study


def _has_running(study) -> bool:
    from optuna.trial import TrialState

    return bool(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def _open_checked(run: RunDir, run_dir):
    try:
        return open_study(run)
    except Exception as exc:  # a journal that optuna cannot replay
        raise UserError(f"run directory {run_dir}: the study cannot be read ({exc.__class__.__name__}); "
                        "the journal is corrupt") from None


def _memory_checked(data: bytes, run_dir):
    try:
        return _memory_study(data)
    except Exception as exc:
        raise UserError(f"run directory {run_dir}: the study cannot be read ({exc.__class__.__name__}); "
                        "the journal is corrupt") from None
