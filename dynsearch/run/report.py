"""A visual report of a run: ``pareto.png`` (matplotlib) and an interactive ``pareto.html`` (Plotly).

The front panel shows validation accuracy against MACs for every COMPLETE
trial (front and dominated), the trials that ran no dynamic component (static,
``macs == macs_full``) and their own front (the best static architectures the
search found, drawn beside the front of the dynamic trials), the static
full-depth cost (``macs_full``) of the backbone when the trials share a few,
the front of the run's operating points (every trial at every value of its
runtime knobs, as ``dynsearch pareto --operating-points`` lists them, read from
the trials' ``operating_points.json``) beside the front of trials, and which
trials failed and why. The legend and the failures are drawn below the data,
never over it, and the trial labels are placed where they cover no other label
and no data point (``place_labels``). Below it, one panel per
statistic the front's mechanisms report (``trace_stats``), drawn as the
mechanism declared it (``DynamicModel.stat_views``, recorded by each trial in
its metrics.json as ``stat_views``): exit histogram, gate execution rate per
block, ponder-step distribution, expert load; any other list of numbers gets a
generic panel. An exit histogram is drawn at each trial's own exits (its last
bar named as its final classifier: ``StatView.final_label``), and a position one
trial lacks (a block without a gate: ``StatView.absent_label``) is marked apart
from a recorded 0. The HTML holds the same, with the operating-point front as a
table too. Reads the run directory only, and imports no mechanism.
"""
from __future__ import annotations

import html
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynsearch.display import StatView
from dynsearch.errors import UserError
from dynsearch.models.kinds import describe_backbone
from dynsearch.recipe import is_finite_number
from dynsearch.run.front import hypervolume_history, non_dominated, operating_front, pareto
from dynsearch.run.rundir import RunDir
from dynsearch.run.study import PRUNED_AT, open_existing

MAX_STAT_TRIALS = 6  # front points drawn in a statistics panel
MAX_FULL_LINES = 3  # macs_full lines drawn when the trials have at most this many backbones' costs
PNG_DPI = 110


ViewsByMechanism = dict[str, dict[str, dict[str, Any]]]  # mechanism -> stats key -> StatView.to_json()


@dataclass
class TrialPoint:
    number: int
    state: str
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    fail_reason: str = ""
    on_front: bool = False
    pruned_at: int | None = None  # a PRUNED trial's rung (epochs); its metrics: the objectives measured there

    @property
    def static(self) -> bool:  # ran exactly its static counterpart: no exit, gate or router paid
        return abs(self.metrics["macs"] - self.metrics["macs_full"]) < 0.5


@dataclass
class RunSummary:
    run_dir: Path
    objectives: list[str]
    trials: list[TrialPoint]
    # Views for trials whose metrics.json records none (written before trials recorded them).
    fallback_views: ViewsByMechanism = field(default_factory=dict)
    # The front of the run's operating points (run/front.py's operating_front items), most accurate first.
    points_front: list[dict[str, Any]] = field(default_factory=list)
    # The search's hypervolume after each COMPLETE trial against wall-clock (run/front.hypervolume_history).
    history: dict[str, Any] = field(default_factory=dict)

    def where(self, state: str) -> list[TrialPoint]:
        return [t for t in self.trials if t.state == state]

    @property
    def front(self) -> list[TrialPoint]:
        return sorted((t for t in self.trials if t.on_front), key=lambda t: (t.metrics["macs"], t.number))

    def sub_front(self, static: bool) -> list[TrialPoint]:
        """The front of the static (or of the dynamic) COMPLETE trials alone, by accuracy and MACs."""
        points = [t for t in self.where("COMPLETE") if t.static == static]
        items = [{"accuracy": t.metrics["accuracy"], "macs": t.metrics["macs"], "point": t} for t in points]
        kept = non_dominated(items, [("accuracy", "max"), ("macs", "min")])
        return sorted((item["point"] for item in kept), key=lambda t: (t.metrics["macs"], t.number))

    def full_costs(self) -> list[int]:
        """The distinct static full-depth costs (``macs_full``), drawn as lines when few."""
        costs = sorted({int(t.metrics["macs_full"]) for t in self.where("COMPLETE")})
        return costs if len(costs) <= MAX_FULL_LINES else []


