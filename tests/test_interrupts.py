"""Ctrl-C and SIGTERM stop a real ``dynsearch search`` cleanly, and the same command resumes it.

Real subprocesses (real Ray on loopback, real Optuna journal, Lightning trials).
Ctrl-C to the process group at start-up (a terminal's Ctrl-C) stops with 130. One run
directory goes through a chain of runs of the same command: SIGTERM to the driver
mid-trial (what ``kill`` or a supervisor sends), Ctrl-C twice mid-trial (stop at
once), and a last run that finishes the search. The tests read what each run printed and left.
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from optuna.trial import TrialState

from conftest import TINY_RECIPE, reap_session
from dynsearch import interrupts
from dynsearch.run.study import count_states, open_study

EPOCHS = "60"  # a trial on a warm worker runs seconds: long enough to be seen RUNNING and interrupted
MESSAGE = "interrupted: {} COMPLETE kept; re-run the same command to resume"


def _states(out: Path) -> dict[str, int]:
    return count_states(open_study(out)) if (out / "study.journal").exists() else {}


class _Search:
    """One run of ``dynsearch search`` in its own session, its output in files."""

    def __init__(self, cmd, env, base: Path, name: str):
        self.out_path, self.err_path = base / f"{name}.out", base / f"{name}.err"
        with open(self.out_path, "w") as stdout, open(self.err_path, "w") as stderr:
            self.proc = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=stderr, start_new_session=True)

    def wait_for(self, condition, timeout_s: float = 300) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            assert self.proc.poll() is None, f"the search ended first:\n{self.stderr()[-3000:]}"
            if condition():
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting:\n{self.stderr()[-3000:]}")

    def stderr(self) -> str:
        return self.err_path.read_text()

    def finish(self, timeout_s: float = 120) -> SimpleNamespace:
        try:
            rc = self.proc.wait(timeout=timeout_s)
            self.ended = time.time()
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        left = reap_session(self.proc.pid, grace_s=15)
        return SimpleNamespace(rc=rc, stderr=self.stderr(), stdout=self.out_path.read_text(), left=left)


def _complete(out: Path) -> dict[int, tuple]:
    """COMPLETE trials: number -> (values, metrics.json mtime)."""
    return {t.number: (t.values, (out / "trials" / str(t.number) / "metrics.json").stat().st_mtime_ns)
            for t in open_study(out).get_trials(states=(TrialState.COMPLETE,))}


def _running(out: Path) -> list[int]:
    return [t.number for t in open_study(out).get_trials(states=(TrialState.RUNNING,))]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    base = tmp_path_factory.mktemp("interrupts")
    recipe = base / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)  # 3 trials, 2 at a time
    out = base / "run"
    ray_tmp = tempfile.mkdtemp(prefix="dsi", dir="/tmp")  # short: Ray's socket paths are length-limited
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    cmd = [sys.executable, "-m", "dynsearch.cli", "search", str(recipe), "--epochs", EPOCHS, "--out", str(out)]
    seen = SimpleNamespace(out=out)
    try:
        # 1. SIGTERM to the driver once two trials are COMPLETE and the third RUNNING. Trials 0 and 1 start
        # together and, on quiet cores, end within moments of each other: a SIGTERM sent when only trial 0 was
        # COMPLETE let trial 1 finish (rightly COMPLETE) while the driver stopped. Trial 2 starts when a trial
        # ends, so it still has most of its epochs to run.
        run = _Search(cmd, env, base, "sigterm")
        run.wait_for(lambda: _states(out).get("COMPLETE", 0) >= 2 and _states(out).get("RUNNING", 0) >= 1)
        seen.running_at_sigterm = _running(out)
        os.kill(run.proc.pid, signal.SIGTERM)
        seen.sigterm = run.finish()
        seen.complete_after_sigterm = _complete(out)
        seen.sigterm_states = _states(out)
        # 2. Ctrl-C twice while a trial runs: the second stops at once.
        run = _Search(cmd, env, base, "twice")
        run.wait_for(lambda: _states(out).get("RUNNING", 0) >= 1)
        os.killpg(run.proc.pid, signal.SIGINT)
        run.wait_for(lambda: "stopping the search cleanly" in run.stderr(), timeout_s=30)
        sent = time.time()
        os.killpg(run.proc.pid, signal.SIGINT)
        seen.twice = run.finish()
        seen.twice_exit_s = run.ended - sent
        # 3. The same command once more finishes the search.
        seen.last = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        yield seen
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_ctrl_c_at_start_up_stops_with_130_and_one_message(tmp_path):
    """Ctrl-C to the whole process group (as a terminal sends it) while the search starts; then the
    same command is refused nothing: its run directory is a search not begun (resume = a fresh start)."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "dynsearch.cli", "search", str(recipe), "--epochs", EPOCHS, "--out", str(out)]
    run = _Search(cmd, dict(os.environ), tmp_path, "startup")
    run.wait_for(lambda: (out / "study.journal").exists())
    os.killpg(run.proc.pid, signal.SIGINT)
    done = run.finish()
    assert done.rc == 130, done.stderr[-3000:]
    assert done.stderr.count("dynsearch: " + MESSAGE.format(0)) == 1, done.stderr
    assert done.stderr.count("interrupted:") == 1 and "Traceback" not in done.stderr
    states = _states(out)
    assert states.get("RUNNING", 0) == 0 and states.get("COMPLETE", 0) == 0
    assert done.stdout == "" and done.left == []  # no front table printed; no process outlived the driver


