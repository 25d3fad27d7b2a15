"""The report's figure, measured from the renderer's extents: the legend covers no data point, no two trial
labels overlap, and each label covers no data point; the operating-point front, exits at each trial's own
positions, a gate at 0% apart from a block without a gate, and the same content in the HTML.

The run is real and small: trials of the default recipe's space (backbone and exits asked by a seeded
random sampler), trained one epoch each on digits, their operating points swept from their weights.
"""
import optuna
import pytest

from dynsearch.deploy.points import trial_points
from dynsearch.display import StatView
from dynsearch.dynamic.exits import EarlyExitNet
from dynsearch.dynamic.gates import SkipNet
from dynsearch.problem import prepare
from dynsearch.recipe import load_recipe
from dynsearch.run.report import (
    RunSummary, TrialPoint, box_covers_point, collect, data_points_px, draw_html, front_figure, write_report,
)
from dynsearch.spaces import get_space
from test_bundle import make_run

TRIALS = 8


@pytest.fixture(scope="module")
def default_run(tmp_path_factory, digits):
    recipe = load_recipe(None)  # the default search: digits-exits, the backbone searched with the exits
    space, shape = get_space(recipe.space), prepare(recipe).shape
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    configs = []
    for _ in range(TRIALS):
        trial = study.ask()
        configs.append(space.define(trial, recipe, shape))
        study.tell(trial, 0.0)
    run_dir = make_run(tmp_path_factory.mktemp("report") / "run", digits, configs, failed=1, recipe=recipe)
    for number in range(TRIALS):
        trial_points(run_dir, number)  # operating_points.json, as a search's worker writes it
    return run_dir


def check_no_cover(drawn):
    """The front panel's legend, labels and data points, compared in display coordinates."""
    renderer = drawn.figure.canvas.get_renderer()
    points = data_points_px(drawn.axes, renderer)
    assert points
    legend = drawn.legend.get_window_extent(renderer)
    assert not [p for p in points if box_covers_point(legend, p)], "the legend covers a data point"
    assert not legend.overlaps(drawn.axes.get_window_extent(renderer))  # beside the data, not on it
    boxes = [label.get_window_extent(renderer) for label in drawn.labels]
    frame = drawn.axes.get_window_extent(renderer)
    for i, box in enumerate(boxes):
        text = drawn.labels[i].get_text()
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, text
        assert not [p for p in points if box_covers_point(box, p)], f"label {text} covers a data point"
        for j in range(i):
            assert not box.overlaps(boxes[j]), f"labels {text} and {drawn.labels[j].get_text()} overlap"


def test_default_search_figure_legend_and_labels_cover_nothing(default_run):
    run = collect(default_run)
    assert len(run.where("COMPLETE")) == TRIALS and run.front and run.points_front
    drawn = front_figure(run)
    assert len(drawn.labels) == len({(t.metrics["macs"], t.metrics["accuracy"]) for t in run.front})
    check_no_cover(drawn)
    # The operating-point front is drawn: every one of its points is a scatter point of the panel.
    renderer = drawn.figure.canvas.get_renderer()
    drawn_at = {(round(x), round(y)) for x, y, _ in data_points_px(drawn.axes, renderer)}
    for item in run.points_front:
        x, y = drawn.axes.transData.transform((item["macs"], item["accuracy"]))
        assert (round(x), round(y)) in drawn_at


def test_crowded_front_labels_do_not_collide(tmp_path):
    """Twelve front points a few pixels apart (the dominated trials stretch the axis) and their operating points:
    the placement still frees every label."""
    def point(number, macs, accuracy, front=True):
        return TrialPoint(number, "COMPLETE", {"accuracy": accuracy, "test_accuracy": accuracy, "macs": macs,
                                               "macs_full": 2e5, "params": 10, "stats": {}}, {"mechanism": "exits"},
                          on_front=front)

    trials = [point(n, 2e4 + 3e3 * n, 0.90 + 0.004 * n) for n in range(12)]
    trials += [point(20 + n, 2e4 + 1e5 * n, 0.85 + 0.004 * n, front=False) for n in range(12)]
    points_front = [{"trial": n, "point": 1, "knobs": {"threshold": 0.5}, "trained": False,
                     "accuracy": 0.902 + 0.004 * n, "macs": 2e4 + 3e3 * n - 1500, "macs_full": 2e5} for n in range(12)]
    check_no_cover(front_figure(RunSummary(tmp_path, ["accuracy", "macs"], trials, points_front=points_front)))


