"""A visual report of a run: ``pareto.png`` (matplotlib) and an interactive ``pareto.html`` (Plotly).

The front panel shows validation accuracy against MACs for every COMPLETE
trial (front and dominated), the trials that ran no dynamic component (static,
``macs == macs_full``) and their own front (the best static architectures the
search found, drawn beside the front of the dynamic trials), the static
full-depth cost (``macs_full``) of the backbone when the trials share a few,
and which trials failed and why. Below it, one panel per
statistic the front's mechanisms report (``trace_stats``), drawn as the
mechanism declared it (``DynamicModel.stat_views``, recorded by each trial in
its metrics.json as ``stat_views``): exit histogram, gate execution rate per
block, ponder-step distribution, expert load; any other list of numbers gets a
generic panel. Reads the run directory only, and imports no mechanism.
"""
from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynsearch.display import StatView
from dynsearch.errors import UserError
from dynsearch.models.kinds import describe_backbone
from dynsearch.run.front import non_dominated, pareto
from dynsearch.run.rundir import RunDir
from dynsearch.run.study import open_existing

MAX_STAT_TRIALS = 6  # front points drawn in a statistics panel
MAX_FULL_LINES = 3  # macs_full lines drawn when the trials have at most this many backbones' costs


ViewsByMechanism = dict[str, dict[str, dict[str, Any]]]  # mechanism -> stats key -> StatView.to_json()


@dataclass
class TrialPoint:
    number: int
    state: str
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    fail_reason: str = ""
    on_front: bool = False

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
            on_front=trial.number in front,
        ))
    if not trials:
        raise UserError(f"run directory {run_dir}: holds no trials yet; run `dynsearch search --out {run_dir}` first")
    return RunSummary(run.path, objectives, trials, fallback_views or {})


def stat_views(points: list[TrialPoint], fallback_views: ViewsByMechanism | None = None) -> dict[str, StatView]:
    """The views the points' trials recorded (metrics ``stat_views``; else ``fallback_views`` of their mechanism)."""
    views: dict[str, StatView] = {}
    for point in points:
        recorded = point.metrics.get("stat_views")
        if not isinstance(recorded, dict):
            recorded = (fallback_views or {}).get(point.config.get("mechanism"), {})
        for key, view in recorded.items():
            views.setdefault(key, StatView.from_json(view))
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
    counts = {state: len(run.where(state)) for state in ("COMPLETE", "FAIL", "RUNNING")}
    return (f"{run.run_dir.name}: {counts['COMPLETE']} complete ({len(run.front)} on the front), "
            f"{counts['FAIL']} failed, {counts['RUNNING']} running")


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
def _thousands(x: float, _position=None) -> str:
    return f"{x / 1000:.4g}k" if abs(x) >= 1000 else f"{x:.4g}"


