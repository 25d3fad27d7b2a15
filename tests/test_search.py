"""End-to-end searches with real Ray (local instance), real Lightning and the real Optuna journal storage."""
import json
import math
import subprocess
import sys

import pytest
from optuna.trial import TrialState

import dynsearch
from dynsearch.recipe import load_recipe
from dynsearch.run.study import open_study

FRONT_KEYS = {"trial", "accuracy", "test_accuracy", "macs", "macs_full", "macs_thop", "params", "config", "stats",
              "mechanism"}


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "dynsearch.cli", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_cli_search_then_pareto(tmp_path, tiny_recipe):
    out = tmp_path / "run"
    proc = _cli("search", str(tiny_recipe), "--trials", "3", "--epochs", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3/3 done" in proc.stderr  # progress lines
    assert (out / "recipe.yaml").is_file() and (out / "study.journal").is_file()
    study = open_study(out)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for t in trials:
        folder = out / "trials" / str(t.number)
        assert {"config.json", "model.safetensors", "metrics.json"} <= {p.name for p in folder.iterdir()}
        metrics = json.loads((folder / "metrics.json").read_text())
        assert t.values == [metrics["accuracy"], metrics["macs"]]
        # The worker swept the exit threshold after training; the trained point is the trial itself.
        points = json.loads((folder / "operating_points.json").read_text())["points"]
        trained = [p for p in points if p["trained"]]
        assert len(trained) == 1 and [trained[0]["accuracy"], trained[0]["macs"]] == t.values

    # Ray Tune received one report per epoch (real validation metrics), then the final one.
    results = [json.loads(line) for path in (out / "ray").rglob("result.json") for line in path.read_text().splitlines()]
    epochs = [r for r in results if not r["final"]]
    assert len(epochs) == 3 and all(0 < r["accuracy"] <= 1 and r["macs"] > 0 for r in epochs)
    assert len([r for r in results if r["final"]]) == 3

    proc = _cli("pareto", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    front = json.loads(proc.stdout)
    assert isinstance(front, list) and front
    assert front == json.loads((out / "pareto.json").read_text())
    for item in front:
        assert set(item) == FRONT_KEYS
        assert isinstance(item["trial"], int) and 0 <= item["accuracy"] <= 1 and 0 <= item["test_accuracy"] <= 1
        assert item["macs"] > 0 and item["macs_full"] > 0 and item["params"] > 0
        assert item["config"]["mechanism"] == "exits"
        stats = item["stats"]
        assert len(stats["exit_histogram"]) == len(item["config"]["exits"]["stages"]) + 1
        assert sum(stats["exit_histogram"]) == pytest.approx(1.0)
    # Non-dominated: no front point is beaten on both objectives by any COMPLETE trial.
    for item in front:
        for t in trials:
            acc, macs = t.values
            assert not (acc >= item["accuracy"] and macs <= item["macs"] and (acc, macs) != (item["accuracy"], item["macs"]))

    table = _cli("pareto", str(out))
    assert table.returncode == 0 and "Pareto front" in table.stdout

    # The same command on the same folder resumes: nothing left to run, nothing rerun.
    again = _cli("search", str(tiny_recipe), "--trials", "3", "--epochs", "1", "--out", str(out))
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(open_study(out).get_trials()) == 3


def test_pareto_of_a_missing_run_dir_is_a_usage_error(tmp_path):
    proc = _cli("pareto", str(tmp_path / "nothing-here"))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "not found" in proc.stderr


class FaultySpace:
    """The exits space, with trials 0-3 made to fail: a NaN loss, an exception, an infinite loss and
    an out-of-memory error (an exit head too wide for any allocator: torch's CPU allocator refuses it
    at once, and the trial reports it as torch.OutOfMemoryError, as a GPU would)."""

    DEFAULTS = {}

    @staticmethod
    def define(trial, recipe, data):
        from dynsearch.search_spaces import exits

        config = exits.define(trial, recipe, data)
        if trial.number in (0, 2, 3):
            config["exits"]["stages"] = [0]
        if trial.number == 0:
            config["exits"]["loss_weight"] = float("nan")  # NaN training loss
        elif trial.number == 1:
            config["train"]["batch_size"] = 0  # DataLoader raises
        elif trial.number == 2:
            config["exits"]["loss_weight"] = float("inf")  # infinite training loss
        elif trial.number == 3:
            config["exits"]["head_width"] = 2**46  # a 2**50-element weight: 4 PB
        return config


def _old_search(run_dir, recipe):
    """A run directory holding an earlier search (2 COMPLETE trials) of another recipe."""
    from dynsearch.run.rundir import RunDir
    from dynsearch.run.study import make_sampler

    run_dir.mkdir()
    RunDir(run_dir).write_recipe(recipe)
    study = open_study(run_dir, recipe, make_sampler(recipe))
    for values in ([0.5, 1000.0], [0.6, 2000.0]):
        study.tell(study.ask(), values)
    return study


@pytest.mark.slow
def test_failed_trials_end_fail_are_replaced_and_stay_off_the_front(tmp_path, tiny_recipe):
    from dynsearch.spaces import register_space

    register_space("faulty", FaultySpace)
    recipe = load_recipe(tiny_recipe).with_overrides(space="faulty", trials=2, concurrent_trials=1)
    run_dir = tmp_path / "run"
    _old_search(run_dir, load_recipe(tiny_recipe))
    with pytest.raises(dynsearch.UserError, match=r"different recipe \(changed: space\).*--new"):
        dynsearch.search(recipe, out=run_dir)

    result = dynsearch.search(recipe, out=run_dir, new=True)  # the old search is moved aside, not lost
    old = open_study(run_dir / "previous" / "1")
    assert [t.values for t in old.get_trials()] == [[0.5, 1000.0], [0.6, 2000.0]]
    assert load_recipe(run_dir / "previous" / "1" / "recipe.yaml").space == "exits"

    study = open_study(result.run_dir)
    by_number = {t.number: t for t in study.get_trials()}
    reasons = {n: by_number[n].user_attrs.get("fail_reason", "") for n in range(4)}
    assert [by_number[n].state for n in range(4)] == [TrialState.FAIL] * 4
    assert "NonFiniteError" in reasons[0] and "nan" in reasons[0]
    assert "batch_size" in reasons[1]
    assert "NonFiniteError" in reasons[2] and "inf" in reasons[2]
    assert reasons[3].startswith("OutOfMemoryError") and "batch_size smaller" in reasons[3]
    # Failed trials are replaced: the search still ends with the 2 COMPLETE trials it asked for.
    assert sorted(by_number) == list(range(6))
    assert [by_number[n].state for n in (4, 5)] == [TrialState.COMPLETE] * 2
    assert result.complete == 2 and result.counts == {"FAIL": 4, "COMPLETE": 2}
    front_trials = {item["trial"] for item in result.front}
    assert front_trials and front_trials <= {4, 5}
    assert json.loads((result.run_dir / "pareto.json").read_text()) == result.front


def test_searcher_fails_nan_inf_and_errored_trials(tmp_path):
    """Ray's OptunaSearch would leave NaN RUNNING and store inf / errored-after-reporting as COMPLETE."""
    from dynsearch.tuning.searcher import StudySearch
    from dynsearch.run.rundir import write_json

    recipe = load_recipe(None).with_overrides(trials=5)
    searcher = StudySearch(recipe, tmp_path, {"input_shape": (1, 8, 8), "num_classes": 10})
    ids = [f"t{i}" for i in range(5)]
    configs = {i: searcher.suggest(i) for i in ids}
    searcher.on_trial_complete("t0", {"accuracy": math.nan, "macs": 10.0, "final": True})
    searcher.on_trial_complete("t1", {"accuracy": 0.9, "macs": math.inf, "final": True})
    searcher.on_trial_complete("t2", {"accuracy": 0.9, "macs": 10.0, "final": False}, error=True)
    searcher.on_trial_complete("t3", {"accuracy": 0.9, "macs": 10.0, "final": False})
    good = configs["t4"]["trial"]
    folder = tmp_path / "trials" / str(good)
    folder.mkdir(parents=True)
    write_json(folder / "config.json", configs["t4"])
    write_json(folder / "metrics.json", {"status": "COMPLETE", "accuracy": 0.8, "test_accuracy": 0.8,
                                         "macs": 20.0, "macs_full": 40, "params": 7})
    searcher.on_trial_complete("t4", {"accuracy": 0.8, "macs": 20.0, "final": True})
    study = open_study(tmp_path)
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL] * 4 + [TrialState.COMPLETE]
    reasons = [t.user_attrs.get("fail_reason", "") for t in study.get_trials()[:4]]
    assert "non-finite" in reasons[0] and "non-finite" in reasons[1]
    assert "exception" in reasons[2] and "final report" in reasons[3]
    assert [item["trial"] for item in dynsearch.pareto(tmp_path)] == [good]


def _drive(searcher, steps: int) -> list:
    """Two trials in flight; the older one reports (made-up, deterministic objectives) as each new one starts."""
    configs, live = [], []
    for step in range(steps):
        while len(live) < 2:
            trial_id = f"t{len(configs)}"
            configs.append(searcher.suggest(trial_id))
            live.append((trial_id, configs[-1]))
        trial_id, config = live.pop(0)
        lr = config["train"]["lr"]
        made_up_macs = float(len(str(config["backbone"])) + len(str(config["exits"])))  # of the trial config alone
        searcher.on_trial_complete(trial_id, {"accuracy": lr * 1e4 % 1, "macs": made_up_macs, "final": True})
    return configs


def test_searcher_proposes_what_rays_optuna_search_proposed(tmp_path):
    """Same seed, same results: the same configs (key order included) as OptunaSearch, the searcher it replaced."""
    import functools

    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from ray.tune.search.optuna import OptunaSearch

    from dynsearch.run.study import STUDY_NAME, make_sampler
    from dynsearch.tuning.searcher import StudySearch, define_trial

    recipe = load_recipe(None)
    recipe = recipe.with_overrides(trials=30, sampler={**recipe.sampler.model_dump(), "population_size": 4})
    shape = {"input_shape": (1, 8, 8), "num_classes": 10}
    (tmp_path / "ours").mkdir()
    ours = _drive(StudySearch(recipe, tmp_path / "ours", shape), steps=12)
    theirs = _drive(OptunaSearch(
        space=functools.partial(define_trial, recipe.space, recipe, shape), metric=recipe.metric_names,
        mode=recipe.metric_modes, sampler=make_sampler(recipe), study_name=STUDY_NAME,
        storage=JournalStorage(JournalFileBackend(str(tmp_path / "theirs.journal"))),
    ), steps=12)
    # 13 trials of a population of 4: NSGA-II's later generations (crossover, mutation) included.
    # OptunaSearch puts the suggested parameters beside the returned config; ours carries the trial config alone.
    theirs = [{key: config[key] for key in ours_config} for ours_config, config in zip(ours, theirs)]
    assert len(ours) == 13 and [list(c) for c in ours] == [list(c) for c in theirs] and ours == theirs


def test_searcher_pickles_without_its_study(tmp_path):
    import pickle

    from dynsearch.tuning.searcher import StudySearch

    recipe = load_recipe(None).with_overrides(trials=3)
    searcher = StudySearch(recipe, tmp_path, {"input_shape": (1, 8, 8), "num_classes": 10})
    first = searcher.suggest("a")
    data = pickle.dumps(searcher)
    assert b"JournalStorage" not in data and b"NSGAIISampler" not in data
    restored = pickle.loads(data)  # reopens the study from the run directory
    second = restored.suggest("b")
    assert second["trial"] == first["trial"] + 1
    restored.on_trial_complete("b", {"accuracy": 0.5, "macs": 1.0, "final": True})
    restored.on_trial_complete("a", {"accuracy": 0.5, "macs": 1.0, "final": True})  # not asked by this one: ignored
    [told] = open_study(tmp_path).get_trials(states=(TrialState.COMPLETE,))
    assert told.number == second["trial"] and told.user_attrs == {"ray_trial_id": "b"}
