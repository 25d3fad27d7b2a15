"""Multi-objective successive halving (tuning/schedulers.py): the promotion rule, its durable records,
and real searches (Ray on loopback, Optuna journal, Lightning trials) that prune, resume and export."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from conftest import TINY_RECIPE, reap_session
from dynsearch.dominance import promotion_order
from dynsearch.recipe import parse_recipe
from dynsearch.run.rundir import RunDir
from dynsearch.run.study import PRUNED_AT, count_states, open_study
from dynsearch.recipe import SchedulerSpec
from dynsearch.tuning.schedulers import SuccessiveHalving, rung_records


def rung_epochs(grace: int, factor: float, epochs: int) -> list[int]:
    return SchedulerSpec(grace_epochs=grace, reduction_factor=factor).rungs(epochs)


def _recipe(scheduler: dict, epochs: int = 9):
    data = {"name": "sched", "data": {"name": "digits"}, "space": "exits", "trials": 8, "epochs": epochs,
            "objectives": [{"name": "accuracy"}, {"name": "macs"}], "scheduler": scheduler}
    return parse_recipe(data)


def _halving(tmp_path, **scheduler):
    recipe = _recipe({"grace_epochs": 1, "reduction_factor": 2, **scheduler})
    run = RunDir.create(tmp_path / "run")
    open_study(run, recipe)
    return SuccessiveHalving(recipe, run)


def test_rungs_grow_by_the_reduction_factor_below_the_epochs():
    assert rung_epochs(1, 3, 9) == [1, 3]
    assert rung_epochs(1, 2, 9) == [1, 2, 4, 8]
    assert rung_epochs(2, 1.5, 10) == [2, 3, 4, 7]  # rounded, each distinct


def test_non_dominated_sorting_puts_every_layer_before_the_next():
    gains = [(0.9, -100), (0.8, -200), (0.95, -300), (0.7, -50), (0.6, -400)]
    for tie_break in ("epsilon-net", "crowding"):
        order = promotion_order(gains, tie_break)
        assert set(order[:3]) == {0, 2, 3}  # the front (0.95/300, 0.9/100, 0.7/50) first
        assert order[3:] == [1, 4]  # 0.8/200 is dominated by 0.9/100 only; 0.6/400 by it too
    # The epsilon-net starts at the most accurate and takes the farthest next: the cheap end, not the middle.
    assert promotion_order([(0.95, -300), (0.9, -250), (0.5, -10)], "epsilon-net") == [0, 2, 1]
    # Crowding: both extremes (infinite distance) before the middle.
    assert promotion_order([(0.95, -300), (0.9, -250), (0.5, -10)], "crowding")[2] == 1


def test_a_dominated_trial_is_stopped_at_the_first_rung_and_a_dominating_one_promoted(tmp_path):
    halving = _halving(tmp_path)
    assert halving.decide(0, 1, {"accuracy": 0.8, "macs": 1000.0}) == (1, True)  # first at the rung: goes on
    assert halving.decide(1, 1, {"accuracy": 0.7, "macs": 2000.0}) == (1, False)  # dominated by trial 0
    assert halving.decide(2, 1, {"accuracy": 0.9, "macs": 500.0}) == (1, True)  # dominates both
    assert halving.decide(2, 1, {"accuracy": 0.1, "macs": 9e9}) == (None, True)  # a rung is decided once
    assert halving.decide(3, 1, {"accuracy": 0.9, "macs": 500.0}) == (1, True)  # a tie: the newcomer goes on
    assert halving.decide(0, 3, {"accuracy": 0.9, "macs": 500.0}) == (None, True)  # epoch 3 is no rung (1, 2, 4, 8)
    halving.forget(3)  # a trial that failed leaves the rungs, as a resumed search would see them
    assert 3 not in halving.recorded[1]


def test_mo_asha_keeps_a_cheap_non_dominated_trial_that_accuracy_alone_would_stop(tmp_path):
    seen = [{"accuracy": 0.90, "macs": 1000.0}, {"accuracy": 0.85, "macs": 900.0}, {"accuracy": 0.80, "macs": 800.0}]
    cheap = {"accuracy": 0.60, "macs": 100.0}  # least accurate of four, but nothing is cheaper
    decisions = {}
    for name in ("mo-asha", "asha"):
        halving = _halving(tmp_path / name, name=name)
        for number, values in enumerate(seen):
            halving.decide(number, 1, values)
        decisions[name] = halving.decide(3, 1, cheap)[1]  # 4 at the rung, reduction factor 2: 2 go on
    assert decisions == {"mo-asha": True, "asha": False}


def test_the_rungs_are_rebuilt_from_the_journal(tmp_path):
    recipe = _recipe({"grace_epochs": 1, "reduction_factor": 2})
    run = RunDir.create(tmp_path / "run")
    study = open_study(run, recipe)
    for accuracy, state in ((0.9, TrialState.COMPLETE), (0.5, TrialState.PRUNED), (0.99, TrialState.FAIL)):
        trial = study.ask()
        trial.set_user_attr("rung_1", {"accuracy": accuracy, "macs": 100.0})
        study.tell(trial, [accuracy, 100.0] if state == TrialState.COMPLETE else None, state=state)
    halving = SuccessiveHalving(recipe, run)  # a resumed search: its scheduler starts from the study
    assert halving.recorded[1] == {0: {"accuracy": 0.9, "macs": 100.0}, 1: {"accuracy": 0.5, "macs": 100.0}}
    assert rung_records(study.trials[0]) == {1: {"accuracy": 0.9, "macs": 100.0}}


@pytest.mark.parametrize("field, fix", [
    ("{name: hyperband}", "field 'scheduler.name'"),
    ("{reduction_factor: 1}", "field 'scheduler.reduction_factor'"),
    ("{grace_epochs: 5}", "grace_epochs 5 is not below epochs 3"),
    ("{grace_epochs: 4, max_epochs: 3}", "grace_epochs 4 is not below max_epochs 3"),
    ("{max_epochs: 5}", "scheduler.max_epochs 5 is not the recipe's epochs 3"),
])
def test_a_bad_scheduler_field_exits_2_with_one_line_and_writes_nothing(tmp_path, field, fix):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(TINY_RECIPE.replace("epochs: 1", "epochs: 3") + f"scheduler: {field}\n")
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "dynsearch.cli", "search", str(recipe), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and fix in lines[0] and "Traceback" not in done.stderr, done.stderr
    assert not out.exists()


def test_a_time_budget_is_read_as_seconds_minutes_or_hours():
    assert _recipe({"grace_epochs": 1}).time_budget is None
    assert parse_recipe({"time_budget": "1.5h"}).time_budget == 5400.0
    assert parse_recipe({"time_budget": 90}).time_budget == 90.0
    with pytest.raises(Exception, match="not a duration"):
        parse_recipe({"time_budget": "ten minutes"})


# -- real searches ------------------------------------------------------------------------------
# Two trials at a time, 30 epochs: the first trial to reach a rung is alone there and goes on, so one trial
# runs its 30 epochs past the first rung (seconds) while the other of its pair is ranked and, often, pruned.
# With one trial at a time and 12 epochs, a trial other than the first ran past its first rung for one epoch
# only (~0.1 s on quiet cores), and the search could end before the poll saw one.
SCHEDULED = TINY_RECIPE.replace("trials: 3", "trials: 6").replace("epochs: 1", "epochs: 30") + \
    "scheduler: {name: mo-asha, grace_epochs: 1, reduction_factor: 2}\n"


def _search(recipe: Path, out: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dynsearch.cli", "search", str(recipe), "--out", str(out),
                             "--wandb", "off"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kw)


def _attrs(out: Path) -> dict[int, dict]:
    return {t.number: t.user_attrs for t in open_study(out).get_trials()}


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """A search with MO-ASHA SIGKILLed (driver and Ray, the whole session) once a trial is RUNNING past its
    first rung and another is done; then the same command finishes it."""
    base = tmp_path_factory.mktemp("sched")
    recipe, out = base / "sched.yaml", base / "run"
    recipe.write_text(SCHEDULED)
    run = _search(recipe, out)
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            assert run.poll() is None, run.communicate()[1][-3000:]
            if (out / "study.journal").exists():
                trials = open_study(out).get_trials()
                mid_rung = [t for t in trials if t.state == TrialState.RUNNING and "rung_1" in t.user_attrs]
                if mid_rung and any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials):
                    break
            time.sleep(0.2)
        else:
            raise AssertionError("no trial was seen running past its first rung")
        before = {t.number: t.user_attrs for t in open_study(out).get_trials()  # one snapshot: finished trials
                  if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
        reap_session(run.pid, grace_s=10)
    last = subprocess.run([sys.executable, "-m", "dynsearch.cli", "search", str(recipe), "--out", str(out),
                           "--wandb", "off"], capture_output=True, text=True, timeout=600)
    return out, before, last


@pytest.mark.slow
def test_a_search_killed_mid_rung_resumes_with_every_trial_complete_or_pruned(killed_and_resumed):
    out, before, last = killed_and_resumed
    assert last.returncode == 0, last.stderr[-3000:]
    study = open_study(out)
    states = count_states(study)
    assert states.get("COMPLETE", 0) + states.get("PRUNED", 0) == 6, states  # trials counts started ones
    assert states.get("PRUNED", 0) >= 1 and set(states) <= {"COMPLETE", "PRUNED", "FAIL"}
    trials = study.get_trials()
    for trial in trials:
        if trial.state == TrialState.FAIL:  # only what the kill interrupted, each retried once
            reason = trial.user_attrs["fail_reason"]
            assert "interrupted" in reason
            retries = sum(t.user_attrs.get("retry_of") == trial.number for t in trials)
            # A trial killed before its space suggested anything has no parameters to queue again.
            assert retries == (1 if "queued for one retry" in reason else 0), (reason, trial.params)
            assert retries == 1 or not trial.params
    after = _attrs(out)
    for number, attrs in before.items():  # decisions made before the kill stand, untouched
        assert {k: v for k, v in after[number].items() if k != "ray_trial_id"} == \
            {k: v for k, v in attrs.items() if k != "ray_trial_id"}
    for trial in trials:
        metrics = json.loads((out / "trials" / str(trial.number) / "metrics.json").read_text()) \
            if trial.state != TrialState.FAIL else None
        if trial.state == TrialState.PRUNED:
            rung = trial.user_attrs[PRUNED_AT]
            assert metrics["status"] == "PRUNED" and metrics["pruned_at_epoch"] == rung
            assert metrics["accuracy"] == trial.user_attrs[f"rung_{rung}"]["accuracy"]
            assert trial.values is None and not (out / "trials" / str(trial.number) / "model.safetensors").exists()
        elif trial.state == TrialState.COMPLETE:
            assert metrics["status"] == "COMPLETE"
            # A COMPLETE trial went on at every rung it reached: the rungs below the epochs, each recorded.
            assert sorted(rung_records(trial)) == rung_epochs(1, 2, 30)


# One trial at a time: the first trial is alone at every rung, so it goes on to COMPLETE (a front to read);
# the others are ranked against those before them. (The killed search above may end with every trial PRUNED.)
SCHEDULED_ONE_AT_A_TIME = TINY_RECIPE.replace("trials: 3", "trials: 6").replace("epochs: 1", "epochs: 12").replace(
    "concurrent_trials: 2", "concurrent_trials: 1") + "scheduler: {name: mo-asha, grace_epochs: 1, reduction_factor: 2}\n"


@pytest.mark.slow
def test_pruned_trials_never_reach_the_front_or_an_export(tmp_path):
    recipe, out = tmp_path / "sched.yaml", tmp_path / "run"
    recipe.write_text(SCHEDULED_ONE_AT_A_TIME)
    done = subprocess.run([sys.executable, "-m", "dynsearch.cli", "search", str(recipe), "--out", str(out),
                           "--wandb", "off"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    study = open_study(out)
    pruned = [t.number for t in study.get_trials(states=(TrialState.PRUNED,))]
    assert pruned and study.get_trials(states=(TrialState.COMPLETE,)), count_states(study)
    front = json.loads(subprocess.run([sys.executable, "-m", "dynsearch.cli", "pareto", str(out), "--json"],
                                      capture_output=True, text=True, check=True).stdout)
    assert front and not {item["trial"] for item in front} & set(pruned)
    listed = json.loads(subprocess.run([sys.executable, "-m", "dynsearch.cli", "trials", str(out), "--json"],
                                       capture_output=True, text=True, check=True).stdout)
    shown = {row["trial"]: row for row in listed}
    assert all(shown[n]["state"] == "PRUNED" and shown[n]["pruned_at_epoch"] >= 1 for n in pruned)
    page = (out / "pareto.html").read_text()  # the report the search wrote: each pruned trial's rung, the HV curve
    assert "<h3>Pruned trials</h3>" in page and f"trial {pruned[0]}: pruned after epoch " in page
    assert "hypervolume of the COMPLETE trials vs wall-clock" in page
    refused = subprocess.run([sys.executable, "-m", "dynsearch.cli", "export", str(out), "--trials", str(pruned[0]),
                              "--out", str(tmp_path / "models")], capture_output=True, text=True)
    assert refused.returncode == 2 and "is PRUNED (stopped early by the scheduler" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "models").exists()


@pytest.mark.slow
def test_a_time_budget_ends_the_search_early_and_says_so(tmp_path):
    recipe = tmp_path / "budget.yaml"
    recipe.write_text(TINY_RECIPE.replace("trials: 3", "trials: 200"))
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "dynsearch.cli", "search", str(recipe), "--out", str(out),
                           "--wandb", "off", "--time-budget", "6s"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("time budget (6 s) spent: no trial is started from now on") == 1, done.stderr
    assert "the time budget (6 s) ended the search at " in done.stderr and "Traceback" not in done.stderr
    states = count_states(open_study(out))
    assert 0 < states.get("COMPLETE", 0) < 200 and set(states) == {"COMPLETE"}  # the running trials finished


def test_objectives_measured_only_at_a_trials_end_are_left_out_at_the_rungs(tmp_path):
    """A recipe of accuracy and latency: at a rung latency is NaN (measured at the end), so the rung ranks on
    accuracy; before, such a search pruned nothing."""
    from types import SimpleNamespace

    data = {"name": "lat", "data": {"name": "digits"}, "space": "exits", "trials": 8, "epochs": 9,
            "objectives": [{"name": "accuracy"}, {"name": "latency_ms"}],
            "scheduler": {"grace_epochs": 1, "reduction_factor": 2}}
    recipe = parse_recipe(data)
    run = RunDir.create(tmp_path / "run")
    study = open_study(run, recipe)
    numbers = [study.ask().number for _ in range(2)]
    halving = SuccessiveHalving(recipe, run)
    decisions = [halving.on_trial_result(None, SimpleNamespace(config={"trial": n}),
                                         {"epoch": 0, "accuracy": accuracy, "latency_ms": float("nan"), "final": False})
                 for n, accuracy in zip(numbers, (0.9, 0.5))]
    assert decisions == ["CONTINUE", "STOP"]
    attrs = {t.number: t.user_attrs for t in open_study(run).get_trials()}
    assert attrs[numbers[1]][PRUNED_AT] == 1 and attrs[numbers[1]]["rung_1"] == {"accuracy": 0.5}


def test_a_trial_the_scheduler_stopped_is_pruned_on_resume_even_if_the_driver_died_before_telling(tmp_path):
    from dynsearch.run.study import rebuild_lost_trials

    recipe = _recipe({"grace_epochs": 1, "reduction_factor": 2})
    run = RunDir.create(tmp_path / "run")
    study = open_study(run, recipe)
    trial = study.ask()
    trial.set_user_attr("rung_1", {"accuracy": 0.4, "macs": 900.0})
    trial.set_user_attr(PRUNED_AT, 1)  # the scheduler's records; then the driver died (no metrics.json, no tell)
    rebuilt, left = rebuild_lost_trials(study, run)
    assert (rebuilt, left) == ([trial.number], [])
    assert open_study(run).trials[0].state == TrialState.PRUNED  # not failed and run again
    metrics = json.loads((run.path / "trials" / str(trial.number) / "metrics.json").read_text())
    assert metrics == {"status": "PRUNED", "pruned_at_epoch": 1, "accuracy": 0.4, "macs": 900.0}


def test_changing_the_scheduler_of_a_search_is_refused_on_resume(tmp_path):
    from dynsearch.errors import UserError

    run = RunDir.create(tmp_path / "run")
    recipe = _recipe({"grace_epochs": 1, "reduction_factor": 2})
    run.write_recipe(recipe)
    open_study(run, recipe)
    with pytest.raises(UserError, match=r"changed: scheduler"):
        run.check_resume(recipe.with_overrides(scheduler={"reduction_factor": 3}))
    run.check_resume(recipe.with_overrides(time_budget=60))  # the budget of a run may change
