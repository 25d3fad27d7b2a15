"""Operating points: the front over all points, CLI and export --point (the conformance suite checks the
knob sweep against a model rebuilt at each knob value: check_sweep_matches_rebuilt_model_at_each_knob_value)."""
import json
import subprocess
import sys

import pytest

from dynsearch import cli
import dynsearch
from conftest import exits_config
from dynsearch.measure.evaluate import measure_val
from dynsearch.dynamic import build_model
from dynsearch.dynamic.gates import SkipNet
from dynsearch.measure.points import TEST_KEYS, current_knobs
from dynsearch.run.rundir import POINTS_FILE
from test_bundle import make_run


def test_unknown_knob_is_refused():
    model = build_model(exits_config())
    with pytest.raises(ValueError, match="patience"):
        model.set_runtime_knobs({"patience": 2})


@pytest.fixture(scope="module")
def run(tmp_path_factory, digits):
    """A run made without the sweep (as before it existed): its points are computed on first use."""
    run_dir = tmp_path_factory.mktemp("points") / "run"
    one_epoch = {"lr": 0.02, "epochs": 1, "batch_size": 16, "seed": 0}  # enough to spread the points
    configs = [{**exits_config(stages=(0, 1), threshold=0.6, widths=(4, 8, 8), head_width=16), "train": one_epoch},
               {**SkipNet.tiny_configs()[0], "train": one_epoch}]
    make_run(run_dir, digits, configs)
    return run_dir


def test_front_holds_or_dominates_every_trial_and_old_runs_get_their_points(run):
    assert not (run / "trials" / "0" / POINTS_FILE).exists()
    front = dynsearch.pareto(run, operating_points=True)
    assert front and all(set(item["knobs"]) <= {"threshold", "gate_bias"} for item in front)
    for number in range(2):
        metrics = json.loads((run / "trials" / str(number) / "metrics.json").read_text())
        record = json.loads((run / "trials" / str(number) / POINTS_FILE).read_text())
        trained = [p for p in record["points"] if p["trained"]]
        # The sweep reproduces the trial at its trained knob values exactly.
        assert len(trained) == 1 and (trained[0]["accuracy"], trained[0]["macs"]) == (metrics["accuracy"], metrics["macs"])
        on_front = any(i["trial"] == number and i["trained"] for i in front)
        dominated = any(i["accuracy"] >= metrics["accuracy"] and i["macs"] <= metrics["macs"]
                        and (i["accuracy"], i["macs"]) != (metrics["accuracy"], metrics["macs"]) for i in front)
        assert on_front or dominated, number
    for a in front:  # non-dominated among themselves
        assert not any(b["accuracy"] >= a["accuracy"] and b["macs"] < a["macs"] for b in front)
    # The trial front is never better than the operating-point front.
    trial_front = dynsearch.pareto(run)
    assert max(i["accuracy"] for i in front) >= max(i["accuracy"] for i in trial_front)
    assert min(i["macs"] for i in front) <= min(i["macs"] for i in trial_front)


def test_a_damaged_points_file_is_computed_again(run):
    from dynsearch.deploy.points import trial_points

    path = run / "trials" / "0" / POINTS_FILE
    before = json.loads(path.read_text())["points"]
    path.write_text('{"format": "dynsearch-operating-points/1", "points": "nonsense"')
    assert trial_points(run, 0)["points"] == before
    assert json.loads(path.read_text())["points"] == before


def test_cli_operating_points_json(run, capsys):
    assert cli.main(["pareto", str(run), "--operating-points", "--json"]) == 0
    front = json.loads(capsys.readouterr().out)
    assert front == json.loads(json.dumps(dynsearch.pareto(run, operating_points=True)))
    for item in front:
        assert {"trial", "point", "knobs", "trained", "accuracy", "macs", "test_accuracy", "test_macs"} <= set(item)
    assert cli.main(["pareto", str(run), "--operating-points"]) == 0
    assert "Operating-point front" in capsys.readouterr().out