def collect(run_dir: str | Path, fallback_views: ViewsByMechanism | None = None) -> RunSummary:
    """Every trial of a run with its state, metrics, config and front membership."""
    front = {item["trial"] for item in pareto(run_dir)}  # checks the run directory
    run = RunDir.existing(run_dir)
    objectives = run.read_recipe().metric_names if run.recipe_path.is_file() else ["accuracy", "macs"]
    trials = []
    for trial in open_existing(run).get_trials(deepcopy=False):
        trials.append(TrialPoint(
            number=trial.number,
            state=trial.state.name,
            metrics=run.read_metrics(trial.number),
            config=run.read_config(trial.number) or {},
            fail_reason=str(trial.user_attrs.get("fail_reason", "")),
            pruned_at=trial.user_attrs.get(PRUNED_AT) if trial.state.name == "PRUNED" else None,
            on_front=trial.number in front,
        ))
    if not trials:
        raise UserError(f"run directory {run_dir}: holds no trials yet; run `dynsearch search --out {run_dir}` first")
    points_front = operating_front(run.path, _stored_points) if run.recipe_path.is_file() else []
    return RunSummary(run.path, objectives, trials, fallback_views or {}, points_front, hypervolume_history(run.path))


def _stored_points(run: RunDir, number: int) -> dict[str, Any]:
    """A trial's operating points as its operating_points.json holds them; none when it has no readable one
    (the report computes nothing: ``dynsearch pareto RUN --operating-points`` computes missing ones)."""
    try:
        record = json.loads(run.points_path(number).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = None
    if isinstance(record, dict) and isinstance(record.get("points"), list) and "macs_full" in record:
        return record
    return {"points": [], "macs_full": 0}


def stat_views(points: list[TrialPoint], fallback_views: ViewsByMechanism | None = None) -> dict[str, StatView]:
    """The views the points' trials recorded (metrics ``stat_views``; else ``fallback_views`` of their mechanism)."""
    views: dict[str, StatView] = {}
    for point in points:
        declared = (fallback_views or {}).get(point.config.get("mechanism"), {})
        recorded = point.metrics.get("stat_views")
        if not isinstance(recorded, dict):
            recorded = declared
        for key, view in recorded.items():  # fields a trial recorded before they existed: as declared now
            views.setdefault(key, StatView.from_json({**declared.get(key, {}), **view}))
    return views


def stat_panels(points: list[TrialPoint], fallback_views: ViewsByMechanism | None = None,
                ) -> list[tuple[str, StatView, list[Any], dict[int, dict[Any, float]]]]:
    """Per statistic present: (key, view, x labels, {trial: {label: value}}) over ``points``."""
    views = stat_views(points, fallback_views)
    label_keys = {view.labels_key for view in views.values()}
    keys: list[str] = []
    for point in points:
        for key, value in point.metrics.get("stats", {}).items():
            if key not in keys and key not in label_keys and _numbers(value):
                keys.append(key)
    panels = []
    for key in keys:
        view = views.get(key) or StatView.generic(key)
        series: dict[int, dict[Any, float]] = {}
        for point in points:
            stats = point.metrics.get("stats", {})
            value = stats.get(key)
            if not _numbers(value):
                continue
            if isinstance(value, dict):
                series[point.number] = {k: float(v) for k, v in value.items()}
            else:
                names = stats.get(view.labels_key) if view.labels_key else None
                names = names if isinstance(names, list) and len(names) == len(value) else range(len(value))
                series[point.number] = dict(zip(names, map(float, value)))
        labels = sorted({label for values in series.values() for label in values}, key=_label_order)
        panels.append((key, view, labels, series))
    return panels


def _numbers(value: Any) -> bool:
    values = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
    return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _label_order(label: Any) -> tuple[int, Any]:
    return (0, label) if isinstance(label, (int, float)) else (1, str(label))


def _spread(points: list[TrialPoint], most: int) -> list[TrialPoint]:
    """At most ``most`` points spread evenly over ``points`` (in order)."""
    if len(points) <= most:
        return points
    step = (len(points) - 1) / (most - 1)
    return [points[round(i * step)] for i in range(most)]


def _headline(run: RunSummary) -> str:
    counts = {state: len(run.where(state)) for state in ("COMPLETE", "FAIL", "RUNNING", "PRUNED")}
    pruned = f", {counts['PRUNED']} pruned" if counts["PRUNED"] else ""
    return (f"{run.run_dir.name}: {counts['COMPLETE']} complete ({len(run.front)} on the front){pruned}, "
            f"{counts['FAIL']} failed, {counts['RUNNING']} running")


def _pruned(run: RunSummary) -> list[TrialPoint]:
    """PRUNED trials with the accuracy and MACs measured at the rung they were stopped."""
    return [t for t in run.where("PRUNED") if is_finite_number(t.metrics.get("accuracy"))
            and is_finite_number(t.metrics.get("macs"))]


def _pruned_lines(run: RunSummary) -> list[str]:
    return [f"trial {t.number}: pruned after epoch {t.pruned_at} (val acc {t.metrics['accuracy']:.3f}, "
            f"{t.metrics['macs']:,.0f} MACs there)" for t in _pruned(run)]


HISTORY_TITLE = "hypervolume of the COMPLETE trials vs wall-clock"
HISTORY_NOTE = ("every objective; costs divided by their largest value (MACs: the largest macs_full), reference "
                "accuracy 0, cost 1; pruned trials, partly trained, not counted; a resumed search's pauses included")


def _failed_lines(run: RunSummary) -> list[str]:
    return [f"trial {t.number}: {t.fail_reason or t.metrics.get('reason', 'no reason recorded')}"
            for t in run.where("FAIL")]


def _point_labels(points: list[TrialPoint]) -> dict[int, str]:
    """Trial numbers to print beside points; points at the same place share one label ("5, 16")."""
    by_place: dict[tuple[float, float], list[int]] = {}
    for t in points:
        by_place.setdefault((t.metrics["macs"], t.metrics["accuracy"]), []).append(t.number)
    return {numbers[0]: ", ".join(map(str, numbers)) for numbers in by_place.values()}


def _connect_front(run: RunSummary) -> bool:
    return set(run.objectives) == {"accuracy", "macs"}  # a staircase only when these are the objectives


def _log_macs(points: list[TrialPoint]) -> bool:
    """Whether the MACs axis is drawn on a log scale: when the costs span more than 30x."""
    costs = [t.metrics["macs"] for t in points if t.metrics.get("macs", 0) > 0]
    return bool(costs) and max(costs) > 30 * min(costs)


# -- pareto.png ---------------------------------------------------------------
# Where a trial label may sit, in points from its point: nearest first, then further out.
LABEL_OFFSETS_PT = [(dx * r, dy * r) for r in (4, 9, 15, 22)
                    for dx, dy in ((1, 1), (-1, 1), (1, -1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))]
POINT_STYLES = {  # scatter sizes (points^2) of what the front panel draws, as the label placement avoids them
    "dominated": 30, "front": 55, "static": 110, "points": 22, "pruned": 18, "shifted": 40,
}
SHIFTED_LABEL = "front trials' MACs under shift (macs_shifted), at their clean accuracy"


def _shifted(front: list[TrialPoint]) -> list[TrialPoint]:
    """The front trials that recorded ``macs_shifted`` (a search with that objective)."""
    return [t for t in front if is_finite_number(t.metrics.get("macs_shifted"))]


@dataclass
class FrontFigure:
    """The report's figure and the front panel's pieces its test measures (display coordinates)."""
    figure: Any
    axes: Any
    legend: Any
    labels: list[Any]
    numbers: list[int]  # the trial each label names first


def _thousands(x: float, _position=None) -> str:
    return f"{x / 1000:.4g}k" if abs(x) >= 1000 else f"{x:.4g}"


def data_points_px(axes, renderer) -> list[tuple[float, float, float]]:
    """Every scatter point of ``axes`` as (x, y, radius), in display pixels."""
    found = []
    for collection in axes.collections:
        sizes = collection.get_sizes()
        for k, (x, y) in enumerate(axes.transData.transform(collection.get_offsets())):
            diameter_pt = (sizes[k % len(sizes)] if len(sizes) else 36) ** 0.5
            found.append((float(x), float(y), diameter_pt / 2 * renderer.points_to_pixels(1)))
    return found


def box_covers_point(box, point: tuple[float, float, float]) -> bool:
    """Whether a display bbox reaches into a round marker (centre x, y and radius, in pixels)."""
    x, y, radius = point
    nearest_x, nearest_y = min(max(x, box.x0), box.x1), min(max(y, box.y0), box.y1)
    return (nearest_x - x) ** 2 + (nearest_y - y) ** 2 < radius ** 2


def _set_offset(label, offset: tuple[float, float]) -> None:
    dx, dy = offset
    label.xyann = offset
    label.set_horizontalalignment("left" if dx > 0 else "right" if dx < 0 else "center")
    label.set_verticalalignment("bottom" if dy > 0 else "top" if dy < 0 else "center")


def place_labels(axes, labels: list[Any], renderer) -> None:
    """Put each label at the first offset (``LABEL_OFFSETS_PT``) where it stays inside the axes and covers
    no label placed before it and no data point; where none is free, at the one that breaks the fewest
    (outside the axes worst, then over a label, then over a point). Deterministic: the labels in order."""
    frame = axes.get_window_extent(renderer)
    points = data_points_px(axes, renderer)
    placed = []
    for label in labels:
        best = None
        for offset in LABEL_OFFSETS_PT:
            _set_offset(label, offset)
            box = label.get_window_extent(renderer)
            outside = not (frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1)
            cost = (1000 * outside + 100 * sum(box.overlaps(other) for other in placed)
                    + sum(box_covers_point(box, point) for point in points))
            if best is None or cost < best[0]:
                best = (cost, offset)
            if cost == 0:
                break
        _set_offset(label, best[1])
        placed.append(label.get_window_extent(renderer))


def _points_xy(items: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    return [item["macs"] for item in items], [item["accuracy"] for item in items]


def front_figure(run: RunSummary):
    """The report's matplotlib figure, laid out and its trial labels placed (``FrontFigure``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    complete = run.where("COMPLETE")
    shown_trials = _spread(run.front, MAX_STAT_TRIALS)
    panels = stat_panels(shown_trials, run.fallback_views)
    colours = {t.number: f"C{j}" for j, t in enumerate(shown_trials)}  # a trial's colour in every panel
    history = run.history if run.history.get("seconds") else {}
    stat_rows = (len(panels) + 1 + (2 if history else 0)) // 2  # the hypervolume curve takes a row's width
    failed = _failed_lines(run)
    shown = failed[:6] + ([f"... and {len(failed) - 6} more"] if len(failed) > 6 else [])
    key_rows = 4 + (1 + len(shown) if shown else 0)  # legend entries (two columns, at most 8), then the failures
    fig = plt.figure(figsize=(11, 6 + 3.4 * stat_rows), dpi=PNG_DPI, layout="constrained")
    ax = fig.add_subplot()
    dominated = [t for t in complete if not t.on_front]
    ax.scatter([t.metrics["macs"] for t in dominated], [t.metrics["accuracy"] for t in dominated],
               c="0.6", s=POINT_STYLES["dominated"], label=f"dominated trials ({len(dominated)})")
    pruned = _pruned(run)
    if pruned:
        ax.scatter([t.metrics["macs"] for t in pruned], [t.metrics["accuracy"] for t in pruned], marker="x",
                   c="0.75", s=POINT_STYLES["pruned"], zorder=1.5,
                   label=f"pruned trials, at the rung they were stopped: partly trained ({len(pruned)})")
    front = run.front
    if front and _connect_front(run):
        ax.step([t.metrics["macs"] for t in front], [t.metrics["accuracy"] for t in front],
                where="post", c="tab:blue", lw=1, alpha=0.6)
    ax.scatter([t.metrics["macs"] for t in front], [t.metrics["accuracy"] for t in front],
               c="tab:blue", s=POINT_STYLES["front"], zorder=3, label=f"Pareto front of trials ({len(front)})")
    drifted = _shifted(front)
    if drifted:  # each front trial's cost on the shifted validation set, joined to its clean cost
        for t in drifted:
            ax.plot([t.metrics["macs"], t.metrics["macs_shifted"]], [t.metrics["accuracy"]] * 2, c="tab:purple",
                    lw=0.8, alpha=0.6, zorder=2.7)
        ax.scatter([t.metrics["macs_shifted"] for t in drifted], [t.metrics["accuracy"] for t in drifted], marker="o",
                   facecolors="none", edgecolors="tab:purple", s=POINT_STYLES["shifted"], zorder=2.8,
                   label=f"{SHIFTED_LABEL} ({len(drifted)})")
    if run.points_front:
        xs, ys = _points_xy(sorted(run.points_front, key=lambda item: item["macs"]))
        if _connect_front(run):
            ax.step(xs, ys, where="post", c="tab:green", lw=1, alpha=0.7)
        ax.scatter(xs, ys, marker="D", c="tab:green", s=POINT_STYLES["points"], zorder=2.5,  # under the trials
                   label=f"front of operating points: each trial at every value of its runtime knobs "
                         f"({len(run.points_front)})")
    static = [t for t in complete if t.static]
    if static:
        ax.scatter([t.metrics["macs"] for t in static], [t.metrics["accuracy"] for t in static], marker="s",
                   s=POINT_STYLES["static"], facecolors="none", edgecolors="black", zorder=4,
                   label=f"static trials: full depth, no dynamic part ({len(static)})")
    for static_side, colour, name in ((True, "black", "static"), (False, "tab:orange", "dynamic")):
        sub = run.sub_front(static_side)
        if sub and static and len(static) < len(complete) and _connect_front(run):
            ax.step([t.metrics["macs"] for t in sub], [t.metrics["accuracy"] for t in sub], where="post",
                    c=colour, lw=1.2, ls="--" if static_side else ":", zorder=2,
                    label=f"front of the {name} trials ({len(sub)})")
    for i, macs_full in enumerate(run.full_costs()):
        ax.axvline(macs_full, ls="--", c="tab:red", lw=1,
                   label=f"static full-depth cost (macs_full) {macs_full:,}" if i == 0 else None)
    if _log_macs(complete):  # searched backbones spread the costs over decades
        ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_thousands))
    ax.set_xlabel("MACs per sample (mean over the validation split, what ran)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(_headline(run))
    ax.grid(alpha=0.3)
    ax.margins(0.06, 0.08)  # room inside the axes for the labels of the outermost points
    handles, names = ax.get_legend_handles_labels()
    key_rows = (len(handles) + 1) // 2 + (1 + len(shown) if shown else 0)  # two columns of entries, the failures
    key_height = 0.3 + 0.17 * key_rows
    fig.set_figheight(fig.get_figheight() + key_height)
    grid = fig.add_gridspec(2 + stat_rows, 2, height_ratios=[6, key_height] + [3.4] * stat_rows)
    ax.set_subplotspec(grid[0, :])
    key = fig.add_subplot(grid[1, :])  # the legend and the failures: below the data, never over it
    key.axis("off")
    legend = key.legend(handles, names, loc="upper left", ncols=2, fontsize=8, frameon=False)
    if shown:
        key.text(0.0, 0.0, "\n".join([f"failed ({len(failed)}):", *(s[:110] for s in shown)]), transform=key.transAxes,
                 fontsize=7, va="bottom", color="tab:red")
    label_texts = _point_labels(front)
    labels = [ax.annotate(label_texts[t.number], (t.metrics["macs"], t.metrics["accuracy"]), textcoords="offset points",
                          xytext=(4, 4), fontsize=8, color="tab:blue", annotation_clip=False)
              for t in front if t.number in label_texts]
    for label in labels:
        label.set_in_layout(False)  # placed after the layout, inside the axes
    for index, (_key, view, panel_labels, series) in enumerate(panels):
        _draw_stat_panel(fig.add_subplot(grid[2 + index // 2, index % 2]), view, panel_labels, series, colours)
    if history:
        curve = fig.add_subplot(grid[2 + stat_rows - 1, :])
        curve.step(history["seconds"], history["hypervolume"], where="post", c="tab:blue")
        curve.scatter(history["seconds"], history["hypervolume"], c="tab:blue", s=12)
        curve.set_xlabel("seconds since the first trial started")
        curve.set_ylabel("hypervolume")
        curve.set_title(f"{HISTORY_TITLE}\n({HISTORY_NOTE})", fontsize=9)
        curve.grid(alpha=0.3)
    fig.canvas.draw()  # the layout, then the labels placed on it
    fig.set_layout_engine("none")
    place_labels(ax, labels, fig.canvas.get_renderer())
    return FrontFigure(fig, ax, legend, labels, [t.number for t in front if t.number in label_texts])


def _draw_stat_panel(sub, view: StatView, labels: list[Any], series: dict[int, dict[Any, float]],
                     colours: dict[int, str]) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    extra, zeros = [], False
    if view.final_label:  # each trial at its own positions: an exit and a final classifier never share a bar
        ticks, names, x = [], [], 0.0
        for j, (number, values) in enumerate(series.items()):
            colour = colours[number]
            own = list(values)  # the trial's order: its exits, its final classifier last
            for k, label in enumerate(own):
                final = k == len(own) - 1
                sub.bar(x + k, values[label], width=0.8, color=colour, hatch="///" if final else None,
                        edgecolor="white" if final else None)
                if values[label] == 0:
                    zeros = True
                    sub.scatter([x + k], [0], marker="_", s=300, linewidths=3, color=colour, zorder=3, clip_on=False,
                                gid=f"zero trial {number}")
                ticks.append(x + k)
                names.append(view.final_label if final else str(label))
            sub.annotate(f"trial {number}", xy=(x + (len(own) - 1) / 2, 0), xycoords=("data", "axes fraction"),
                         xytext=(0, -16), textcoords="offset points", ha="center", va="top", fontsize=8,
                         color=colour)
            x += len(own) + 0.7
        sub.set_xticks(ticks, names, fontsize=7)
        extra.append(Patch(facecolor="0.6", hatch="///", edgecolor="white",
                           label=f"{view.final_label}: the trial's own last stage"))
        sub.set_xlabel(view.x_label, labelpad=16)
    else:
        width = 0.8 / max(1, len(series))
        absent = False
        for j, (number, values) in enumerate(series.items()):
            colour = colours[number]
            xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(labels))]
            here = [(x, values[label]) for x, label in zip(xs, labels) if label in values]
            sub.bar([x for x, _ in here], [v for _, v in here], width=width, color=colour, label=f"trial {number}")
            at_zero = [x for x, v in here if v == 0]
            if at_zero:  # a recorded 0 (a gate that never opened): a bar of no height, drawn as a stroke
                zeros = True
                sub.scatter(at_zero, [0] * len(at_zero), marker="_", s=max(30, 900 * width), linewidths=3,
                            color=colour, zorder=3, clip_on=False, gid=f"zero trial {number}")
            missing = [x for x, label in zip(xs, labels) if label not in values]
            if missing and view.absent_label:  # a position the trial does not have (a block without a gate)
                absent = True
                sub.scatter(missing, [0] * len(missing), marker="x", s=28, color="0.35", zorder=3, clip_on=False,
                            gid=f"absent trial {number}")
        sub.set_xticks(range(len(labels)), [str(label) for label in labels])
        sub.set_xlabel(view.x_label)
        if absent:
            extra.append(Line2D([], [], marker="x", ls="", color="0.35", label=view.absent_label))
    if zeros:
        extra.append(Line2D([], [], marker="_", ls="", color="0.35", markersize=9, markeredgewidth=3,
                            label="a recorded 0"))
    sub.set_ylabel(view.y_label)
    sub.set_title(f"{view.title} (front trials)", fontsize=10)
    handles, names = sub.get_legend_handles_labels()
    sub.legend(handles + extra, names + [h.get_label() for h in extra], fontsize=7, loc="upper left",
               bbox_to_anchor=(1.0, 1.0), frameon=False)


def draw_png(run: RunSummary, path: Path) -> dict[int, tuple[float, float]]:
    """Write the report's PNG; return where each trial label was placed (trial -> offset in points)."""
    import matplotlib.pyplot as plt

    drawn = front_figure(run)
    offsets = {number: label.xyann for number, label in zip(drawn.numbers, drawn.labels)}
    tmp = path.with_name(path.name + ".tmp")
    drawn.figure.savefig(tmp, dpi=PNG_DPI, format="png")  # the resolution the labels were placed at
    plt.close(drawn.figure)
    os.replace(tmp, path)
    return offsets


# -- pareto.html --------------------------------------------------------------
def _hover(t: TrialPoint) -> str:
    m = t.metrics
    config = {k: v for k, v in t.config.items() if k not in ("input_shape", "num_classes", "trial")}
    lines = [f"trial {t.number}: {describe_backbone(t.config.get('backbone'))}",
             f"val acc {m['accuracy']:.4f}, test acc " + (f"{m['test_accuracy']:.4f}" if "test_accuracy" in m
                                                           else "not measured (off the front)"),
             f"MACs {m['macs']:,.0f} ({m['macs'] / m['macs_full']:.0%} of full), params {m['params']:,}"]
    if is_finite_number(m.get("macs_shifted")):
        lines.append(f"MACs under shift {m['macs_shifted']:,.0f} ({m['macs_shifted'] / m['macs'] - 1:+.1%} vs clean)")
    lines += [f"{k}: {json.dumps(v)}" for k, v in config.items()]
    return "<br>".join(html.escape(line, quote=False) for line in lines)


def _point_hover(item: dict[str, Any]) -> str:
    knobs = " ".join(f"{k}={v:g}" for k, v in item["knobs"].items()) or "no knobs"
    lines = [f"trial {item['trial']} at operating point {item['point']}" + (" (as trained)" if item["trained"] else ""),
             knobs, f"val acc {item['accuracy']:.4f}, MACs {item['macs']:,.0f}"]
    return "<br>".join(html.escape(line, quote=False) for line in lines)


def _points_table(points: list[dict[str, Any]]) -> str:
    """The operating-point front as an HTML table; the footnote only when a row carries its mark."""
    columns = ("trial", "mechanism", "point", "knobs", "val acc", "test acc", "MACs", "of full")
    rows = []
    for item in points:
        test = item.get("test_accuracy")
        cells = [item["trial"], item.get("mechanism") or "-", f"{item['point']}{'*' if item['trained'] else ''}",
                 " ".join(f"{k}={v:g}" for k, v in item["knobs"].items()) or "-", f"{item['accuracy']:.4f}",
                 "-" if test is None else f"{test:.4f}", f"{item['macs']:,.0f}",
                 f"{item['macs'] / item['macs_full']:.0%}" if item.get("macs_full") else "-"]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    table = ("<h3>Operating-point front (validation accuracy vs MACs)</h3><table border='1' cellpadding='3' "
             "style='border-collapse:collapse'><tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>"
             + "".join(rows) + "</table>")
    if any(item["trained"] for item in points):
        table += "<p><small>* the trial's own (trained) point</small></p>"
    return table


PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]  # matplotlib's C0-C7


def _stat_figure(view: StatView, labels: list[Any], series: dict[int, dict[Any, float]], colour_of: dict[int, str]):
    import plotly.graph_objects as go

    colours = [colour_of[number] for number in series]
    bars = go.Figure()
    if view.final_label:  # each trial at its own positions (a two-level axis: trial, then its exit)
        for colour, (number, values) in zip(colours, series.items()):
            own = list(values)
            names = [view.final_label if k == len(own) - 1 else str(label) for k, label in enumerate(own)]
            bars.add_trace(go.Bar(name=f"trial {number}", x=[[f"trial {number}"] * len(own), names],
                                  y=[values[label] for label in own], marker_color=colour,
                                  marker_pattern_shape=["/" if k == len(own) - 1 else "" for k in range(len(own))]))
        mode, title = "overlay", f"{view.title} (front trials; hatched: {view.final_label}, the trial's own last stage)"
    else:
        zeros = absent = False
        for colour, (number, values) in zip(colours, series.items()):
            marks = ["×" if label not in values else "0" if values[label] == 0 else "" for label in labels]
            zeros |= "0" in marks
            absent |= "×" in marks and bool(view.absent_label)
            bars.add_trace(go.Bar(name=f"trial {number}", x=[str(label) for label in labels],
                                  y=[values.get(label, 0.0) for label in labels], marker_color=colour,
                                  text=[m if m != "×" or view.absent_label else "" for m in marks],
                                  textposition="outside",
                                  hovertext=[view.absent_label if m == "×" else None for m in marks]))
        for shown, symbol, name in ((zeros, "line-ew-open", "0: recorded 0"),
                                    (absent, "x", f"×: {view.absent_label}")):
            if shown:  # legend entries for the marks written on the bars
                bars.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=name,
                                          marker=dict(symbol=symbol, color="#555", size=10)))
        mode, title = "group", f"{view.title} (front trials)"
    bars.update_layout(title=title, xaxis_title=view.x_label, yaxis_title=view.y_label,
                       barmode=mode, template="plotly_white", height=380)
    return bars


