"""The macs_shifted objective: expected MACs on the validation split under the recipe's shift corruptions.

Recipe validation (one line, exit 2, nothing written), the figure itself against an independent
recomputation with dynsearch.measure.shift, and one small real search (Ray, Lightning, Optuna) in which it
is an objective of the study, in metrics.json, the fronts, the trials table, the report and the export card.
"""
import json

import pytest
import torch
import yaml

from dynsearch import cli
from dynsearch.measure.evaluate import MEASURE_BATCH_SIZE, measure
from dynsearch.measure.shift import CORRUPTIONS, corrupt
from dynsearch.recipe import SHIFT_CORRUPTIONS, parse_recipe

TINY = {
    "name": "tiny-shift",
    "data": {"name": "digits", "split_seed": 0},
    "backbone": {"kind": "cnn", "widths": [4, 8, 8], "depth": 1},
    "space": "exits",
    "objectives": [{"name": "accuracy"}, {"name": "macs"}, {"name": "macs_shifted"}],
    "trials": 2,
    "epochs": 1,
    "cpus_per_trial": 1,
    "concurrent_trials": 1,
    "wandb": {"mode": "off"},
}


def _recompute(model, x, y, corruptions, severity, seed):
    """macs_shifted by hand: each corrupted copy measured in eval mode, the mean of their expected MACs."""
    each = [measure(model, corrupt(x, name, severity, seed), y, batch_size=MEASURE_BATCH_SIZE)["macs"]
            for name in corruptions]
    return sum(each) / len(each)


def test_recipe_names_the_corruptions_measure_shift_implements():
    assert SHIFT_CORRUPTIONS == tuple(CORRUPTIONS)


def test_the_objective_alone_takes_the_default_shift_and_is_minimised():
    recipe = parse_recipe({"objectives": [{"name": "accuracy"}, {"name": "macs_shifted"}]})
    assert recipe.metric_modes == ["max", "min"] and recipe.measures_shift
    assert (recipe.shift.corruptions, recipe.shift.severity, recipe.shift.seed) == (list(CORRUPTIONS), 2, 0)
    chosen = parse_recipe({"objectives": [{"name": "macs_shifted"}], "shift": {"corruptions": ["blur"], "severity": 3}})
    assert (chosen.shift.corruptions, chosen.shift.severity) == (["blur"], 3)
    # A resolved recipe (every field dumped) reads back without the objective too.
    assert not parse_recipe(parse_recipe({}).model_dump(mode="json")).measures_shift


WITH = {"objectives": [{"name": "accuracy"}, {"name": "macs_shifted"}]}
BAD = [
    ({**WITH, "shift": {"corruptions": ["fog"]}}, "field 'shift.corruptions.0'"),
    ({**WITH, "shift": {"severity": 0}}, "field 'shift.severity'"),
    ({**WITH, "shift": {"severity": 4}}, "field 'shift.severity'"),
    ({**WITH, "shift": {"corruptions": []}}, "field 'shift.corruptions'"),
    ({**WITH, "shift": {"corruptions": ["blur", "blur"]}}, "list each corruption once"),
    ({**WITH, "shift": {"seed": -1}}, "field 'shift.seed'"),
    ({**WITH, "shift": {"level": 2}}, "unknown field 'shift.level'"),
    ({"shift": {"severity": 3}}, "shift: is read only by the macs_shifted objective"),
    ({**WITH, "strategy": "one-shot"}, "macs_shifted is for strategy: multi-trial only"),
    ({"objectives": [{"name": "macs_shifted"}, {"name": "accuracy"}], "epochs": 4, "scheduler": {"name": "asha"}},
     "macs_shifted is measured only at a trial's end"),
]


