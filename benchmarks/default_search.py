"""Measure the README's main job: `dynsearch train` and `dynsearch search` on the default recipe.

Writes benchmarks/results/default_search.json with the command, the date, the machine and its load,
the wall times and the checks of Foundation A and B, and copies the search's report plot to
benchmarks/results/default_search_pareto.png (the picture at the top of the README):
  python benchmarks/default_search.py [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "default_search.json"
PICTURE = RESULTS.with_name("default_search_pareto.png")


def run(args: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", help="run directory (default: a fresh temporary folder)")
    parser.add_argument("--results", default=str(RESULTS), help="where to write the results JSON")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="dynsearch-default-")) / "run"
    started, load_at_start = datetime.now(timezone.utc).isoformat(timespec="seconds"), os.getloadavg()

    train_seconds, train_stdout = run(["dynsearch", "train", "--json"])
    trained = json.loads(train_stdout)
    search_seconds, _ = run(["dynsearch", "search", "--out", str(out)])
    _, front_stdout = run(["dynsearch", "pareto", str(out), "--json"])
    front = json.loads(front_stdout)

    best = max(front, key=lambda item: item["accuracy"])
    cheap = [
        item for item in front
        if item["macs"] <= 0.5 * item["macs_full"] and best["accuracy"] - item["accuracy"] <= 0.01
    ]
    # With the backbone searched, a front point may be a small static backbone (macs == macs_full):
    # compare with the best static trial of the same search too (every COMPLETE trial, from the run dir).
    from dynsearch.run.rundir import RunDir

    run_dir = RunDir(out)
    trials = [m for m in (run_dir.read_metrics(int(d.name)) for d in (out / "trials").iterdir() if d.name.isdigit())
              if m.get("status") == "COMPLETE"]
    static = [m for m in trials if abs(m["macs"] - m["macs_full"]) < 0.5]
    best_static = max(static, key=lambda m: (m["accuracy"], -m["macs"])) if static else None
    beats_static = [item for item in front if best_static and item["macs"] <= 0.5 * best_static["macs"]
                    and best_static["accuracy"] - item["accuracy"] <= 0.01]
    import torch

    from dynsearch.models.kinds import describe_backbone

    results = {
        "command": "python benchmarks/default_search.py",
        "date": started,
        "load_average_at_start": load_at_start,
        "load_average_at_end": os.getloadavg(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads()},
        "train": {**trained, "wall_seconds": round(train_seconds, 1),
                  "macs_share_of_full": trained["macs"] / trained["macs_full"]},
        "search": {
            "wall_seconds": round(search_seconds, 1),
            "front_size": len(front),
            "front": [{**{k: item[k] for k in ("trial", "accuracy", "test_accuracy", "macs", "macs_full")},
                       "backbone": describe_backbone(item["config"].get("backbone"))} for item in front],
            "best_static_trial": {k: best_static[k] for k in ("accuracy", "test_accuracy", "macs")} if best_static else None,
            "most_accurate_test_accuracy": best["test_accuracy"],
            "cheap_points_within_1pt": [
                {"trial": item["trial"], "macs_share_of_full": item["macs"] / item["macs_full"],
                 "val_accuracy_loss": best["accuracy"] - item["accuracy"]} for item in cheap
            ],
        },
        "checks": {
            "train_test_accuracy_at_least_0.95": trained["test_accuracy"] >= 0.95,
            "train_macs_at_most_half_of_full": trained["macs"] <= 0.5 * trained["macs_full"],
            "search_within_10_minutes": search_seconds <= 600,
            "search_within_5_minutes": search_seconds <= 300,
            "front_has_at_least_3_points": len(front) >= 3,
            "most_accurate_point_test_accuracy_at_least_0.95": best["test_accuracy"] >= 0.95,
            "a_point_at_most_half_macs_within_1pt": bool(cheap),
            "a_point_at_most_half_the_best_static_trials_macs_within_1pt": bool(beats_static),
        },
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(results, indent=2) + "\n")
    if Path(args.results) == RESULTS:  # the committed results: the README's picture comes with them
        shutil.copyfile(out / "pareto.png", PICTURE)
    print(json.dumps(results["checks"], indent=2))


if __name__ == "__main__":
    main()
