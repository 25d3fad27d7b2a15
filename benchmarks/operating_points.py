"""Hypervolume of the operating-point front against the per-trial front, on the default recipe's run.

Each trial of `dynsearch search` (default recipe, 32 trials) sweeps its runtime knob (the exit
threshold) on the validation split after training; `pareto(run, operating_points=True)` is the
front over all those points. Both fronts are scored by the hypervolume of (validation accuracy,
macs) against the fixed reference point REFERENCE; the test split's figures of the same front
members are scored too (the sweep picks points on validation data, so the test figures show how
much of the gain is real).

Writes benchmarks/results/operating_points.json:
  python benchmarks/operating_points.py [--run RUN_DIR]   (without --run, runs the search first)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "operating_points.json"
# (lowest accuracy, highest macs) counted: the default recipe's macs_full is 152,704 MACs per image.
REFERENCE = (0.9, 200_000.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="an existing run directory of the default recipe (default: search first)")
    parser.add_argument("--results", default=str(RESULTS), help="where to write the results JSON")
    args = parser.parse_args()
    run = Path(args.run) if args.run else Path(tempfile.mkdtemp(prefix="dynsearch-points-")) / "run"
    search_seconds = None
    if not args.run:
        start = time.perf_counter()
        subprocess.run(["dynsearch", "search", "--out", str(run), "--wandb", "off"], check=True,
                       capture_output=True, text=True)
        search_seconds = round(time.perf_counter() - start, 1)

    import dynsearch
    from dynsearch.run.front import hypervolume
    from dynsearch.run.rundir import POINTS_FILE, RunDir

    start = time.perf_counter()
    points_front = dynsearch.pareto(run, operating_points=True)
    points_front_seconds = round(time.perf_counter() - start, 2)
    trials_front = dynsearch.pareto(run)
    for item in trials_front:
        item["test_macs"] = RunDir(run).read_metrics(item["trial"])["test_macs"]
    records = [json.loads(path.read_text()) for path in sorted((run / "trials").glob(f"*/{POINTS_FILE}"))]

    def hv(front, accuracy="accuracy", macs="macs"):
        return hypervolume([(item[accuracy], item[macs]) for item in front], REFERENCE)

    hv_trials, hv_points = hv(trials_front), hv(points_front)
    hv_trials_test, hv_points_test = hv(trials_front, "test_accuracy", "test_macs"), \
        hv(points_front, "test_accuracy", "test_macs")
    import torch

    results = {
        "command": "python benchmarks/operating_points.py" + (f" --run {args.run}" if args.run else ""),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                    "torch": torch.__version__, "load_average_1min_at_end": os.getloadavg()[0]},
        "reference": {"accuracy": REFERENCE[0], "macs": REFERENCE[1]},
        "search_seconds": search_seconds,
        "hv_trials": hv_trials,
        "hv_operating_points": hv_points,
        "hv_ratio": hv_points / hv_trials,
        "test_split": {"hv_trials": hv_trials_test, "hv_operating_points": hv_points_test,
                       "hv_ratio": hv_points_test / hv_trials_test},
        "trials_with_points": len(records),
        "points_per_trial": sorted({len(r["points"]) for r in records}),
        "sweep_seconds_per_trial": {"mean": round(sum(r["sweep_seconds"] for r in records) / len(records), 3),
                                    "max": max(r["sweep_seconds"] for r in records)},
        "operating_front_seconds": points_front_seconds,
        "trials_front": [{k: item[k] for k in ("trial", "accuracy", "macs", "test_accuracy", "test_macs")}
                         for item in trials_front],
        "operating_points_front": [
            {k: item[k] for k in ("trial", "point", "knobs", "trained", "accuracy", "macs", "test_accuracy",
                                  "test_macs")} for item in points_front],
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in ("hv_trials", "hv_operating_points", "hv_ratio", "test_split")}, indent=2))


if __name__ == "__main__":
    main()