@pytest.mark.slow
def test_sigterm_mid_trial_exits_143_keeps_complete_and_queues_running_trials(chain):
    run = chain.sigterm
    assert run.rc == 143, run.stderr[-3000:]
    kept = len(chain.complete_after_sigterm)
    assert kept >= 1 and run.stderr.count("dynsearch: " + MESSAGE.format(kept)) == 1, run.stderr
    assert "Traceback" not in run.stderr and run.stdout == "" and run.left == []
    assert chain.sigterm_states.get("RUNNING", 0) == 0  # the journal holds no trial left running
    trials = {t.number: t for t in open_study(chain.out).get_trials()}
    assert chain.running_at_sigterm
    for number in chain.running_at_sigterm:  # failed with the reason, and queued: retried exactly once
        assert trials[number].state == TrialState.FAIL
        assert "stopped by SIGTERM" in trials[number].user_attrs["fail_reason"]
        retries = [t for t in trials.values() if t.user_attrs.get("retry_of") == number]
        assert len(retries) == 1 and retries[0].system_attrs["fixed_params"] == trials[number].params


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once(chain):
    run = chain.twice
    assert run.rc == 130, run.stderr[-3000:]
    assert chain.twice_exit_s < 10 and "again: stopping now" in run.stderr
    assert run.left == [], run.left  # Ray's processes share the driver's fate


@pytest.mark.slow
def test_the_same_command_then_finishes_with_nothing_lost_or_run_twice(chain):
    assert chain.last.returncode == 0, chain.last.stderr[-3000:]
    assert "resuming:" in chain.last.stderr
    trials = open_study(chain.out).get_trials()
    assert [t.number for t in trials] == list(range(len(trials)))
    states = count_states(open_study(chain.out))
    assert states.get("COMPLETE") == 3 and set(states) <= {"COMPLETE", "FAIL"}  # none RUNNING or WAITING
    now = _complete(chain.out)
    for number, before in chain.complete_after_sigterm.items():  # kept, not trained again
        assert now[number] == before
    # Nothing run twice: each interrupted trial was queued again at most once, no COMPLETE one ever.
    sources = [t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs]
    assert len(sources) == len(set(sources))
    assert all(trials[n].state == TrialState.FAIL for n in sources)


def test_a_signal_while_stopping_on_signals_is_recorded_not_raised():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with interrupts.stop_on_signals():
        assert os.environ["TUNE_DISABLE_SIGINT_HANDLER"] == "1"
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.time() + 5
        while interrupts.requested() is None and time.time() < deadline:
            time.sleep(0.01)
        assert interrupts.requested() == signal.SIGTERM
        with pytest.raises(interrupts.Interrupted) as caught:
            interrupts.check(complete=2)
        assert caught.value.exit_code == 143 and str(caught.value) == MESSAGE.format(2)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert interrupts.requested() is None and "TUNE_DISABLE_SIGINT_HANDLER" not in os.environ


def test_trials_stopped_by_a_signal_are_queued_again_even_as_retries(tmp_path):
    from dynsearch.recipe import load_recipe
    from dynsearch.run.study import fail_orphans, make_sampler

    recipe = load_recipe(None)
    study = open_study(tmp_path, recipe, make_sampler(recipe))
    first = study.ask()
    first.suggest_float("lr", 1e-3, 1e-2)
    assert fail_orphans(study, reason="interrupted: stopped", stopped=True) == [first.number]
    retry = study.ask()  # the queued retry, stopped again before its space suggested anything
    assert retry.user_attrs == {"retry_of": first.number, "retry_after": "stop"} and retry.params == {}
    assert fail_orphans(study) == [retry.number]  # then the driver died: still its first crash
    [again] = study.get_trials(states=(TrialState.WAITING,))
    assert again.user_attrs == {"retry_of": retry.number, "retry_after": "crash"}
    assert again.system_attrs["fixed_params"] == first.params  # the parameters survived both
    third = study.ask()
    assert third.suggest_float("lr", 1e-3, 1e-2) == first.params["lr"]
    assert fail_orphans(study) == [third.number]  # a second crash: not queued again
    assert not study.get_trials(states=(TrialState.WAITING,))


def test_paused_gives_back_the_usual_handling_for_a_loop_without_stop_points():
    # Python's own handler, as a terminal starts it (a background job of a shell inherits SIGINT ignored,
    # and paused() gives back whatever was there before: that is checked with the handler set here).
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with interrupts.stop_on_signals():
            ours = signal.getsignal(signal.SIGINT)
            with interrupts.paused():  # the one-shot search: Ctrl-C raises KeyboardInterrupt there
                assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
                assert "TUNE_DISABLE_SIGINT_HANDLER" not in os.environ
                with pytest.raises(KeyboardInterrupt):
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(5)
            assert signal.getsignal(signal.SIGINT) is ours and os.environ["TUNE_DISABLE_SIGINT_HANDLER"] == "1"
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, inherited)