@pytest.mark.parametrize("data, expected", BAD, ids=[e for _, e in BAD])
def test_bad_shift_settings_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, data, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    assert cli.main(["train", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in err, err
    assert not out.exists()


def test_train_records_macs_shifted_as_recomputed_by_hand(tmp_path):
    import dynsearch
    from dynsearch.data import load_splits
    from dynsearch.deploy.load import load_folder

    recipe = {**TINY, "shift": {"corruptions": ["noise", "occlude"], "severity": 3, "seed": 1}}
    result = dynsearch.train(recipe, out=tmp_path / "trial")
    metrics = json.loads((tmp_path / "trial" / "metrics.json").read_text())
    model, _ = load_folder(tmp_path / "trial")
    splits = load_splits("digits", 0)
    assert metrics["measured_with"] == {"batch_size": MEASURE_BATCH_SIZE, "threads": torch.get_num_threads()}
    expected = _recompute(model, splits.val_x, splits.val_y, ["noise", "occlude"], 3, 1)
    assert metrics["macs_shifted"] == pytest.approx(expected, rel=1e-9) == result["val_macs_shifted"]
    assert metrics["test_macs_shifted"] == pytest.approx(
        _recompute(model, splits.test_x, splits.test_y, ["noise", "occlude"], 3, 1), rel=1e-9)
    detail = metrics["shift"]
    assert (detail["corruptions"], detail["severity"], detail["seed"]) == (["noise", "occlude"], 3, 1)
    assert set(detail["per_corruption"]) == {"noise", "occlude"}
    # Cost figures come from what ran: at most every component (each exit head and the full path) once.
    assert 0 < metrics["macs_shifted"] <= sum(model.component_macs().values())


@pytest.mark.slow
def test_search_with_macs_shifted_reaches_study_front_trials_report_and_card(tmp_path, capsys):
    import dynsearch
    from dynsearch.data import load_splits
    from dynsearch.run.study import open_study

    out = tmp_path / "run"
    result = dynsearch.search(TINY, out=out)
    assert result.complete == 2
    splits = load_splits("digits", 0)
    study = open_study(out)
    assert study.metric_names == ["accuracy", "macs", "macs_shifted"]
    for trial in study.get_trials():
        metrics = json.loads((out / "trials" / str(trial.number) / "metrics.json").read_text())
        assert trial.values == [metrics["accuracy"], metrics["macs"], metrics["macs_shifted"]]
        assert torch.isfinite(torch.tensor([metrics["macs_shifted"], metrics["test_macs_shifted"]])).all()

    assert cli.main(["pareto", str(out), "--json"]) == 0
    front = json.loads(capsys.readouterr().out)
    assert front and all(item["macs_shifted"] > 0 and item["test_macs_shifted"] > 0 for item in front)
    assert cli.main(["pareto", str(out)]) == 0
    assert "macs shifted" in capsys.readouterr().out
    assert cli.main(["trials", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert all(set(row["objectives"]) == {"accuracy", "macs", "macs_shifted"} for row in rows)
    assert "macs_shifted" in (out / "pareto.html").read_text()  # the report draws the front under shift

    number = front[0]["trial"]
    [folder] = dynsearch.export(out, tmp_path / "models", trials=[number])
    card = json.loads((folder / "card.json").read_text())
    assert card["objectives"]["macs_shifted"] == front[0]["macs_shifted"]
    assert "`macs_shifted`" in (folder / "card.md").read_text()
    model = dynsearch.load(folder, raw=True)  # the trained form, as the trial measured it
    with torch.inference_mode():
        expected = _recompute(model, splits.val_x, splits.val_y, list(CORRUPTIONS), 2, 0)
    assert card["objectives"]["macs_shifted"] == pytest.approx(expected, rel=1e-9)
    # The card's own shift table (every corruption at every severity) agrees at the objective's severity.
    at_two = {s["corruption"]: s["macs"] for s in card["shift"]["shifted"] if s["severity"] == 2}
    per = card["macs_shifted_detail"]["per_corruption"]
    assert {name: per[name]["macs"] for name in per} == pytest.approx(at_two, rel=1e-9)

    # Exported at another operating point, the objective is measured again at that point.
    from dynsearch.deploy.points import trial_points

    other = next(k for k, p in enumerate(trial_points(out, number)["points"]) if not p["trained"])
    [at_point] = dynsearch.export(out, tmp_path / "at-point", trials=[number], point=other)
    card = json.loads((at_point / "card.json").read_text())
    model = dynsearch.load(at_point, raw=True)
    with torch.inference_mode():
        expected = _recompute(model, splits.val_x, splits.val_y, list(CORRUPTIONS), 2, 0)
    assert card["objectives"]["macs_shifted"] == pytest.approx(expected, rel=1e-9)
    assert card["operating_point"]["measured"]["macs_shifted"] == card["objectives"]["macs_shifted"]


def test_resuming_with_a_changed_shift_is_refused(tmp_path, capsys):
    from dynsearch.run.rundir import RunDir

    out = tmp_path / "run"
    run_dir = RunDir.create(out)
    run_dir.write_recipe(parse_recipe(TINY))
    run_dir.study_path.write_bytes(b"")  # a study was started: resuming compares the recipes
    before = {p: p.read_bytes() for p in (run_dir.recipe_path, run_dir.study_path)}
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump({**TINY, "shift": {"severity": 3}}))
    assert cli.main(["search", str(changed), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "different recipe (changed: shift)" in err and "--new" in err
    assert {p: p.read_bytes() for p in before} == before  # nothing rewritten
    assert not (out / "previous").exists()


def test_a_stored_recipe_without_shift_resumes_as_the_default_shift(tmp_path):
    from dynsearch.recipe import ShiftSpec
    from dynsearch.run.rundir import RunDir

    run_dir = RunDir.create(tmp_path / "run")
    run_dir.write_recipe(parse_recipe(TINY))
    data = yaml.safe_load(run_dir.recipe_path.read_text())
    del data["shift"]  # written before the recipe had a shift section
    run_dir.recipe_path.write_text(yaml.safe_dump(data))
    run_dir.study_path.write_bytes(b"")
    assert run_dir.read_recipe().shift == ShiftSpec()
    assert run_dir.check_resume(parse_recipe(TINY)) is None


def test_hypervolume_scales_macs_and_macs_shifted_by_one_divisor(tmp_path):
    """Both MACs objectives are divided by the largest ``macs_full`` (or a larger value of either)."""
    from optuna.trial import create_trial

    from dynsearch.run.front import hypervolume_history
    from dynsearch.run.rundir import RunDir, write_json
    from dynsearch.run.study import open_study

    recipe = parse_recipe(TINY)  # accuracy (max), macs, macs_shifted (min)
    run_dir = RunDir.create(tmp_path / "run")
    run_dir.write_recipe(recipe)
    study = open_study(run_dir, recipe)
    for number, (values, macs_full) in enumerate((([0.8, 300.0, 500.0], 1000), ([0.9, 600.0, 700.0], 800))):
        study.add_trial(create_trial(values=values))
        run_dir.trial_dir(number).mkdir(parents=True)
        write_json(run_dir.metrics_path(number), {"macs_full": macs_full})
    history = hypervolume_history(run_dir.path)
    assert history["scale"]["macs"] == history["scale"]["macs_shifted"] == 1000.0
    # The second trial is not dominated: 0.8 * 0.7 * 0.5 + (0.9 - 0.8) * 0.4 * 0.3.
    assert history["hypervolume"][-1] == pytest.approx(0.28 + 0.012)