def test_export_at_a_point_round_trip(run, tmp_path, capsys):
    item = next(i for i in dynsearch.pareto(run, operating_points=True) if not i["trained"])  # trial 0, above
    out = tmp_path / "models"
    assert cli.main(["export", str(run), "--trials", str(item["trial"]), "--point", str(item["point"]),
                     "--out", str(out)]) == 0
    folder = out / f"trial-{item['trial']}"
    card = json.loads((folder / "card.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    assert card["operating_point"]["point"] == item["point"] and card["operating_point"]["knobs"] == item["knobs"]
    assert card["operating_point"]["reproduced_at_export"]["matches_recorded"]
    assert card["objectives"] == {"accuracy": item["accuracy"], "macs": item["macs"]}
    for name, value in item["knobs"].items():
        assert config["runtime_policy"][name] == value
    model = dynsearch.load(folder, raw=True)  # runs at the point: the point's validation accuracy and macs
    assert current_knobs(model) == item["knobs"]
    measured = measure_val(model, card["data"], card["measured_with"])
    assert (measured["accuracy"], measured["macs"]) == (item["accuracy"], item["macs"])
    assert "## Operating point" in (folder / "card.md").read_text()


def test_bad_point_is_one_line_and_exit_2(run, tmp_path, capsys):
    out = tmp_path / "models"
    for args in (["--trials", "0", "--point", "999"], ["--point", "0"], ["--trials", "0,1", "--point", "0"]):
        assert cli.main(["export", str(run), *args, "--out", str(out)]) == 2, args
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "--point" in err, err
    assert not out.exists()
    proc = subprocess.run([sys.executable, "-m", "dynsearch.cli", "export", str(run), "--trials", "0", "--point", "-1",
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


FIGURES = ("trial", "point", "knobs", "trained", "accuracy", "macs", "test_accuracy", "test_macs")


def _front_figures(run_dir):
    return [{k: item[k] for k in FIGURES} for item in dynsearch.pareto(run_dir, operating_points=True)]


def test_points_from_one_pass_give_the_per_value_sweeps_front_and_exports(run, tmp_path):
    """A record written by the per-value real sweep (the one before replay: every point, both splits)
    is read as it is; the points a trial now records (replayed, front re-measured by real validation
    passes, test figures only for the points that matter) give the same operating front and the same
    exported models."""
    import shutil

    from dynsearch.data import cached_splits
    from dynsearch.deploy.trials import check_trial
    from dynsearch.measure.device import pinned_threads
    from dynsearch.measure.points import points_record, sweep
    from dynsearch.run.rundir import RunDir, write_json

    old, new = tmp_path / "old", tmp_path / "new"
    shutil.copytree(run, old)
    shutil.copytree(run, new)
    for number in range(2):
        (new / "trials" / str(number) / POINTS_FILE).unlink(missing_ok=True)
        recipe = RunDir(old).read_recipe()
        checked = check_trial(old, number, recipe)
        with_ = checked.measured["measured_with"]
        with pinned_threads(with_["threads"]):
            points = sweep(checked.model, cached_splits(recipe.data), with_["batch_size"], replay=False)
        assert all(p["measured_by"] == "real" and "test_accuracy" in p for p in points)
        write_json(old / "trials" / str(number) / POINTS_FILE,
                   points_record(number, checked.model, points, checked.weights, with_, 0.0))
    before = _front_figures(old)
    # Read as written (sweep_seconds 0.0 above), not computed again.
    assert [json.loads((old / "trials" / str(n) / POINTS_FILE).read_text())["sweep_seconds"] for n in range(2)] == [0, 0]
    after = _front_figures(new)  # computed now, as a trial computes them
    assert after == before and len(after) >= 2
    exits_record = json.loads((new / "trials" / "0" / POINTS_FILE).read_text())
    assert exits_record["remeasured"] >= 2 and exits_record["replay_matched"] == exits_record["remeasured"]
    assert any("test_accuracy" not in p for p in exits_record["points"])  # off the trial's own front: no test figures
    item = next(i for i in after if not i["trained"])
    for run_dir in (old, new):
        [folder] = dynsearch.export(run_dir, run_dir / "models", trials=[item["trial"]], point=item["point"])
        card = json.loads((folder / "card.json").read_text())
        assert card["operating_point"]["measured"] == {k: item[k] for k in ("accuracy", "macs", *TEST_KEYS)}
    for name in ("config.json", "model.safetensors"):
        exported = [(d / "models" / f"trial-{item['trial']}" / name).read_bytes() for d in (old, new)]
        assert exported[0] == exported[1], name


def test_export_at_a_point_off_the_trials_own_front_measures_its_test_figures(run, tmp_path):
    from dynsearch.deploy.points import trial_points

    record = trial_points(run, 0)
    item = next(p for p in record["points"] if "test_accuracy" not in p)
    [folder] = dynsearch.export(run, tmp_path / "models", trials=[0], point=item["point"])
    card = json.loads((folder / "card.json").read_text())
    from dynsearch.data import cached_splits
    from dynsearch.measure.device import pinned_threads
    from dynsearch.measure.evaluate import measure

    model, splits, with_ = dynsearch.load(folder, raw=True), cached_splits(card["data"]), card["measured_with"]
    with pinned_threads(with_["threads"]):
        test = measure(model, splits.test_x, splits.test_y, batch_size=with_["batch_size"])
    assert card["operating_point"]["measured"]["test_accuracy"] == test["accuracy"]
    assert card["operating_point"]["measured"]["test_macs"] == test["macs"]
