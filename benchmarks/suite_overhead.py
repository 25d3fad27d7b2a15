"""Sections 3 and 4 of the benchmark suite: framework overhead and parallel scaling.

Both sections time the same two runs of the ``dynsearch search`` command (a
subprocess, as a user runs it): the default recipe with 1 and with 2
concurrent trials, one CPU per trial. Every trial's work (training, final
measurement, operating-point sweep) is then timed again in a plain PyTorch
loop (plain_loop.py) in this process, alone, on one thread, like the trial.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from plain_loop import plain_train


def dynsearch_command() -> list[str]:
    beside = Path(sys.executable).parent / "dynsearch"
    return [str(beside)] if beside.is_file() else [shutil.which("dynsearch") or "dynsearch"]


def _ray_times(run_dir: Path) -> dict[int, float]:
    """Trial number -> ``time_total_s`` of its last result, as Ray Tune recorded it."""
    times = {}
    for result_file in (run_dir / "ray").glob("tune/*/result.json"):
        lines = result_file.read_text().splitlines()
        if lines:
            last = json.loads(lines[-1])
            times[int(last["config"]["trial"])] = float(last["time_total_s"])
    return times


def _sweep_seconds(folder: Path) -> float | None:
    points = folder / "operating_points.json"
    return json.loads(points.read_text()).get("sweep_seconds") if points.is_file() else None


def timed_search(out: Path, trials: int, epochs: int | None, concurrent: int, seed: int,
                 recipe: str = "digits-exits") -> dict[str, Any]:
    """Run ``dynsearch search`` as a subprocess; return its wall time and each trial's timestamps."""
    command = [*dynsearch_command(), "search", recipe, "--trials", str(trials), "--concurrent",
               str(concurrent), "--seed", str(seed), "--out", str(out), "--wandb", "off"]
    if epochs:
        command += ["--epochs", str(epochs)]
    load_before = os.getloadavg()
    started = time.time()
    log_path = out.parent / f"{out.name}.log"
    with open(log_path, "w") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
    wall_s = time.time() - started
    if code != 0:
        raise RuntimeError(f"'{' '.join(command)}' exited with {code}; see {log_path}")
    ray_times = _ray_times(out)
    trials_run = []
    for folder in sorted((out / "trials").iterdir(), key=lambda p: int(p.name)):
        metrics_file = folder / "metrics.json"
        if not metrics_file.is_file():  # a trial whose worker was lost and rerun elsewhere
            continue
        metrics = json.loads(metrics_file.read_text())
        trials_run.append({
            "trial": int(folder.name),
            "status": metrics.get("status"),
            "accuracy": metrics.get("accuracy"),
            "started": json.loads((folder / "placement.json").read_text())["started"],
            "ended": metrics_file.stat().st_mtime,
            "ray_time_total_s": ray_times.get(int(folder.name)),
            # The trial's operating-point sweep (operating_points.py) is work beyond the plain loop's.
            "sweep_s": _sweep_seconds(folder),
            "config": json.loads((folder / "config.json").read_text()),
        })
    return {"command": " ".join(command[1:]), "command_started": started, "wall_s": wall_s,
            "load_average_before": load_before, "trials": trials_run}


def plain_times(runs: list[dict[str, Any]], splits) -> None:
    """Time each COMPLETE trial's training in the plain loop (identical configs once).

    Adds ``plain_s`` and ``plain_accuracy`` (its validation accuracy: the same
    as the trial's when both loops really did the same training)."""
    cache: dict[str, tuple[float, dict[str, Any]]] = {}
    configs = [t["config"] for run in runs for t in run["trials"] if t["status"] == "COMPLETE"]
    plain_train(configs[0], splits, threads=1)  # untimed: this process's first-call costs (lazy imports, caches)
    for run in runs:
        for trial in run["trials"]:
            if trial["status"] != "COMPLETE":
                continue
            key = json.dumps(trial["config"], sort_keys=True)
            if key not in cache:
                cache[key] = plain_train(trial["config"], splits, threads=1)
            trial["plain_s"], trial["plain_accuracy"] = cache[key][0], cache[key][1]["accuracy"]
            trial["plain_sweep_s"] = cache[key][1]["sweep_s"]


