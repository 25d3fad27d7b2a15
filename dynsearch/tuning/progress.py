"""A line of progress per trial event during a search (a Ray Tune callback).

Each line: trials done / running / failed, elapsed time, best validation
accuracy and, once a trial is COMPLETE, the search's ETA (the mean wall time of
the trials COMPLETE in this run, times the trials still wanted, over the trials
run at once); when a trial changes the Pareto front, one more line lists the
front so far (from the study, so it follows the recipe's objectives). While a
trial trains, an epoch line (epoch, validation accuracy, seconds) is printed at
most every ``EPOCH_LINE_EVERY_S`` seconds per trial, so long trials are never
silent and short ones print none.
"""
from __future__ import annotations

import time
from pathlib import Path

from ray import tune
from rich.console import Console
from rich.markup import escape

from dynsearch.recipe import is_finite_number
from dynsearch.run.front import front_trials
from dynsearch.run.rundir import RunDir
from dynsearch.run.study import count_states, open_study

MAX_FRONT_POINTS = 8  # points shown on the front line
EPOCH_LINE_EVERY_S = 10.0  # at most one epoch line per trial this often
TRIAL_PARTS = ("setup", "training", "evaluation", "latency", "sweep")  # a trial's parts in the order they run


def _compact(value: float) -> str:
    """0.9917 -> '0.992'; 152704 -> '153k'; 1234567 -> '1.23M'."""
    if abs(value) < 10:
        return f"{value:.3f}"
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.0f}"


def front_line(study, objectives: list[str]) -> str:
    """The study's non-dominated trials as 'front (accuracy, macs): 0.992/153k 0.989/51k ...'."""
    points = sorted((t.values for t in front_trials(study)), key=lambda values: [-v for v in values])
    shown = " ".join("/".join(_compact(v) for v in values) for values in points[:MAX_FRONT_POINTS])
    more = f" (+{len(points) - MAX_FRONT_POINTS} more)" if len(points) > MAX_FRONT_POINTS else ""
    return f"front ({', '.join(objectives)}): {shown}{more}"