def _gates_and_exits(tmp_path):
    def point(number, macs, stats, mechanism):
        cls = {"skipnet": SkipNet, "exits": EarlyExitNet}[mechanism]
        metrics = {"accuracy": 0.9 + number / 100, "test_accuracy": 0.9, "macs": macs, "macs_full": 1e5,
                   "params": 10, "stats": stats, "stat_views": cls.stat_views_record(stats)}
        return TrialPoint(number, "COMPLETE", metrics, {"mechanism": mechanism}, on_front=True)

    return RunSummary(tmp_path, ["accuracy", "macs"], [
        point(1, 4e4, {"gate_blocks": [1, 2], "gate_rates": [0.0, 0.6]}, "skipnet"),  # block 1 gated, never ran
        point(2, 5e4, {"gate_blocks": [2, 3], "gate_rates": [0.5, 1.0]}, "skipnet"),  # block 1 has no gate
        point(3, 6e4, {"exit_stages": [0, 1], "exit_histogram": [0.3, 0.7]}, "exits"),  # 2 stages: 1 is final
        point(4, 7e4, {"exit_stages": [0, 1, 2], "exit_histogram": [0.2, 0.5, 0.3]}, "exits"),  # 1 is an exit
    ])


def test_gate_at_zero_is_drawn_apart_from_no_gate_and_exits_at_each_trials_own_positions(tmp_path):
    drawn = front_figure(_gates_and_exits(tmp_path))
    panels = {ax.get_title(): ax for ax in drawn.figure.axes if "(front trials)" in ax.get_title()}
    gates = panels["gate execution rate per block (front trials)"]
    entries = [t.get_text() for t in gates.get_legend().get_texts()]
    assert "a recorded 0" in entries and "no gate on this block" in entries
    # Block 1 (the first position): trial 1's gate at 0 is a stroke at its bar's place, trial 2's missing
    # gate a cross at its own; block 3: trial 1 has no gate there. Nothing else is marked.
    marks = {c.get_gid(): [round(float(x), 3) for x, _ in c.get_offsets()] for c in gates.collections}
    assert marks == {"zero trial 1": [-0.2], "absent trial 2": [0.2], "absent trial 1": [1.8]}
    exits = panels["exit histogram (front trials)"]
    ticks = [t.get_text() for t in exits.get_xticklabels()]
    assert ticks == ["0", "final", "0", "1", "final"]  # trial 3's stage 1 is its final classifier, trial 4's an exit
    groups = [t.get_text() for t in exits.texts]
    assert groups == ["trial 3", "trial 4"]


def test_html_has_the_points_front_and_own_exit_positions_and_no_unmarked_footnote(default_run, tmp_path):
    png, page = write_report(default_run)
    text = page.read_text()
    run = collect(default_run)
    assert "front of operating points" in text and "Operating-point front" in text
    assert ("* the trial&#x27;s own (trained) point" in text or "* the trial's own (trained) point" in text) == any(
        item["trained"] for item in run.points_front)
    draw_html(_gates_and_exits(tmp_path), tmp_path / "g.html")
    gates = (tmp_path / "g.html").read_text()
    assert "no gate on this block" in gates and "recorded 0" in gates and '"final"' in gates
    # A front with no trained point prints no footnote.
    untrained = RunSummary(tmp_path, ["accuracy", "macs"], run.trials,
                           points_front=[{**item, "trained": False} for item in run.points_front])
    draw_html(untrained, tmp_path / "u.html")
    assert "own (trained) point" not in (tmp_path / "u.html").read_text()


def test_a_view_recorded_before_final_label_existed_takes_it_from_the_declared_view():
    from dynsearch.run.report import stat_views

    old = {"title": "exit histogram", "x_label": "x", "y_label": "y", "labels_key": "exit_stages"}
    point = TrialPoint(0, "COMPLETE", {"stats": {}, "stat_views": {"exit_histogram": old}}, {"mechanism": "exits"})
    declared = {"exits": {k: v.to_json() for k, v in EarlyExitNet.stat_views.items()}}
    assert stat_views([point], declared)["exit_histogram"].final_label == "final"
    assert stat_views([point])["exit_histogram"] == StatView.from_json(old)