def draw_png(run: RunSummary, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    complete = run.where("COMPLETE")
    panels = stat_panels(_spread(run.front, MAX_STAT_TRIALS), run.fallback_views)
    stat_rows = (len(panels) + 1) // 2
    fig = plt.figure(figsize=(11, 6 + 3.2 * stat_rows), layout="constrained")
    grid = fig.add_gridspec(1 + stat_rows, 2, height_ratios=[6] + [3.2] * stat_rows)
    ax = fig.add_subplot(grid[0, :])
    dominated = [t for t in complete if not t.on_front]
    ax.scatter([t.metrics["macs"] for t in dominated], [t.metrics["accuracy"] for t in dominated],
               c="0.6", s=30, label=f"dominated ({len(dominated)})")
    front = run.front
    if front and _connect_front(run):
        ax.step([t.metrics["macs"] for t in front], [t.metrics["accuracy"] for t in front],
                where="post", c="tab:blue", lw=1, alpha=0.6)
    ax.scatter([t.metrics["macs"] for t in front], [t.metrics["accuracy"] for t in front],
               c="tab:blue", s=55, zorder=3, label=f"Pareto front ({len(front)})")
    labels = _point_labels(front)
    for t in front:
        if t.number in labels:
            ax.annotate(labels[t.number], (t.metrics["macs"], t.metrics["accuracy"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=8, color="tab:blue")
    static = [t for t in complete if t.static]
    if static:
        ax.scatter([t.metrics["macs"] for t in static], [t.metrics["accuracy"] for t in static], marker="s",
                   s=110, facecolors="none", edgecolors="black", zorder=4,
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
    failed = _failed_lines(run)
    if failed:
        shown = failed[:6] + ([f"... and {len(failed) - 6} more"] if len(failed) > 6 else [])
        ax.text(0.01, 0.02, f"failed ({len(failed)}):\n" + "\n".join(s[:90] for s in shown), transform=ax.transAxes,
                fontsize=7, va="bottom", color="tab:red", bbox=dict(fc="white", ec="tab:red", alpha=0.85))
    if _log_macs(complete):  # searched backbones spread the costs over decades
        ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_thousands))
    ax.set_xlabel("MACs per sample (mean over the validation split, what ran)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(_headline(run))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    for index, (key, view, labels, series) in enumerate(panels):
        sub = fig.add_subplot(grid[1 + index // 2, index % 2])
        width = 0.8 / max(1, len(series))
        for j, (number, values) in enumerate(series.items()):
            xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(labels))]
            sub.bar(xs, [values.get(label, 0.0) for label in labels], width=width, label=f"trial {number}")
        sub.set_xticks(range(len(labels)), [str(label) for label in labels])
        sub.set_xlabel(view.x_label)
        sub.set_ylabel(view.y_label)
        sub.set_title(f"{view.title} (front trials)", fontsize=10)
        sub.legend(fontsize=7)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)


# -- pareto.html --------------------------------------------------------------
def _hover(t: TrialPoint) -> str:
    m = t.metrics
    config = {k: v for k, v in t.config.items() if k not in ("input_shape", "num_classes", "trial")}
    lines = [f"trial {t.number}: {describe_backbone(t.config.get('backbone'))}",
             f"val acc {m['accuracy']:.4f}, test acc " + (f"{m['test_accuracy']:.4f}" if "test_accuracy" in m
                                                           else "not measured (off the front)"),
             f"MACs {m['macs']:,.0f} ({m['macs'] / m['macs_full']:.0%} of full), params {m['params']:,}"]
    lines += [f"{k}: {json.dumps(v)}" for k, v in config.items()]
    return "<br>".join(html.escape(line, quote=False) for line in lines)


def draw_html(run: RunSummary, path: Path) -> None:
    import plotly.graph_objects as go
    import plotly.io as pio

    complete = run.where("COMPLETE")
    dominated = [t for t in complete if not t.on_front]
    front = run.front
    static = [t for t in complete if t.static]
    labels = _point_labels(front)
    fig = go.Figure()
    for name, points, marker, mode in (
        (f"dominated ({len(dominated)})", dominated, dict(color="#999", size=8), "markers"),
        (f"Pareto front ({len(front)})", front, dict(color="#1f77b4", size=11),
         "lines+markers+text" if _connect_front(run) else "markers+text"),
        (f"static trials ({len(static)})", static, dict(symbol="square-open", color="black", size=16), "markers"),
        *((f"front of the {name} trials ({len(sub)})", sub, dict(color=colour, size=1), "lines")
          for name, sub, colour in (("static", run.sub_front(True), "black"), ("dynamic", run.sub_front(False), "#ff7f0e"))
          if sub and static and len(static) < len(complete) and _connect_front(run)),
    ):
        fig.add_trace(go.Scatter(
            x=[t.metrics["macs"] for t in points], y=[t.metrics["accuracy"] for t in points], name=name, mode=mode,
            marker=marker, line=dict(shape="hv", width=1), textposition="top right",
            text=[labels.get(t.number, "") if "text" in mode else "" for t in points],
            hovertext=[_hover(t) for t in points], hoverinfo="text"))
    for macs_full in run.full_costs():
        fig.add_vline(x=macs_full, line_dash="dash", line_color="#d62728",
                      annotation_text=f"static full depth {macs_full:,} MACs")
    if _log_macs(complete):
        fig.update_xaxes(type="log")
    fig.update_layout(title=_headline(run), xaxis_title="MACs per sample (validation mean, what ran)",
                      yaxis_title="validation accuracy", template="plotly_white", height=560)
    parts = [pio.to_html(fig, full_html=False, include_plotlyjs=True)]  # self-contained: opens offline
    for key, view, labels, series in stat_panels(_spread(front, MAX_STAT_TRIALS), run.fallback_views):
        bars = go.Figure([go.Bar(name=f"trial {number}", x=[str(label) for label in labels],
                                 y=[values.get(label, 0.0) for label in labels]) for number, values in series.items()])
        bars.update_layout(title=f"{view.title} (front trials)", xaxis_title=view.x_label, yaxis_title=view.y_label,
                           barmode="group", template="plotly_white", height=360)
        parts.append(pio.to_html(bars, full_html=False, include_plotlyjs=False))
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
    draw_png(run, png)
    draw_html(run, page)
    return png, page