def clock(seconds: float) -> str:
    """125 -> '2:05'; 3725 -> '1:02:05'."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def eta_seconds(durations: list[float], wanted: int, concurrent: int) -> float | None:
    """The seconds left for ``wanted`` more trials, run ``concurrent`` at a time, from finished trials'
    wall times (``durations``); None before any trial finished."""
    if not durations:
        return None
    return sum(durations) / len(durations) * max(0, wanted) / max(1, concurrent)


def time_split(metrics: dict) -> str:
    """', 41.2 s: setup 0.1, training 38.0, evaluation 0.9, sweep 2.2': where a trial's seconds went (metrics.json
    ``train_seconds`` and ``seconds``); empty for trials that recorded no split."""
    parts = metrics.get("seconds")
    if not isinstance(parts, dict) or "train_seconds" not in metrics:
        return ""
    order = [name for name in TRIAL_PARTS if name in parts] + sorted(set(parts) - set(TRIAL_PARTS))
    return f", {metrics['train_seconds']:.1f} s: " + ", ".join(f"{name} {parts[name]:.1f}" for name in order)


class Progress(tune.Callback):
    """Prints trials done / running / failed and elapsed time as trials start and end."""

    def __init__(self, total: int, run_dir: Path, console: Console | None = None,
                 objectives: list[str] | None = None, concurrent: int = 1, prunes: bool = False):
        self.total, self.run_dir, self.concurrent = total, run_dir, max(1, concurrent)
        self.prunes = prunes  # a scheduler stops trials: PRUNED trials count as done (recipe.trials)
        self.objectives = objectives or ["accuracy", "macs"]
        self.front_shown = ""
        self.console = console or Console(stderr=True, highlight=False)
        self.started = time.time()
        self.running: set[str] = set()
        self.trial_started: dict[str, float] = {}  # Ray trial id -> when it started (this run)
        self.last_epoch_line: dict[str, float] = {}  # Ray trial id -> when it last printed a line
        self.durations: list[float] = []  # wall seconds of the trials COMPLETE (and PRUNED) in this run
        self.done = self.failed = 0
        self.best_accuracy: float | None = None

    def __getstate__(self):  # Ray pickles callbacks; a console holds a lock
        return {k: v for k, v in self.__dict__.items() if k != "console"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.console = Console(stderr=True, highlight=False)

    def _line(self, event: str) -> None:
        elapsed = int(time.time() - self.started)
        best = "" if self.best_accuracy is None else f", best val acc {self.best_accuracy:.3f}"
        eta = eta_seconds(self.durations, self.total - self.done, min(self.concurrent, self.total - self.done or 1))
        left = "" if eta is None or self.done >= self.total else f", ETA {clock(eta)}"
        self.console.print(
            f"[{elapsed // 60:3d}:{elapsed % 60:02d}] {escape(event)} | {self.done}/{self.total} done, "
            f"{len(self.running)} running, {self.failed} failed{best}{left}",
            soft_wrap=True,
        )

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
        counts = count_states(open_study(self.run_dir))
        self.done = counts.get("COMPLETE", 0) + (counts.get("PRUNED", 0) if self.prunes else 0)  # from earlier runs
        if sum(counts.values()):
            pruned = f", {counts.get('PRUNED', 0)} PRUNED" if self.prunes else ""
            self._line(f"resuming: {counts.get('COMPLETE', 0)} COMPLETE{pruned} trials kept, "
                       f"{counts.get('FAIL', 0)} FAIL not counted, "
                       f"{counts.get('WAITING', 0)} queued for retry")

    @staticmethod
    def _number(trial) -> int | None:
        """The study's trial number: Ray's config is the trial config (tuning/searcher.py)."""
        return trial.config.get("trial") if isinstance(trial.config, dict) else None

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(trial.trial_id)
        self.trial_started[trial.trial_id] = self.last_epoch_line[trial.trial_id] = time.time()
        self._line(f"trial {self._number(trial)} started")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        """An epoch line for a trial that has printed nothing for ``EPOCH_LINE_EVERY_S`` seconds."""
        if result.get("final") or "epoch" not in result:
            return
        now = time.time()
        if now - self.last_epoch_line.get(trial.trial_id, 0.0) < EPOCH_LINE_EVERY_S:
            return
        self.last_epoch_line[trial.trial_id] = now
        epochs = (trial.config.get("train") or {}).get("epochs") if isinstance(trial.config, dict) else None
        of = f"/{epochs}" if epochs else ""
        accuracy = result.get("accuracy")
        acc = f"val acc {accuracy:.3f}" if isinstance(accuracy, float) and accuracy == accuracy else "val acc -"
        epoch_s = result.get("time_this_iter_s")
        per_epoch = f"{epoch_s:.1f} s this epoch, " if isinstance(epoch_s, (int, float)) else ""
        so_far = now - self.trial_started.get(trial.trial_id, now)
        self._line(f"trial {self._number(trial)} epoch {int(result['epoch']) + 1}{of}: {acc} "
                   f"({per_epoch}{so_far:.0f} s so far)")

    def _ended(self, trial, complete: bool) -> None:
        self.running.discard(trial.trial_id)
        started = self.trial_started.pop(trial.trial_id, None)
        self.last_epoch_line.pop(trial.trial_id, None)
        if started is not None and complete:  # a trial failing at once says nothing of the time left
            self.durations.append(time.time() - started)

    def on_trial_complete(self, iteration, trials, trial, **info):
        number = self._number(trial)
        metrics = RunDir.of(self.run_dir).read_metrics(number) if number is not None else {}
        status = metrics.get("status")
        self._ended(trial, complete=status == "COMPLETE" or (status == "PRUNED" and self.prunes))
        if status == "PRUNED":
            self.done += 1
            measured = ", ".join(f"{name} {_compact(metrics[name])}" for name in self.objectives if name in metrics)
            self._line(f"trial {number} PRUNED after epoch {metrics.get('pruned_at_epoch')}: {measured} "
                       "(not in the best of its rung)")
        elif status == "COMPLETE":
            self.done += 1
            accuracy = metrics["accuracy"]
            self.best_accuracy = max(self.best_accuracy or 0.0, accuracy)
            share = metrics["macs"] / metrics["macs_full"]
            shifted = (f", macs shifted {metrics['macs_shifted']:,.0f} ({metrics['macs_shifted'] / metrics['macs'] - 1:+.0%})"
                       if is_finite_number(metrics.get("macs_shifted")) else "")
            self._line(f"trial {number} COMPLETE val acc {accuracy:.3f}, macs {metrics['macs']:,.0f} ({share:.0%} of full)"
                       f"{shifted}{time_split(metrics)}")
            self._front()
        else:
            self.failed += 1
            self._line(f"trial {number} FAIL")

    def _front(self) -> None:
        # The searcher has told the study before Ray calls this callback.
        line = front_line(open_study(self.run_dir), self.objectives)
        if line != self.front_shown:
            self.front_shown = line
            self.console.print(f"{'':9}{line}", soft_wrap=True)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._line(f"trial {self._number(trial)} lost its worker or node; Ray reruns it")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trial, complete=False)
        self.failed += 1
        number = self._number(trial)
        reason = RunDir.of(self.run_dir).read_metrics(number).get("reason", "see Ray's error file") if number is not None else ""
        self._line(f"trial {number} FAIL: {reason}")
