"""The display contract: a mechanism says where its parts sit, how its statistics read and how they are drawn;
the CLI asks it, and the report reads the views the trial recorded (it imports no mechanism)."""
from types import SimpleNamespace

import pytest
import torch

from dynsearch import cli
from dynsearch.display import StatView
from dynsearch.dynamic import MECHANISMS, build_model
from dynsearch.run.report import TrialPoint, stat_panels
from dynsearch.training.trial import evaluate

ALL_TINY = [(name, i) for name, info in sorted(MECHANISMS.items()) for i in range(len(info.cls.tiny_configs()))]


def _stats(name, index):
    model = build_model(MECHANISMS[name].cls.tiny_configs()[index]).eval()
    with torch.no_grad():
        out = model(torch.randn(16, *model.config["input_shape"]))
    return model, model.trace_stats(out.trace)


@pytest.mark.parametrize("name, index", ALL_TINY)
def test_every_list_statistic_has_a_view_and_its_labels(name, index):
    model, stats = _stats(name, index)
    views = type(model).stat_views
    label_keys = {view.labels_key for view in views.values()}
    lists = {k for k, v in stats.items() if isinstance(v, list) and all(isinstance(x, (int, float)) for x in v)}
    assert lists <= set(views) | label_keys, f"{name}: statistics without a view: {lists - set(views) - label_keys}"
    record = model.stat_views_record(stats)
    assert set(record) == set(views) & set(stats)
    assert {k: StatView.from_json(v) for k, v in record.items()} == {k: views[k] for k in record}
    for key, view in views.items():
        if key in stats and view.labels_key:
            assert len(stats[view.labels_key]) == len(stats[key])


@pytest.mark.parametrize("name, index", ALL_TINY)
def test_placement_and_summary_are_short_text(name, index):
    model, stats = _stats(name, index)
    placement = type(model).placement(model.config)
    assert isinstance(placement, str) and placement and "\n" not in placement
    for label, text in type(model).stat_summary(stats):
        assert len(label) <= 13 and "\n" not in text


def test_placement_says_where_the_parts_sit():
    exits, gates = MECHANISMS["exits"].cls, MECHANISMS["aig"].cls
    assert exits.placement({"exits": {"stages": [0, 2]}}) == "0,2"
    assert exits.placement({"exits": {"stages": []}}) == "-"
    assert gates.placement({"gates": {"blocks": [1, 3]}}) == "1,3"
    assert MECHANISMS["moe"].cls.placement({"experts": {"layers": [1]}}) == "1"
    assert MECHANISMS["act"].cls.placement({"halting": {"max_steps": 4}}) == "-"


def test_the_front_table_asks_the_mechanism_where_its_parts_sit(monkeypatch, capsys):
    import dynsearch.api

    def item(trial, config):
        return {"trial": trial, "accuracy": 0.9, "test_accuracy": 0.9, "macs": 50.0, "macs_full": 100, "params": 10,
                "config": config, "stats": {}}

    front = [item(1, {"mechanism": "moe", "experts": {"layers": [4, 7]}}),
             item(2, {"mechanism": "aig", "gates": {"blocks": [3, 5]}}),
             item(3, {"mechanism": "not-installed-here", "exits": {"stages": [0]}})]
    monkeypatch.setattr(dynsearch.api, "pareto", lambda run_dir, operating_points=False: front)
    assert cli.main(["pareto", "some-run"]) == 0
    # stdout is not a terminal here: plain lines, one per row
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows["1"].endswith("expert layers 4,7") and rows["2"].endswith("gated blocks 3,5")
    assert rows["3"].endswith("-")


def test_summaries_read_the_statistics():
    exits = MECHANISMS["exits"].cls.stat_summary({"exit_stages": [0, 2], "exit_histogram": [0.25, 0.75]})
    assert exits == [("exits taken", "stage 0: 25%, stage 2: 75%")]
    gates = MECHANISMS["skipnet"].cls.stat_summary({"gate_blocks": [1], "gate_rates": [0.5]})
    assert gates == [("gates on", "block 1: 50%")]
    assert MECHANISMS["pondernet"].cls.stat_summary({"mean_ponder_steps": 2.5}) == [
        ("ponder steps", "2.50 per sample on average")]
    assert MECHANISMS["moe"].cls.stat_summary({"expert_load": [1.0]}) == []


def test_train_prints_the_mechanisms_summary(monkeypatch, capsys):
    import dynsearch.api

    result = {"test_accuracy": 0.5, "macs": 50.0, "macs_full": 100, "params": 10, "mechanism": "exits",
              "stats": {"exit_stages": [0, 2], "exit_histogram": [0.25, 0.75]}}
    monkeypatch.setattr(dynsearch.api, "train", lambda *args, **kwargs: result)
    assert cli.main(["train"]) == 0
    assert "exits taken   stage 0: 25%, stage 2: 75% (test split)" in capsys.readouterr().out.splitlines()


def test_a_trial_records_its_mechanisms_stat_views():
    model = build_model(MECHANISMS["aig"].cls.tiny_configs()[0]).eval()
    x, y = torch.randn(12, *model.config["input_shape"]), torch.randint(0, 10, (12,))
    metrics = evaluate(model, SimpleNamespace(val_x=x, val_y=y, test_x=x, test_y=y))
    assert metrics["stat_views"] == {"gate_rates": model.stat_views["gate_rates"].to_json()}


def _point(number, stats, views=None, mechanism="exits"):
    metrics = {"macs": 1.0, "macs_full": 2.0, "stats": stats, **({"stat_views": views} if views is not None else {})}
    return TrialPoint(number, "COMPLETE", metrics, {"mechanism": mechanism}, on_front=True)


def test_the_report_draws_a_statistic_as_the_trial_recorded_it():
    stats = {"my_steps": [1, 2], "my_shares": [0.5, 0.5]}
    views = {"my_shares": StatView("my shares", "step", "share", "my_steps").to_json()}
    [(key, view, labels, series)] = stat_panels([_point(0, stats, views)])
    assert (key, view.title, view.x_label, labels, series) == ("my_shares", "my shares", "step", [1, 2],
                                                               {0: {1: 0.5, 2: 0.5}})


def test_without_recorded_views_the_report_draws_generic_panels_or_the_fallback_of_the_mechanism():
    stats = {"exit_stages": [0, 2], "exit_histogram": [0.25, 0.75]}
    generic = {key: view.title for key, view, _, _ in stat_panels([_point(0, stats)])}
    assert generic == {"exit_stages": "exit stages", "exit_histogram": "exit histogram"}
    fallback = {"exits": MECHANISMS["exits"].cls.stat_views_record(stats)}
    [(key, view, labels, _)] = stat_panels([_point(0, stats)], fallback)
    assert key == "exit_histogram" and view.labels_key == "exit_stages" and labels == [0, 2]