def draw_html(run: RunSummary, path: Path, label_offsets: dict[int, tuple[float, float]] | None = None) -> None:
    """``label_offsets``: trial number -> where its label sits, in points from its point (as the PNG placed it)."""
    import plotly.graph_objects as go
    import plotly.io as pio

    complete = run.where("COMPLETE")
    dominated = [t for t in complete if not t.on_front]
    front = run.front
    static = [t for t in complete if t.static]
    labels = _point_labels(front)
    fig = go.Figure()
    for name, points, marker, mode in (
        (f"dominated trials ({len(dominated)})", dominated, dict(color="#999", size=8), "markers"),
        (f"Pareto front of trials ({len(front)})", front, dict(color="#1f77b4", size=11),
         "lines+markers" if _connect_front(run) else "markers"),
        (f"static trials ({len(static)})", static, dict(symbol="square-open", color="black", size=16), "markers"),
        *((f"front of the {name} trials ({len(sub)})", sub, dict(color=colour, size=1), "lines")
          for name, sub, colour in (("static", run.sub_front(True), "black"), ("dynamic", run.sub_front(False), "#ff7f0e"))
          if sub and static and len(static) < len(complete) and _connect_front(run)),
    ):
        fig.add_trace(go.Scatter(
            x=[t.metrics["macs"] for t in points], y=[t.metrics["accuracy"] for t in points], name=name, mode=mode,
            marker=marker, line=dict(shape="hv", width=1), hovertext=[_hover(t) for t in points], hoverinfo="text"))
    pruned = _pruned(run)
    if pruned:
        fig.add_trace(go.Scatter(
            x=[t.metrics["macs"] for t in pruned], y=[t.metrics["accuracy"] for t in pruned], mode="markers",
            name=f"pruned trials, at the rung they were stopped ({len(pruned)})",
            marker=dict(symbol="x", color="#bbb", size=7), hoverinfo="text",
            hovertext=[f"trial {t.number}: pruned after epoch {t.pruned_at}" for t in pruned]))
    drifted = _shifted(front)
    if drifted:
        xs = [x for t in drifted for x in (t.metrics["macs"], t.metrics["macs_shifted"], None)]
        ys = [y for t in drifted for y in (t.metrics["accuracy"], t.metrics["accuracy"], None)]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color="#9467bd", width=1), hoverinfo="skip",
                                 showlegend=False))
        fig.add_trace(go.Scatter(
            x=[t.metrics["macs_shifted"] for t in drifted], y=[t.metrics["accuracy"] for t in drifted], mode="markers",
            name=f"{SHIFTED_LABEL} ({len(drifted)})", marker=dict(symbol="circle-open", color="#9467bd", size=10),
            hovertext=[_hover(t) for t in drifted], hoverinfo="text"))
    if run.points_front:
        points = sorted(run.points_front, key=lambda item: item["macs"])
        xs, ys = _points_xy(points)
        fig.add_trace(go.Scatter(
            x=xs, y=ys, mode="lines+markers" if _connect_front(run) else "markers",
            name=f"front of operating points: each trial at every value of its runtime knobs<br>({len(points)})",
            marker=dict(symbol="diamond", color="#2ca02c", size=7), line=dict(shape="hv", width=1, color="#2ca02c"),
            hovertext=[_point_hover(item) for item in points], hoverinfo="text"))
    log = _log_macs(complete)
    for t in front:  # labels where the PNG placed them (offsets in points; Plotly's y offset points down)
        if t.number in labels:
            dx, dy = (label_offsets or {}).get(t.number, (4.0, 4.0))
            x = math.log10(t.metrics["macs"]) if log else t.metrics["macs"]  # a log axis places by exponent
            fig.add_annotation(x=x, y=t.metrics["accuracy"], text=labels[t.number], showarrow=True,
                               arrowwidth=0.5, arrowcolor="rgba(0,0,0,0)", ax=dx * 4 / 3, ay=-dy * 4 / 3,
                               xanchor="left" if dx > 0 else "right" if dx < 0 else "center",
                               yanchor="bottom" if dy > 0 else "top" if dy < 0 else "middle",
                               font=dict(size=11, color="#1f77b4"))
    for macs_full in run.full_costs():
        fig.add_vline(x=macs_full, line_dash="dash", line_color="#d62728",
                      annotation_text=f"static full depth {macs_full:,} MACs")
    if log:
        fig.update_xaxes(type="log")
    fig.update_layout(title=_headline(run), xaxis_title="MACs per sample (validation mean, what ran)",
                      yaxis_title="validation accuracy", template="plotly_white", height=640,
                      legend=dict(orientation="h", x=0, xanchor="left", y=-0.15, yanchor="top"))  # below the data
    parts = [pio.to_html(fig, full_html=False, include_plotlyjs=True)]  # self-contained: opens offline
    if run.points_front:
        parts.append(_points_table(run.points_front))
    shown_trials = _spread(front, MAX_STAT_TRIALS)
    colour_of = {t.number: PALETTE[j % len(PALETTE)] for j, t in enumerate(shown_trials)}  # as in the PNG
    for _key, view, panel_labels, series in stat_panels(shown_trials, run.fallback_views):
        parts.append(pio.to_html(_stat_figure(view, panel_labels, series, colour_of), full_html=False,
                                 include_plotlyjs=False))
    if run.history.get("seconds"):
        curve = go.Figure(go.Scatter(x=run.history["seconds"], y=run.history["hypervolume"], mode="lines+markers",
                                     line=dict(shape="hv"), hoverinfo="text",
                                     hovertext=[f"trial {n}" for n in run.history["trials"]]))
        curve.update_layout(title=f"{HISTORY_TITLE}<br><sub>{HISTORY_NOTE}</sub>", template="plotly_white",
                            xaxis_title="seconds since the first trial started", yaxis_title="hypervolume", height=360)
        parts.append(pio.to_html(curve, full_html=False, include_plotlyjs=False))
    pruned_lines = _pruned_lines(run)
    if pruned_lines:
        parts.append("<h3>Pruned trials</h3><ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in pruned_lines) + "</ul>")
    failed = _failed_lines(run)
    if failed:
        parts.append("<h3>Failed trials</h3><ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in failed) + "</ul>")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(_headline(run))}</title></head>"
            f"<body style='font-family:sans-serif'>{''.join(parts)}</body></html>\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)


def write_report(run_dir: str | Path, fallback_views: ViewsByMechanism | None = None) -> tuple[Path, Path]:
    """Write ``pareto.png`` and ``pareto.html`` into the run directory; return their paths.

    ``fallback_views``: per mechanism, the views of trials whose metrics.json records none.
    """
    run = collect(run_dir, fallback_views)
    png, page = RunDir(run.run_dir).report_png, RunDir(run.run_dir).report_html
    draw_html(run, page, draw_png(run, png))
    return png, page