def _complete(run: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for t in run["trials"] if t["status"] == "COMPLETE"]


def overhead(one: dict[str, Any], two: dict[str, Any]) -> dict[str, Any]:
    """Section 3 from the 1-concurrent run (a) and the 2-concurrent run (b, c)."""
    ratios = [t["ray_time_total_s"] / t["plain_s"] for t in _complete(one) if t["ray_time_total_s"]]
    # For comparison with earlier runs, whose plain loop did not sweep: both sides without the sweep.
    unswept = [(t["ray_time_total_s"] - (t["sweep_s"] or 0.0)) / (t["plain_s"] - t["plain_sweep_s"])
               for t in _complete(one) if t["ray_time_total_s"]]
    trials = _complete(one) + _complete(two)
    searched = efficiency(two)
    return {
        "trial_overhead_ratio": statistics.median(ratios),
        "trial_overhead_ratio_range": [min(ratios), max(ratios)],
        "trial_overhead_ratio_without_sweep": statistics.median(unswept),
        "trial_ray_seconds_median": statistics.median(t["ray_time_total_s"] for t in _complete(one)),
        "trial_plain_seconds_median": statistics.median(t["plain_s"] for t in _complete(one)),
        "trial_sweep_seconds_median": statistics.median(t["sweep_s"] or 0.0 for t in _complete(one)),
        "plain_sweep_seconds_median": statistics.median(t["plain_sweep_s"] for t in _complete(one)),
        "plain_same_accuracy": sum(t["plain_accuracy"] == t["accuracy"] for t in trials),
        "plain_trials": len(trials),
        **{k: searched[k] for k in ("search_efficiency", "plain_seconds_sum", "search_wall_s", "first_trial_s")},
        "first_trial_s_concurrent_1": min(t["started"] for t in one["trials"]) - one["command_started"],
        "commands": [one["command"], two["command"]],
    }


def efficiency(run: dict[str, Any]) -> dict[str, Any]:
    """3(b) for one 2-concurrent run: (sum of its trials' plain-loop seconds / 2) / its wall time."""
    complete = _complete(run)
    plain_sum = sum(t["plain_s"] for t in complete)
    return {"command": run["command"], "search_efficiency": plain_sum / 2 / run["wall_s"],
            "plain_seconds_sum": plain_sum, "search_wall_s": run["wall_s"], "complete": len(complete),
            "trial_plain_seconds_median": statistics.median(t["plain_s"] for t in complete),
            "trial_ray_seconds_median": statistics.median(t["ray_time_total_s"] for t in complete
                                                          if t["ray_time_total_s"]),
            "first_trial_s": min(t["started"] for t in run["trials"]) - run["command_started"],
            "plain_same_accuracy": sum(t["plain_accuracy"] == t["accuracy"] for t in complete)}


def throughput(run: dict[str, Any]) -> dict[str, Any]:
    """COMPLETE trials per hour over the trial phase (first trial start to last trial end) and end to end."""
    complete = _complete(run)
    phase_s = max(t["ended"] for t in run["trials"]) - min(t["started"] for t in run["trials"])
    return {"complete": len(complete), "trial_phase_s": phase_s, "wall_s": run["wall_s"],
            "per_hour_trial_phase": 3600 * len(complete) / phase_s, "per_hour_end_to_end": 3600 * len(complete) / run["wall_s"],
            "load_average_before": run["load_average_before"]}


def scaling(one: dict[str, Any], two: dict[str, Any]) -> dict[str, Any]:
    """Section 4: throughput with 2 concurrent trials against 1, one CPU per trial on 2 cores."""
    t1, t2 = throughput(one), throughput(two)
    return {"concurrent_1": t1, "concurrent_2": t2,
            "scaling_2_vs_1": t2["per_hour_trial_phase"] / t1["per_hour_trial_phase"],
            "scaling_2_vs_1_end_to_end": t2["per_hour_end_to_end"] / t1["per_hour_end_to_end"]}
