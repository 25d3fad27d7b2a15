"""Never lose a search: kill -9 the driver mid-run, re-run the same command, and check what survived.

One real search (subprocess, real Ray on loopback, real Optuna journal) is
killed with its whole process group once a trial is COMPLETE and another is
RUNNING, then the same command is run again. The tests below read what that
left: the study, the run directory, the processes' sockets and outputs.
"""
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import yaml
from optuna.trial import TrialState

from dynsearch import cli
from conftest import TINY_RECIPE, reap_session, session_processes
from dynsearch.errors import UserError
from dynsearch.run.rundir import RunDir
from dynsearch.run.study import count_states, fail_orphans, open_study

SENTINEL = "wandb-sentinel-7c1f3a9e5b2d"  # a fake WANDB_API_KEY that must never be written anywhere
# 30 epochs (3-5 s a trial) left too short a window on a quiet, fast machine (the whole search took
# 13 s and ended before it could be killed). 60 epochs: a trial runs ~12 s on 2 quiet cores, so the third
# trial stays RUNNING for seconds after the first is COMPLETE, well over the poll's 0.2 s (150 epochs cost
# the resumed search another ~55 s for nothing; test_interrupts.py uses 60 as well).
KILLED_EPOCHS = "60"
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _listening(procs):
    sockets, names = [], []
    for proc in procs:
        try:
            names.append(" ".join(proc.cmdline()))
            sockets += [(c.laddr.ip, c.laddr.port, proc.name()) for c in proc.net_connections("inet")
                        if c.status == psutil.CONN_LISTEN]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return sockets, names


def _has_sentinel_env(procs) -> bool:
    for proc in procs:
        try:
            if proc.environ().get("WANDB_API_KEY") == SENTINEL and proc.name().startswith("ray::"):
                return True
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return False


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    base = tmp_path_factory.mktemp("killed")
    recipe = base / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)  # 3 trials, 2 at a time
    out = base / "run"
    ray_tmp = tempfile.mkdtemp(prefix="dsr", dir="/tmp")  # short: Ray's socket paths are length-limited
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "WANDB_API_KEY": SENTINEL}
    # KILLED_EPOCHS: a trial on a warm worker then runs long enough (seconds) to be seen RUNNING and killed.
    cmd = [sys.executable, "-m", "dynsearch.cli", "search", str(recipe), "--epochs", KILLED_EPOCHS, "--out", str(out)]
    first_out, first_err = base / "first.out", base / "first.err"
    with open(first_out, "w") as stdout, open(first_err, "w") as stderr:
        first = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=stderr, start_new_session=True)
    seen = SimpleNamespace(busy=None, sockets=[], cmdlines=[], secret_in_worker_env=False, complete_before={})
    try:
        deadline = time.time() + 400
        while time.time() < deadline and first.poll() is None:
            time.sleep(0.2)
            if not (out / "study.journal").exists():
                continue
            if seen.busy is None:  # the study exists, so the first search holds the lock
                seen.busy = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
            counts = count_states(open_study(out))
            # Ray writes a trial's params.pkl a moment after it starts: wait for one, so the
            # "resume never unpickles" check below always has Ray's pickles to plant payloads in.
            has_params = any((out / "ray").rglob("params.pkl"))
            if counts.get("COMPLETE", 0) >= 1 and counts.get("RUNNING", 0) >= 1 and has_params:
                break
        assert first.poll() is None, f"the search ended before it could be killed:\n{first_err.read_text()[-3000:]}"
        assert time.time() < deadline, "no trial became COMPLETE in time"
        procs = session_processes(first.pid)
        seen.sockets, seen.cmdlines = _listening(procs)
        seen.secret_in_worker_env = _has_sentinel_env(procs)
        seen.complete_before = {
            t.number: (t.values, (out / "trials" / str(t.number) / "metrics.json").stat().st_mtime_ns)
            for t in open_study(out).get_trials(states=(TrialState.COMPLETE,))
        }
        os.killpg(first.pid, signal.SIGKILL)  # kill -9 the driver's whole process group
        first.wait()
        seen.survivors = len(reap_session(first.pid, grace_s=15))
        # Ray's pickles in the run dir, replaced by ones that run code when unpickled: resume must not load them.
        seen.marker = base / "unpickled"
        seen.pickles = sorted((out / "ray").rglob("*.pkl"))
        for path in seen.pickles:
            path.write_bytes(pickle.dumps(_Payload(seen.marker), protocol=2))
        seen.second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        yield SimpleNamespace(out=out, recipe=recipe, ray_tmp=Path(ray_tmp), first_out=first_out,
                              first_err=first_err, **vars(seen))
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
        reap_session(first.pid, grace_s=0)
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.slow
def test_kill_then_resume_keeps_complete_trials_and_retries_interrupted_ones(killed):
    assert killed.second.returncode == 0, killed.second.stderr[-3000:]
    assert "resuming:" in killed.second.stderr
    trials = open_study(killed.out).get_trials()
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(trials)))  # unique, no gaps
    states = count_states(open_study(killed.out))
    assert states.get("COMPLETE") == 3 and set(states) <= {"COMPLETE", "FAIL"}  # none RUNNING or WAITING
    # COMPLETE trials of the killed run are kept and not rerun.
    by_number = {t.number: t for t in trials}
    assert killed.complete_before
    for number, (values, mtime_ns) in killed.complete_before.items():
        assert by_number[number].state == TrialState.COMPLETE and by_number[number].values == values
        assert (killed.out / "trials" / str(number) / "metrics.json").stat().st_mtime_ns == mtime_ns
    # Trials the kill left RUNNING are FAIL with a reason, and their parameters ran once more.
    orphans = [t for t in trials if t.state == TrialState.FAIL]
    assert orphans
    for orphan in orphans:
        assert orphan.user_attrs["fail_reason"].startswith("interrupted: the search driver stopped")
        retries = [t for t in trials if t.user_attrs.get("retry_of") == orphan.number]
        assert len(retries) == 1 and retries[0].params == orphan.params
    assert not [t for t in trials if t.user_attrs.get("retry_of") in killed.complete_before]
    front = json.loads((killed.out / "pareto.json").read_text())
    assert front and {item["trial"] for item in front} <= {t.number for t in trials if t.state == TrialState.COMPLETE}


