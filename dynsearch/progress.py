"""A line of progress per trial event during a search (a Ray Tune callback)."""
from __future__ import annotations

import time
from pathlib import Path

from ray import tune
from rich.console import Console
from rich.markup import escape

from dynsearch.study import read_trial_metrics


class Progress(tune.Callback):
    """Prints trials done / running / failed and elapsed time as trials start and end."""

    def __init__(self, total: int, run_dir: Path, console: Console | None = None):
        self.total, self.run_dir = total, run_dir
        self.console = console or Console(stderr=True, highlight=False)
        self.started = time.time()
        self.running: set[str] = set()
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
        self.console.print(
            f"[{elapsed // 60:3d}:{elapsed % 60:02d}] {escape(event)} | {self.done}/{self.total} done, "
            f"{len(self.running)} running, {self.failed} failed{best}",
            soft_wrap=True,
        )

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
        from dynsearch.study import count_states, open_study

        counts = count_states(open_study(self.run_dir))
        self.done = counts.get("COMPLETE", 0)  # kept from earlier runs of this search
        if sum(counts.values()):
            self._line(f"resuming: {self.done} COMPLETE trials kept, {counts.get('FAIL', 0)} FAIL not counted, "
                       f"{counts.get('WAITING', 0)} queued for retry")

    @staticmethod
    def _number(trial) -> int | None:
        config = trial.config.get("dynsearch", {}) if isinstance(trial.config, dict) else {}
        return config.get("trial")

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(trial.trial_id)
        self._line(f"trial {self._number(trial)} started")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        number = self._number(trial)
        metrics = read_trial_metrics(self.run_dir, number) if number is not None else {}
        if metrics.get("status") == "COMPLETE":
            self.done += 1
            accuracy = metrics["accuracy"]
            self.best_accuracy = max(self.best_accuracy or 0.0, accuracy)
            share = metrics["macs"] / metrics["macs_full"]
            self._line(f"trial {number} COMPLETE val acc {accuracy:.3f}, macs {metrics['macs']:,.0f} ({share:.0%} of full)")
        else:
            self.failed += 1
            self._line(f"trial {number} FAIL")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._line(f"trial {self._number(trial)} lost its worker or node; Ray reruns it")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        self.failed += 1
        number = self._number(trial)
        reason = read_trial_metrics(self.run_dir, number).get("reason", "see Ray's error file") if number is not None else ""
        self._line(f"trial {number} FAIL: {reason}")