@pytest.mark.slow
def test_resume_never_unpickles_the_run_dir(killed):
    assert any(p.name == "tuner.pkl" for p in killed.pickles) and any(p.name == "params.pkl" for p in killed.pickles)
    assert killed.second.returncode == 0 and not killed.marker.exists()


@pytest.mark.slow
def test_a_second_search_on_a_run_dir_in_use_is_refused(killed):
    busy = killed.busy
    assert busy is not None and busy.returncode == 2
    assert len(busy.stderr.strip().splitlines()) == 1 and "Traceback" not in busy.stderr
    assert "another dynsearch search is using it" in busy.stderr and "choose another --out" in busy.stderr
    # The killed search did not leave the lock stuck: the same command then ran to the end.
    assert killed.second.returncode == 0


def test_the_lock_of_a_killed_process_is_released(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from dynsearch.run.rundir import RunDir\n"
         "with RunDir(Path(sys.argv[1])).locked():\n    print('locked', flush=True); time.sleep(120)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"another dynsearch search is using it \\(pid {holder.pid}\\)"):
            with RunDir(tmp_path).locked():
                pass
    finally:
        holder.kill()
        holder.wait()
    with RunDir(tmp_path).locked():  # released by the kernel with the killed process
        pass


@pytest.mark.slow
def test_ray_listens_only_on_loopback_and_runs_no_dashboard(killed):
    assert killed.sockets, "Ray's servers were not seen listening"
    assert {ip for ip, _port, _name in killed.sockets} <= LOOPBACK, killed.sockets
    assert any("raylet" in name for *_rest, name in killed.sockets)  # the sockets of Ray itself were seen
    # include_dashboard=False: Ray keeps only its minimal dashboard process (no web UI), on loopback.
    heads = [cmdline for cmdline in killed.cmdlines if "dashboard/dashboard.py" in cmdline]
    assert all("--minimal" in cmdline and "--host=127.0.0.1" in cmdline for cmdline in heads), heads
    assert 8265 not in {port for _ip, port, _name in killed.sockets}  # the dashboard's port serves nothing


@pytest.mark.slow
def test_wandb_api_key_is_never_written(killed):
    assert killed.secret_in_worker_env  # the key really was in the trials' environment
    outputs = [killed.first_out.read_text(), killed.first_err.read_text(), killed.busy.stdout,
               killed.busy.stderr, killed.second.stdout, killed.second.stderr]
    assert not [text for text in outputs if SENTINEL in text]
    files = [p for root in (killed.out, killed.ray_tmp) for p in root.rglob("*") if p.is_file() and not p.is_socket()]
    names = {p.name for p in files}
    assert {"study.journal", "params.json", "config.json", "recipe.yaml"} <= names  # Ray's trial params too
    assert any(p.suffix in (".log", ".out", ".err") for p in files)  # Ray's own logs
    assert not [p for p in files if SENTINEL.encode() in p.read_bytes()]
    for trial in open_study(killed.out).get_trials():
        assert SENTINEL not in json.dumps([trial.user_attrs, trial.system_attrs, trial.params], default=str)


CHANGES = {
    "space": lambda r: r.update(space="exits_again"),
    "objectives": lambda r: r.update(objectives=[{"name": "accuracy"}, {"name": "params"}]),
    "data": lambda r: r["data"].update(split_seed=1),
    "backbone": lambda r: r["backbone"].update(widths=[4, 8]),
}


@pytest.mark.slow
@pytest.mark.parametrize("field", CHANGES)
def test_resuming_with_a_changed_recipe_is_refused(killed, tmp_path, capsys, field):
    from dynsearch.search_spaces import exits
    from dynsearch.spaces import register_space

    register_space("exits_again", exits)
    data = yaml.safe_load(TINY_RECIPE)
    CHANGES[field](data)
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(data))
    before = {p: p.read_bytes() for p in (killed.out / "recipe.yaml", killed.out / "study.journal")}
    assert cli.main(["search", str(changed), "--epochs", KILLED_EPOCHS, "--out", str(killed.out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert f"different recipe (changed: {field})" in err and "--new" in err
    assert {p: p.read_bytes() for p in before} == before  # nothing rewritten
    assert not (killed.out / "previous").exists()


def test_orphans_are_failed_and_retried_once(tmp_path):
    from dynsearch.recipe import load_recipe
    from dynsearch.run.study import make_sampler

    recipe = load_recipe(None)
    study = open_study(tmp_path, recipe, make_sampler(recipe))
    trial = study.ask()
    trial.suggest_float("lr", 1e-3, 1e-2)
    assert fail_orphans(study) == [trial.number]
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].user_attrs == {"retry_of": trial.number, "retry_after": "crash"}
    retry = study.ask()  # what the searcher's next ask gets
    assert retry.number == waiting[0].number
    assert retry.suggest_float("lr", 1e-3, 1e-2) == trial.params["lr"]  # the same parameters
    assert fail_orphans(study) == [retry.number]  # the retry is interrupted too: not retried again
    assert not study.get_trials(states=(TrialState.WAITING,))
    reasons = [t.user_attrs["fail_reason"] for t in study.get_trials()]
    assert "queued for one retry" in reasons[0] and "retry" not in reasons[1]


def test_searcher_stops_at_the_requested_complete_trials(tmp_path):
    from ray.tune.search import Searcher

    from dynsearch.recipe import load_recipe
    from dynsearch.tuning.searcher import StudySearch

    recipe = load_recipe(None).with_overrides(trials=2)
    searcher = StudySearch(recipe, tmp_path, {"input_shape": (1, 8, 8), "num_classes": 10})
    assert searcher.suggest("a") and searcher.suggest("b")
    assert searcher.suggest("c") is None  # two in flight are enough for now
    searcher.on_trial_complete("a", {"accuracy": float("nan"), "macs": 1.0, "final": True})  # FAIL
    assert searcher.suggest("d")  # a failed trial is replaced
    for trial_id, accuracy in (("b", 0.5), ("d", 0.6)):
        searcher.on_trial_complete(trial_id, {"accuracy": accuracy, "macs": 1.0, "final": True})
    assert searcher.suggest("e") == Searcher.FINISHED
    assert count_states(open_study(tmp_path)) == {"FAIL": 1, "COMPLETE": 2}
